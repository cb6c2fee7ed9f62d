"""Runtime stage: one engine API over llama.cpp, onnxruntime and torch; bench; serve.

Engines expose a logits function with the signature of
:data:`supertiny.evaluate.LogitsFn`, so every quality measure runs on every backend.
Modules arrive with their issues.
"""
