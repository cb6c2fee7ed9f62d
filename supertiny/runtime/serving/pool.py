"""One batched engine or N engine copies: how an artifact takes concurrent requests.

The server, the benchmark and the batched teacher all open their engines here, so an
artifact batches, or is refused, the same way everywhere. :func:`supertiny.backends.batching`
says which artifacts batch; :func:`open_engines` opens them and :meth:`EnginePool.scheduler`
makes the scheduler that matches:

* ``parallel`` 0: ``slots`` engine copies under a :class:`~.scheduler.Scheduler`, one
  worker thread each;
* ``parallel`` N on a GGUF file (llama.cpp): one
  :class:`~supertiny.runtime.engines.batched.BatchedLlamaEngine` under a
  :class:`~.batch_scheduler.BatchScheduler` (continuous batching);
* ``parallel`` N on an ONNX export (onnxruntime, optimum graph): one
  :class:`~supertiny.runtime.engines.onnxrt.OnnxEngine` under a
  :class:`~.static_batch.StaticBatchScheduler` (static batches of up to N).

Example::

    kind, path = resolve("student-q4.gguf")
    with open_engines(path, kind, parallel=4) as pool:
        with pool.scheduler(max_queue=16) as scheduler:
            print(scheduler.submit("Hello", max_tokens=8).result().text)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from supertiny.backends import batching, threads_for
from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.base import Engine, EngineOptions, open_engine
from supertiny.runtime.engines.batched import BatchedLlamaEngine
from supertiny.runtime.engines.onnx_batch import check_batchable
from supertiny.runtime.engines.onnxrt import OnnxEngine
from supertiny.runtime.serving.batch_scheduler import BatchScheduler
from supertiny.runtime.serving.scheduler import Scheduler
from supertiny.runtime.serving.static_batch import StaticBatchScheduler

__all__ = ["EnginePool", "batching_mode", "open_engines", "parse_parallel"]


def parse_parallel(text: str) -> int | None:
    """``--parallel`` (serve and bench): ``auto`` (None) or a whole number >= 0."""
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidInputError(f"--parallel takes auto or a whole number, got {text!r}") from None


@dataclass
class EnginePool:
    """Engines opened on one artifact: ``slots`` copies, or one engine batching ``parallel`` sequences."""

    engines: list[Engine]
    parallel: int = 0  # sequences the one engine decodes together (0: one per engine)

    def scheduler(self, max_queue: int = 16, request_timeout_s: float | None = 120.0) -> Scheduler:
        """The scheduler these engines need (a fresh one per call; close it before :meth:`close`)."""
        engine = self.engines[0]
        if self.parallel and isinstance(engine, BatchedLlamaEngine):
            return BatchScheduler(engine, max_queue, request_timeout_s)
        if self.parallel and isinstance(engine, OnnxEngine):
            return StaticBatchScheduler(engine, self.parallel, max_queue, request_timeout_s)
        return Scheduler(self.engines, max_queue, request_timeout_s)

    def close(self) -> None:
        """Free the engines (no scheduler may still run on them)."""
        engines, self.engines = self.engines, []
        for engine in engines:
            engine.close()

    def __enter__(self) -> EnginePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def batching_mode(path: Path, kind: str, backend: str, slots: int = 1, parallel: int = 0) -> str | None:
    """How :func:`open_engines` would batch ``parallel`` sequences of this artifact: ``continuous``,
    ``static`` or None (``parallel`` 0: engine copies). Callers check early with it, before binding
    a port or measuring anything.

    Raises:
        InvalidInputError: ``parallel`` for an artifact that cannot batch on ``backend``, or with
            ``slots`` > 1.
    """
    if not parallel:
        return None
    mode = batching(kind, backend)
    if mode is None:
        raise InvalidInputError(f"--parallel batches GGUF files on the llama.cpp backend (continuously) and ONNX "
                                f"exports on onnxruntime (static batches); {path} is a {kind} artifact on the "
                                f"{backend} backend: use --slots for it")
    if slots > 1:
        raise InvalidInputError(f"use either slots (engine copies) or parallel (one batched engine), not both: "
                                f"got slots={slots}, parallel={parallel}")
    return mode


def open_engines(path: Path, kind: str, backend: str = "auto", options: EngineOptions | None = None,
                 slots: int = 1, parallel: int = 0) -> EnginePool:
    """Open ``slots`` copies of the artifact at ``path``, or with ``parallel`` one engine batching that
    many sequences.

    Args:
        path: the artifact, already resolved (:func:`supertiny.models.resolve` gives ``kind`` too).
        kind: ``gguf``, ``onnx`` or ``hf``.
        backend: ``auto`` or a backend name, as :func:`~supertiny.runtime.engines.base.open_engine`.
        options: how each engine opens; ``threads`` None shares the cores out between the copies
            (N copies each using every core would thrash rather than decode N times faster).
        slots: engine copies (with ``parallel`` 0).
        parallel: sequences one engine decodes together (0: copies instead).

    Raises:
        InvalidInputError: what :func:`batching_mode` refuses.
    """
    mode = batching_mode(path, kind, backend, slots, parallel)
    options = options or EngineOptions()
    if options.threads is None:
        options = dataclasses.replace(options, threads=threads_for(None, share=slots))
    pool = EnginePool([], parallel)
    try:
        if mode == "continuous":
            pool.engines.append(BatchedLlamaEngine.open(path, options, parallel=parallel))
        elif mode == "static":
            pool.engines.append(open_engine(path, backend, options))
            check_batchable(pool.engines[0])  # a genai graph cannot pad a batch: say so before any request
        else:
            for _ in range(slots):
                pool.engines.append(open_engine(path, backend, options))
    except BaseException:
        pool.close()
        raise
    return pool
