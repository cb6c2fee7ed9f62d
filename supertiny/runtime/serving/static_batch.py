"""Static batching for the server and the benchmark: queued requests decoded together on onnxruntime.

:class:`StaticBatchScheduler` is a :class:`~.scheduler.Scheduler` whose worker takes up to
``batch`` queued jobs at once and decodes them as one :class:`~supertiny.runtime.engines.onnx_batch.StaticBatch`
(optimum-graph ONNX exports); the next batch starts when the last of them ends.
"""

from __future__ import annotations

import threading

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.onnx_batch import StaticBatch, check_batchable
from supertiny.runtime.engines.onnxrt import OnnxEngine
from supertiny.runtime.engines.text import Chunk, TextStream
from supertiny.runtime.serving.job import wakes_per_step
from supertiny.runtime.serving.scheduler import Job, Scheduler


class StaticBatchScheduler(Scheduler):
    """A :class:`~.scheduler.Scheduler` that runs queued jobs in static batches of up to ``batch``.

    Jobs queued when a batch starts decode together; the next batch starts when the last
    of them ends. ``gather_s``: how long the worker waits for more jobs when fewer than
    ``batch`` are queued (clients that start together then share a batch).
    """

    def __init__(self, engine: OnnxEngine, batch: int = 8, max_queue: int = 16,
                 request_timeout_s: float | None = 120.0, gather_s: float = 0.01):
        check_batchable(engine)
        if batch < 1:
            raise InvalidInputError(f"batch must be >= 1, got {batch}")
        self.engine, self.batch, self.gather_s = engine, batch, gather_s
        super().__init__([engine], max_queue, request_timeout_s)

    @property
    def slots(self) -> int:
        return self.batch

    def make_workers(self) -> list[threading.Thread]:
        return [threading.Thread(target=self._loop, name="supertiny-static-batch", daemon=True)]

    def _loop(self) -> None:
        while True:
            jobs = self.take_jobs(self.batch, gather_s=self.gather_s, track=True)
            if jobs is None:
                return  # closing, and everything queued has run
            try:
                self._run_batch(jobs)
            finally:
                for row, job in enumerate(jobs):
                    if not job.done:
                        job.finish(None, RuntimeError("the batch stopped without a finish reason"))
                    self.job_ended(job, row)

    def _run_batch(self, jobs: list[Job]) -> None:
        live: dict[int, tuple[Job, TextStream]] = {}
        prompts, budgets, samplings, stops, constraints = [], [], [], [], []
        for job in jobs:
            if not job.begin():
                continue
            budget = self.engine.check_request(len(job.prompt_ids), job.max_tokens)
            if budget == 0:
                job.push(Chunk("", [], "length"))
                continue
            live[len(prompts)] = (job, TextStream(self.engine.tokenizer, budget, job.stop, job.cancelled))
            prompts.append(job.prompt_ids)
            budgets.append(budget)
            samplings.append(job.sampling)
            stops.append([] if job.ignore_eos else self.engine.stop_ids)
            constraints.append(self.engine.constraint(job.grammar) if job.grammar is not None else None)
        if not live:
            return
        try:
            batch = StaticBatch(self.engine, prompts, budgets, samplings, stops, constraints)
            while batch.active:
                for row in batch.active:
                    job, _ = live[row]
                    if job.done or job.cancelled.is_set():
                        job.finish("cancelled", chunk=Chunk("", [], "cancelled"))
                        batch.release(row)
                if not batch.active:
                    break
                events = batch.step()
                with wakes_per_step():  # the server's event loop is woken once for the whole step
                    for row, token, done in events:
                        self._deliver(batch, live[row], row, token, done)
        except Exception as exc:  # every job still running gets it; the loop keeps serving
            for job, _ in live.values():
                if not job.done:
                    job.finish(None, exc)

    def _deliver(self, batch: StaticBatch, item: tuple[Job, TextStream], row: int, token: int | None,
                 done: bool) -> None:
        if self.push_token(*item, token, done) == "stopped":  # a row the batch ended frees itself
            batch.release(row)
