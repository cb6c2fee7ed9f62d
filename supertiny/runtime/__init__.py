"""Runtime stage: what runs on the device.

* :mod:`.engine` — one API over llama.cpp (:mod:`.llamacpp`), onnxruntime
  (:mod:`.onnxrt`) and torch (:mod:`.torch_engine`): options, the backend registry,
  ``open_engine(artifact)``, logits for evaluation.
* :mod:`.text` — what every engine shares for text: streaming chunks, incremental
  detokenization, stop strings, finish reasons; :mod:`.chat` — chat messages and the
  chat template.
* :mod:`.process` — the process guard that keeps torch out of a GGUF/ONNX process.
* :mod:`.scheduler` — a bounded queue of requests over one or more engines.
* :mod:`.batched` and :mod:`.batch_scheduler` — continuous batching for GGUF: one
  llama.cpp context decodes many sequences per forward pass, requests join the running
  batch between steps, long prompts are fed in chunks alongside the decodes.
* :mod:`.bench` — load time, TTFT, decode speed, latency under concurrency, memory,
  judged against a :mod:`supertiny.targets` profile.
* :mod:`.serve` — an OpenAI-compatible HTTP server.

Engines expose a logits function with the signature of
:data:`supertiny.evaluate.LogitsFn`, so every quality measure runs on every backend.
"""
