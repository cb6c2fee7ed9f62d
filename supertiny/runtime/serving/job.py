"""A request as the scheduler sees it: :class:`Job` (chunks written by a worker, read once),
the scheduler's errors (429/503/504 in HTTP terms) and its counters.

Split from :mod:`.scheduler` (which re-exports every name) so that the queue and the
workers read apart from the one-reader handoff of chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from supertiny.errors import SupertinyError
from supertiny.runtime.engines.constrain import Grammar
from supertiny.runtime.engines.sampling import Sampling
from supertiny.runtime.engines.text import Chunk, Completion


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


class _Deferred(threading.local):
    pending: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] | None = None


_deferred = _Deferred()


@contextlib.contextmanager
def wakes_per_step() -> Iterator[None]:
    """Within the block, asyncio readers of the jobs this thread pushes to are woken once per event
    loop when it ends, not once per chunk: a batching loop wraps each step's tokens in it, so the
    server's event loop gets one cross-thread call per step whatever the number of streams."""
    _deferred.pending = {}
    try:
        yield
    finally:
        pending, _deferred.pending = _deferred.pending, None
        for loop, wakes in pending.items():
            _call_soon(loop, wakes)


def _call_soon(loop: asyncio.AbstractEventLoop, wakes: list[Callable[[], None]]) -> None:
    def run() -> None:
        for wake in wakes:
            wake()

    try:
        loop.call_soon_threadsafe(run)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


class Job:
    """One request: the worker writes chunks, exactly one reader consumes them.

    Read it with ``for chunk in job`` (blocking), ``async for chunk in job.aiter()``
    or :meth:`result`. Reading raises :class:`JobTimeout` once the job is older than
    the scheduler's timeout, and re-raises what the engine raised. A reader that
    stops early cancels the job. Timestamps are :func:`time.perf_counter` values.

    The worker's side (a scheduler, in any module): :meth:`begin` when a slot takes the job,
    :meth:`push` each chunk, :meth:`finish` on an error or a cancel, and :attr:`cancelled`
    to watch between tokens.
    """

    def __init__(self, prompt_ids: list[int], max_tokens: int, sampling: Sampling, stop: list[str],
                 ignore_eos: bool, timeout_s: float | None, discard: Callable[[Job], None],
                 grammar: Grammar | None = None):
        self.id = f"{next(_ids):06d}{time.time_ns() & 0xFFFFFFFF:08x}"
        self.prompt_ids, self.max_tokens, self.sampling = prompt_ids, max_tokens, sampling
        self.stop, self.ignore_eos, self.grammar = stop, ignore_eos, grammar
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
        # Set by cancel(); engines and batch loops check it after every token.
        self.cancelled = threading.Event()
        self._cond = threading.Condition()
        self._chunks: deque[Chunk] = deque()
        self._done = False
        self._claimed = False
        self._wake: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None  # an asyncio reader's
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
        self.cancelled.set()
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
        async for batch in self.abatches():
            for chunk in batch:
                yield chunk

    async def abatches(self) -> AsyncIterator[list[Chunk]]:
        """The chunks in an asyncio task, as lists of every chunk that arrived since the last one
        (a streaming response writes each list at once: one socket write, not one per token).

        The worker's thread wakes this task with one ``call_soon_threadsafe`` per chunk, or per
        scheduler step for all its jobs (:func:`wakes_per_step`); the deadline is one timer."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        expired = False

        def on_deadline() -> None:
            nonlocal expired
            expired = True
            wake.set()

        self._claim()
        with self._cond:
            self._wake = (loop, wake.set)
        timer = (loop.call_later(max(0.0, self.deadline - time.perf_counter()), on_deadline)
                 if self.deadline != float("inf") else None)
        try:
            while True:
                wake.clear()  # before taking: a chunk pushed after this sets it again
                items, done = self._take(block=False)
                if items:
                    yield items
                if done:
                    break
                if expired:
                    self._expire()
                    continue
                await wake.wait()
            if self.error is not None:
                raise self.error
        finally:
            if timer is not None:
                timer.cancel()
            with self._cond:
                self._wake = None
            if not self._done:  # the task was cancelled (client gone) or the reader left
                self.cancel()

    def result(self) -> Completion:
        """Read the whole reply (blocking), with its token counts and timings."""
        chunks = list(self)
        return Completion.from_chunks(chunks, self.prompt_tokens, self.ttft_s, self.total_s or 0.0)

    # -- what schedulers call (the worker's side) ---------------------------------------

    def begin(self) -> bool:
        """Start the job on a slot; a job cancelled or past its deadline is finished here instead
        (False: do not run it)."""
        if not self._start():
            self.finish("cancelled", chunk=Chunk("", [], "cancelled"))
            return False
        if time.perf_counter() >= self.deadline:
            self._expire()
            return False
        return True

    def push(self, chunk: Chunk) -> None:
        """Hand a chunk to the reader; one with a finish reason finishes the job."""
        if chunk.finish_reason is not None:
            self._count(chunk)
            self.finish(chunk.finish_reason, chunk=chunk)
            return
        with self._cond:
            if self._done:
                return
            self._count(chunk)
            self._chunks.append(chunk)
            self._notify_locked()

    def finish(self, reason: str | None, error: BaseException | None = None, chunk: Chunk | None = None) -> bool:
        """Mark the job done (once: False if it already was), with a last ``chunk`` or the ``error``
        its reader gets; later chunks from a still-running engine are dropped."""
        with self._cond:
            if self._done:
                return False
            if chunk is not None:
                self._chunks.append(chunk)
            self._done, self.finished = True, time.perf_counter()
            self.finish_reason, self.error = reason, error
            self._notify_locked()
        return True

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

    def _notify_locked(self) -> None:
        self._cond.notify_all()
        if self._wake is not None:
            loop, wake = self._wake
            pending = _deferred.pending
            if pending is not None:  # inside wakes_per_step: one call per loop when the step ends
                pending.setdefault(loop, []).append(wake)
            else:
                _call_soon(loop, [wake])

    def _expire(self) -> None:
        self.finish("cancelled", JobTimeout(f"the request took longer than {self.timeout_s:g} s"))
        self.cancel()

    def _start(self) -> bool:
        with self._cond:
            if self._done or self.cancelled.is_set():
                return False
            self.started = time.perf_counter()
            return True

    def _count(self, chunk: Chunk) -> None:
        if chunk.token_ids and self.first_token is None:
            self.first_token = time.perf_counter()
        self.completion_tokens += len(chunk.token_ids)
