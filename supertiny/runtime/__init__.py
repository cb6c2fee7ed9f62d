"""Runtime: what runs on the device — engines that decode an artifact, the server that
answers requests with them, and the benchmark that measures both.

Three folders, layered (the ``runtime`` contract in ``pyproject.toml``; ``make lint``
checks it): each imports only from the folders below it, and all of them from the
layers below ``runtime`` (models, evaluate, targets, backends, errors...).

* :mod:`.engines` — one engine API over llama.cpp, onnxruntime and torch, and what every
  engine shares (text, chat template, sampling, batched decoding). Imports neither
  serving nor bench.
* :mod:`.serving` — requests over engines: job queues and schedulers (one engine per
  request, continuous or static batches), the engine pool that picks them, and the
  OpenAI-compatible HTTP server. Imports engines, never bench.
* :mod:`.bench` — load time, TTFT, decode speed, latency under concurrency and memory,
  judged against a :mod:`supertiny.targets` profile. Imports engines and serving (it
  measures through the server's scheduler).

Engines expose a logits function with the signature of
:data:`supertiny.evaluate.LogitsFn`, so every quality measure runs on every backend.
"""
