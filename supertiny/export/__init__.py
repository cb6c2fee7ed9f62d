"""Export stage: GGUF (llama.cpp) and ONNX (onnxruntime), each checked against PyTorch.

Exporters reuse :mod:`supertiny.archs` for architecture facts and
:mod:`supertiny.evaluate` for the parity report. Modules arrive with their issues.
"""
