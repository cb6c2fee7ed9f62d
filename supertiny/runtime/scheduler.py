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

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass

from ..errors import InvalidInputError, SupertinyError
from .engine import Engine, Prompt
from .sampling import Sampling
from .text import Chunk, Completion


class QueueFull(SupertinyError):
    """Every slot is busy and the queue already holds ``max_queue`` waiting jobs (HTTP 429)."""


class ShuttingDown(SupertinyError):
    """The scheduler is closing and takes no new jobs (HTTP 503)."""


class JobTimeout(SupertinyError):
    """The job waited and ran longer than the scheduler's ``request_timeout_s`` (HTTP 504)."""


@dataclass(frozen=True)
class SchedulerStats:
    """Counters for metrics: the gauges now and the totals since the scheduler started."""

    slots: int
    queued: int  # waiting for a slot
    in_flight: int  # running on a slot
    submitted: int
    rejected: int  # QueueFull
    completed: int  # finished with stop or length
    cancelled: int
    timed_out: int
    failed: int  # the engine raised


_ids = itertools.count()


class Job:
    """One request: the worker writes chunks, exactly one reader consumes them.

    Read it with ``for chunk in job`` (blocking), ``async for chunk in job.aiter()``
    or :meth:`result`. Reading raises :class:`JobTimeout` once the job is older than
    the scheduler's timeout, and re-raises what the engine raised. A reader that
    stops early cancels the job. Timestamps are :func:`time.perf_counter` values.
    """

    def __init__(self, prompt_ids: list[int], max_tokens: int, sampling: Sampling, stop: list[str],
                 ignore_eos: bool, timeout_s: float | None, discard: Callable[[Job], None]):
        self.id = f"{next(_ids):06d}{time.time_ns() & 0xFFFFFFFF:08x}"
        self.prompt_ids, self.max_tokens, self.sampling = prompt_ids, max_tokens, sampling
        self.stop, self.ignore_eos = stop, ignore_eos
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.submitted = time.perf_counter()
        self.deadline = self.submitted + timeout_s if timeout_s is not None else float("inf")
        self.timeout_s = timeout_s
        self.started: float | None = None
        self.first_token: float | None = None
        self.finished: float | None = None
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()  # the engine checks it after every token
        self._cond = threading.Condition()
        self._chunks: deque[Chunk] = deque()
        self._done = False
        self._claimed = False
        self._wake: Callable[[], None] | None = None  # set while an asyncio reader waits
        self._discard = discard

    # -- what readers see ------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done

    @property
    def queue_s(self) -> float | None:
        """Seconds from submission until a slot took the job."""
        return None if self.started is None else self.started - self.submitted

    @property
    def ttft_s(self) -> float | None:
        """Seconds from submission (queueing included, as a client sees it) to the first token."""
        return None if self.first_token is None else self.first_token - self.submitted

    @property
    def total_s(self) -> float | None:
        return None if self.finished is None else self.finished - self.submitted

    @property
    def outcome(self) -> str:
        """``completed``, ``cancelled``, ``timed_out``, ``failed`` or ``pending``."""
        if not self._done:
            return "pending"
        if isinstance(self.error, JobTimeout):
            return "timed_out"
        if self.error is not None:
            return "failed"
        return "cancelled" if self.finish_reason == "cancelled" else "completed"

    def cancel(self) -> None:
        """Stop the job: dropped if still queued, else the engine stops after the current token."""
        self._cancel.set()
        self._discard(self)

    def __iter__(self) -> Iterator[Chunk]:
        self._claim()
        try:
            while True:
                items, done = self._take(block=True)
                yield from items
                if done:
                    break
                if not items:  # woke up with nothing: the deadline passed
                    self._expire()
            if self.error is not None:
                raise self.error
        finally:
            if not self._done:  # the reader left early
                self.cancel()

    async def aiter(self) -> AsyncIterator[Chunk]:
        """The chunks in an asyncio task; waiting never blocks the event loop."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def notify() -> None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        self._claim()
        with self._cond:
            self._wake = notify
        try:
            while True:
                wake.clear()  # before taking: a chunk pushed after this sets it again
                items, done = self._take(block=False)
                for chunk in items:
                    yield chunk
                if done:
                    break
                remaining = self.deadline - time.perf_counter()
                if remaining <= 0:
                    self._expire()
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), min(remaining, 3600.0))
                except asyncio.TimeoutError:
                    pass
            if self.error is not None:
                raise self.error
        finally:
            with self._cond:
                self._wake = None
            if not self._done:  # the task was cancelled (client gone) or the reader left
                self.cancel()

    def result(self) -> Completion:
        """Read the whole reply (blocking), with its token counts and timings."""
        chunks = list(self)
        return Completion.from_chunks(chunks, self.prompt_tokens, self.ttft_s, self.total_s or 0.0)

    # -- internals ---------------------------------------------------------------------

    def _claim(self) -> None:
        with self._cond:
            if self._claimed:
                raise RuntimeError(f"job {self.id} already has a reader")
            self._claimed = True

    def _take(self, block: bool) -> tuple[list[Chunk], bool]:
        with self._cond:
            while block and not self._chunks and not self._done:
                remaining = self.deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 3600.0))
            items = list(self._chunks)
            self._chunks.clear()
            return items, self._done

    def _finish(self, reason: str | None, error: BaseException | None = None,
                chunk: Chunk | None = None) -> bool:
        """Mark the job done (once); later chunks from a still-running engine are dropped."""
        with self._cond:
            if self._done:
                return False
            if chunk is not None:
                self._chunks.append(chunk)
            self._done, self.finished = True, time.perf_counter()
            self.finish_reason, self.error = reason, error
            self._notify_locked()
        return True

    def _notify_locked(self) -> None:
        self._cond.notify_all()
        if self._wake is not None:
            self._wake()

    def _expire(self) -> None:
        self._finish("cancelled", JobTimeout(f"the request took longer than {self.timeout_s:g} s"))
        self.cancel()

    def _start(self) -> bool:
        with self._cond:
            if self._done or self._cancel.is_set():
                return False
            self.started = time.perf_counter()
            return True

    def _push(self, chunk: Chunk) -> None:
        if chunk.finish_reason is not None:
            self._count(chunk)
            self._finish(chunk.finish_reason, chunk=chunk)
            return
        with self._cond:
            if self._done:
                return
            self._count(chunk)
            self._chunks.append(chunk)
            self._notify_locked()

    def _count(self, chunk: Chunk) -> None:
        if chunk.token_ids and self.first_token is None:
            self.first_token = time.perf_counter()
        self.completion_tokens += len(chunk.token_ids)


class Scheduler:
    """Run jobs on engines, one worker thread per engine, FIFO with a bounded queue.

    Args:
        engines: engines over the same artifact; each runs one job at a time.
        max_queue: most jobs waiting for a slot; :meth:`submit` raises :class:`QueueFull`
            beyond that (0: a job runs only if a slot is free now).
        request_timeout_s: a job that waited and ran longer is cancelled and its reader
            gets :class:`JobTimeout` (``None``: no limit).
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
        self._workers = self._make_workers()
        for worker in self._workers:
            worker.start()

    def _make_workers(self) -> list[threading.Thread]:
        """One thread per engine (a subclass that batches runs one loop instead)."""
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
               stop: str | Sequence[str] = (), ignore_eos: bool = False) -> Job:
        """Queue a request; the prompt is checked here so a bad one fails in the caller.

        Args:
            prompt: text, token ids, or chat messages (the chat template is applied).
            max_tokens: most tokens to generate (cut to what the context leaves).
            sampling: greedy by default.
            stop: strings that end the reply.
            ignore_eos: keep going past the eos token (benchmarks).

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
        job = Job(ids, max_tokens, sampling or Sampling(), stops, ignore_eos, self.request_timeout_s, self._discard)
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
        job._finish("cancelled", chunk=Chunk("", [], "cancelled"))

    def _tally(self, job: Job, cancelled_in_queue: bool = False) -> None:
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
        if not job._start():
            job._finish("cancelled", chunk=Chunk("", [], "cancelled"))
            return
        if time.perf_counter() >= job.deadline:
            job._expire()
            return
        try:
            for chunk in engine.stream_text(job.prompt_ids, job.max_tokens, sampling=job.sampling, stop=job.stop,
                                            ignore_eos=job.ignore_eos, cancel=job._cancel):
                job._push(chunk)
        except Exception as exc:  # handed to the reader; the slot keeps serving
            job._finish(None, exc)
            _reset_quietly(engine)
        if not job.done:  # stream_text always ends with a finish reason
            job._finish(None, RuntimeError("the engine stopped without a finish reason"))


def _reset_quietly(engine: Engine) -> None:
    """Drop the cached prefix after a failure, so the next job starts from a clean state."""
    try:
        engine.reset()
    except Exception:  # the original error is what the reader needs
        pass
