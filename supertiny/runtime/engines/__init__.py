"""Engines: an artifact loaded on a backend, decoding one sequence (or one batch) at a time.

* :mod:`.base` — the API: :class:`~.base.EngineOptions`, the backend registry and
  :func:`~.base.open_engine`, the :class:`~.base.Engine` base (logits, streaming, text).
* :mod:`.llamacpp` (GGUF), :mod:`.onnxrt` (ONNX exports), :mod:`.torch_engine` (Hugging
  Face directories) — the backends.
* :mod:`.batched` — many GGUF sequences per llama.cpp forward pass (continuous batching);
  :mod:`.onnx_batch` — static batches on onnxruntime.
* :mod:`.text` — streaming chunks, incremental detokenization, stop strings, finish
  reasons; :mod:`.chat` — chat messages and templates; :mod:`.sampling` — token choice.
* :mod:`.process` — keeps torch out of a GGUF/ONNX process; :mod:`.cpu_build` — which
  instruction sets the llama.cpp build uses.

The bottom of the runtime: imports the layers below ``runtime`` (models, backends,
errors...), never :mod:`supertiny.runtime.serving` or :mod:`supertiny.runtime.bench`.
Thread counts come from :func:`supertiny.backends.threads_for`.
"""
