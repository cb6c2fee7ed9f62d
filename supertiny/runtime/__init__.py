"""Runtime stage: what runs on the device.

* :mod:`.engine` — one API over llama.cpp (:mod:`.llamacpp`), onnxruntime
  (:mod:`.onnxrt`) and torch (:mod:`.torch_engine`): ``open_engine(artifact)``, chat
  template, streaming text with stop strings, logits for evaluation.
* :mod:`.scheduler` — a bounded queue of requests over one or more engines.
* :mod:`.bench` — load time, TTFT, decode speed, latency under concurrency, memory,
  judged against a :mod:`supertiny.targets` profile.
* :mod:`.serve` — an OpenAI-compatible HTTP server.

Engines expose a logits function with the signature of
:data:`supertiny.evaluate.LogitsFn`, so every quality measure runs on every backend.
"""
