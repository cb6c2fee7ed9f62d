"""Continuous batching: one loop admits requests into a running batch between decode steps.

:class:`BatchScheduler` has the :class:`~.scheduler.Scheduler` interface (submit, jobs,
the bounded queue, 429/503/504 semantics, stats, close), so the server and the
benchmark use it unchanged; only the worker differs. Instead of one thread per engine
running one request start to end, one thread drives a
:class:`~supertiny.runtime.engines.batched.BatchedLlamaEngine`:

1. admit: while a sequence slot is free, the oldest queued job takes it (its prompt is
   fed by the next steps, in chunks, alongside the running decodes);
2. drop: jobs cancelled by their reader, a timeout or a disconnect leave the batch
   and free their KV cells before the step, so they cost nothing more;
3. step: one forward pass; each token goes through that job's
   :class:`~supertiny.runtime.engines.text.TextStream`, the same text layer as every engine's ``stream_text``,
   so chunks, stop strings and finish reasons are identical.

Example::

    engine = BatchedLlamaEngine("model.gguf", parallel=8)
    with BatchScheduler(engine, max_queue=16) as scheduler:
        jobs = [scheduler.submit(p, max_tokens=32) for p in prompts]
        replies = [job.result().text for job in jobs]
"""

from __future__ import annotations

import threading

from supertiny.runtime.engines.batched import BatchedLlamaEngine
from supertiny.runtime.engines.text import Chunk, TextStream
from supertiny.runtime.serving.job import wakes_per_step
from supertiny.runtime.serving.scheduler import Job, Scheduler


class BatchScheduler(Scheduler):
    """A :class:`~.scheduler.Scheduler` over one batched engine (``engine.parallel`` slots).

    Args:
        engine: the batched engine; this scheduler's thread is its only user.
        max_queue: most jobs waiting for a free sequence slot (429 beyond).
        request_timeout_s: a job that waited and ran longer is cancelled (504).
    """

    def __init__(self, engine: BatchedLlamaEngine, max_queue: int = 16, request_timeout_s: float | None = 120.0):
        self.engine = engine
        self._active: dict[int, tuple[Job, TextStream]] = {}
        super().__init__([engine], max_queue, request_timeout_s)

    @property
    def slots(self) -> int:
        return self.engine.parallel

    def make_workers(self) -> list[threading.Thread]:
        return [threading.Thread(target=self._loop, name="supertiny-batch", daemon=True)]

    def _loop(self) -> None:
        while True:
            # wait for a job only while the batch is empty: a running batch steps on
            admitted = self.take_jobs(self.engine.free_slots, wait=not self._active)
            if admitted is None:
                return  # closing, and everything queued has run
            for job in admitted:
                self._admit(job)
            for slot, (job, _) in list(self._active.items()):
                if job.done or job.cancelled.is_set():
                    job.finish("cancelled", chunk=Chunk("", [], "cancelled"))  # a no-op if it finished
                    self._drop(slot)
            if not self._active:
                continue
            try:
                events = self.engine.step()
            except Exception as exc:  # every job in the batch gets it; the loop keeps serving
                for slot, (job, _) in list(self._active.items()):
                    job.finish(None, exc)
                    self._drop(slot)
                self.engine.clear()
                continue
            with wakes_per_step():  # the server's event loop is woken once for the whole step
                for slot, token, done in events:
                    self._deliver(slot, token, done)

    def _admit(self, job: Job) -> None:
        if not job.begin():
            self.job_ended(job)
            return
        engine = self.engine
        budget = engine.check_request(len(job.prompt_ids), job.max_tokens)
        text = TextStream(engine.tokenizer, budget, job.stop, job.cancelled)
        if budget == 0:
            job.push(Chunk("", [], "length"))
            self.job_ended(job)
            return
        try:
            constraint = engine.constraint(job.grammar) if job.grammar is not None else None
            slot = engine.add(job.prompt_ids, budget, job.sampling, [] if job.ignore_eos else engine.stop_ids,
                              constraint)
        except Exception as exc:
            job.finish(None, exc)
            self.job_ended(job)
            return
        self.job_started(slot, job)
        self._active[slot] = (job, text)

    def _deliver(self, slot: int, token: int | None, done: bool) -> None:
        if self.push_token(*self._active[slot], token, done):
            self._drop(slot)

    def _drop(self, slot: int) -> None:
        job, _ = self._active.pop(slot)
        self.engine.release(slot)  # a no-op when the engine ended the sequence itself
        self.job_ended(job, slot)
