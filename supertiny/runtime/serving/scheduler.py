"""Request scheduling over engines that each run one sequence at a time (no HTTP here).

A :class:`Scheduler` owns one worker thread per engine (a "slot") and a bounded FIFO
queue of :class:`Job` s. The HTTP server and the benchmark both use it, so overload,
timeouts and cancellation behave the same in both.

Why threads and not asyncio: the engines block in native code (llama.cpp,
onnxruntime, torch), which releases the GIL, so one thread per slot decodes in
parallel while the event loop of a server stays free. :meth:`Job.aiter` bridges a
job's chunks into asyncio without ever blocking the loop.

Example::

    with Scheduler([open_engine("model.gguf")], max_queue=4) as scheduler:
        job = scheduler.submit("The capital of France is", max_tokens=8)
        print(job.result().text, job.ttft_s)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.base import Engine, Prompt
from supertiny.runtime.engines.constrain import Grammar
from supertiny.runtime.engines.sampling import Sampling
from supertiny.runtime.engines.text import Chunk, TextStream
from supertiny.runtime.serving.job import Job, JobTimeout, QueueFull, SchedulerStats, ShuttingDown

__all__ = ["Job", "JobTimeout", "QueueFull", "Scheduler", "SchedulerStats", "ShuttingDown"]


class Scheduler:
    """Run jobs on engines, one worker thread per engine, FIFO with a bounded queue.

    Args:
        engines: engines over the same artifact; each runs one job at a time.
        max_queue: most jobs waiting for a slot; :meth:`submit` raises :class:`QueueFull`
            beyond that (0: a job runs only if a slot is free now).
        request_timeout_s: a job that waited and ran longer is cancelled and its reader
            gets :class:`JobTimeout` (``None``: no limit).

    A subclass that batches (:mod:`.batch_scheduler`, :mod:`.static_batch`) returns its one
    loop from :meth:`make_workers` and drives jobs with :meth:`take_jobs`, :meth:`job_started`,
    :meth:`job_ended` and :meth:`push_token`; the queue and its lock stay private here.
    """

    def __init__(self, engines: Sequence[Engine], max_queue: int = 16, request_timeout_s: float | None = 120.0):
        if not engines:
            raise InvalidInputError("a scheduler needs at least one engine")
        if max_queue < 0:
            raise InvalidInputError(f"max_queue must be >= 0, got {max_queue}")
        if request_timeout_s is not None and request_timeout_s <= 0:
            raise InvalidInputError(f"request_timeout_s must be > 0, got {request_timeout_s}")
        self.engines = list(engines)
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self._smallest = min(self.engines, key=lambda e: e.n_ctx)  # checks requests for every slot
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: dict[int, Job] = {}
        self._closing = False
        self._tokenize_lock = threading.Lock()  # submit may be called from many threads
        self._totals = dict.fromkeys(("submitted", "rejected", "completed", "cancelled", "timed_out", "failed"), 0)
        self._workers = self.make_workers()
        for worker in self._workers:
            worker.start()

    def make_workers(self) -> list[threading.Thread]:
        """The worker threads, started by the constructor: one per engine (a subclass that batches
        returns its one loop instead)."""
        return [threading.Thread(target=self._work, args=(i, e), name=f"supertiny-slot-{i}", daemon=True)
                for i, e in enumerate(self.engines)]

    @property
    def slots(self) -> int:
        return len(self.engines)

    @property
    def n_ctx(self) -> int:
        """The context every slot can hold."""
        return self._smallest.n_ctx

    @property
    def closing(self) -> bool:
        return self._closing

    def submit(self, prompt: Prompt, max_tokens: int = 256, sampling: Sampling | None = None,
               stop: str | Sequence[str] = (), ignore_eos: bool = False, grammar: Grammar | None = None) -> Job:
        """Queue a request; the prompt is checked here so a bad one fails in the caller.

        Args:
            prompt: text, token ids, or chat messages (the chat template is applied).
            max_tokens: most tokens to generate (cut to what the context leaves).
            sampling: greedy by default.
            stop: strings that end the reply.
            ignore_eos: keep going past the eos token (benchmarks).
            grammar: hold the reply to it (constrained decoding; every scheduler supports it).

        Returns:
            The :class:`Job`; read it once.

        Raises:
            InvalidInputError: the prompt or an option cannot be used.
            QueueFull: every slot is busy and the queue is full.
            ShuttingDown: :meth:`close` was called.
        """
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        stops = [stop] if isinstance(stop, str) else list(stop)
        if not all(isinstance(s, str) for s in stops):
            raise InvalidInputError("stop must be a string or a list of strings")
        with self._tokenize_lock:  # the tokenizer is shared with slot 0's detokenizer only
            ids = self.engines[0].prompt_ids(prompt)  # ids checked against the vocabulary there
        self._smallest.check_request(len(ids), max_tokens)  # empty, fits the context, max_tokens
        # The worker gets token ids, so the prompt is tokenized once.
        job = Job(ids, max_tokens, sampling or Sampling(), stops, ignore_eos, self.request_timeout_s, self._discard,
                  grammar)
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            idle = self.slots - len(self._running)
            if len(self._queue) >= self.max_queue + idle:  # queued jobs an idle slot will not take
                self._totals["rejected"] += 1
                raise QueueFull(f"all {self.slots} slot(s) are busy and {self.max_queue} request(s) are "
                                "waiting; retry later")
            self._queue.append(job)
            self._totals["submitted"] += 1
            self._cond.notify()
        return job

    def stats(self) -> SchedulerStats:
        with self._cond:
            return SchedulerStats(slots=self.slots, queued=len(self._queue), in_flight=len(self._running),
                                  **self._totals)

    def close(self, wait: bool = True, cancel: bool = False, timeout: float | None = None) -> bool:
        """Stop taking jobs; queued and running jobs still finish unless ``cancel``.

        Args:
            wait: join the worker threads (at most ``timeout`` seconds).
            cancel: cancel queued and running jobs instead of letting them finish.

        Returns:
            Whether every worker has stopped (only then may the engines be closed).
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            jobs = [*self._queue, *self._running.values()] if cancel else []
        for job in jobs:
            job.cancel()
        if wait:
            end = None if timeout is None else time.monotonic() + timeout
            for worker in self._workers:
                worker.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(worker.is_alive() for worker in self._workers)

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- workers -------------------------------------------------------------------------

    def _discard(self, job: Job) -> None:
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # a slot has it (it stops at the next token) or it is finished
            self._tally(job, cancelled_in_queue=True)
        job.finish("cancelled", chunk=Chunk("", [], "cancelled"))

    def _tally(self, job: Job, cancelled_in_queue: bool = False) -> None:
        """Count a job's outcome (the lock held)."""
        outcome = "cancelled" if cancelled_in_queue and not job.done else job.outcome
        if outcome in self._totals:
            self._totals[outcome] += 1

    def _work(self, slot: int, engine: Engine) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing, and everything queued has run
                job = self._queue.popleft()
                self._running[slot] = job
            try:
                self._run(engine, job)
            finally:
                with self._cond:
                    del self._running[slot]
                    self._tally(job)

    def _run(self, engine: Engine, job: Job) -> None:
        if not job.begin():
            return
        try:
            for chunk in engine.stream_text(job.prompt_ids, job.max_tokens, sampling=job.sampling, stop=job.stop,
                                            ignore_eos=job.ignore_eos, cancel=job.cancelled, grammar=job.grammar):
                job.push(chunk)
        except Exception as exc:  # handed to the reader; the slot keeps serving
            job.finish(None, exc)
            _reset_quietly(engine)
        if not job.done:  # stream_text always ends with a finish reason
            job.finish(None, RuntimeError("the engine stopped without a finish reason"))

    # -- for subclasses whose one loop batches many jobs on one engine -------------------

    def take_jobs(self, limit: int, wait: bool = True, gather_s: float = 0.0,
                  track: bool = False) -> list[Job] | None:
        """Up to ``limit`` queued jobs, oldest first, for a batching loop.

        Args:
            wait: block until a job is queued; None once the scheduler closes with none left
                (the loop ends). Without it, return at once (maybe an empty list).
            gather_s: when fewer than ``limit`` are queued, wait this long for more (clients
                that start together then share a batch).
            track: count them running under their index (0..n-1) in the same step, so the
                queue's room never counts them twice; :meth:`job_ended` frees each.
        """
        with self._cond:
            while wait and not self._queue and not self._closing:
                self._cond.wait()
            if wait and not self._queue:
                return None  # closing, and everything queued has run
            if gather_s and len(self._queue) < limit and not self._closing:
                self._cond.wait(gather_s)
            jobs = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
            if track:
                self._running.update(enumerate(jobs))
            return jobs

    def job_started(self, key: int, job: Job) -> None:
        """Count ``job`` running under ``key`` (a sequence slot) until :meth:`job_ended`."""
        with self._cond:
            self._running[key] = job

    def job_ended(self, job: Job, key: int | None = None) -> None:
        """Count ``job``'s outcome, and free ``key`` if it ran there."""
        with self._cond:
            if key is not None:
                self._running.pop(key, None)
            self._tally(job)

    def push_token(self, job: Job, text: TextStream, token: int | None, done: bool) -> str | None:
        """Turn a batched engine's step for ``job`` into text: ``"stopped"`` when a stop string or a cancel
        ended it, ``"done"`` when the engine ended it, else None."""
        if token is not None:
            with self._tokenize_lock:  # the tokenizer is shared with submit()
                chunk = text.add(token)
            if chunk is not None:
                job.push(chunk)
            if text.finished:  # a stop string or a cancel
                return "stopped"
        if done:
            with self._tokenize_lock:
                job.push(text.end())
            return "done"
        return None


def _reset_quietly(engine: Engine) -> None:
    """Drop the cached prefix after a failure, so the next job starts from a clean state."""
    try:
        engine.reset()
    except Exception:  # the original error is what the reader needs
        pass
