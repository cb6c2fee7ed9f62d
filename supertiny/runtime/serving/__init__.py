"""Serving: requests over engines, up to an OpenAI-compatible HTTP server.

* :mod:`.job` — one request (:class:`~.job.Job`) and the scheduler's errors and counters.
* :mod:`.scheduler` — a bounded queue over engine copies, one worker thread each;
  :mod:`.batch_scheduler` (continuous batching on one llama.cpp engine) and
  :mod:`.static_batch` (static batches on onnxruntime) share its interface.
* :mod:`.pool` — one batched engine or N engine copies, and the scheduler that matches:
  what the server, the benchmark and the batched teacher open.
* :mod:`.openai_api` — the wire format (request parsing, errors, metrics) without a web
  framework; :mod:`.app` — the starlette app; :mod:`.server` — options and uvicorn.

Imports :mod:`supertiny.runtime.engines` and the layers below ``runtime``, never
:mod:`supertiny.runtime.bench`. starlette and uvicorn (the ``serve`` extra) are imported
only when an app is built.
"""
