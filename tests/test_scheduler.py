"""The request scheduler without HTTP: queue bounds, close, cancel, timeouts, timings, errors."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from supertiny.errors import InvalidInputError
from supertiny.runtime.serving.scheduler import JobTimeout, QueueFull, Scheduler, ShuttingDown

from conftest import ScriptedEngine


class FakeEngine(ScriptedEngine):
    """Emits a fixed cycle of tokens, ``delay`` seconds each; ``fail`` raises mid-reply."""

    def __init__(self, tokenizer, delay: float = 0.0, n_ctx: int = 64, fail: bool = False):
        ids = tokenizer("Alice was beginning to get very tired", add_special_tokens=False)["input_ids"]
        super().__init__(tokenizer, ids, n_ctx)
        self.delay, self.fail = delay, fail
        self.calls = 0

    def stream(self, prompt_ids, max_new_tokens, sampling=None, stop_ids=None):
        self.calls += 1
        for produced, token in enumerate(itertools.cycle(self.script)):
            if produced >= max_new_tokens:
                return
            if self.fail and produced == 2:
                raise RuntimeError("boom")
            time.sleep(self.delay)
            yield token


@pytest.fixture
def fake(tiny_tokenizer):
    return lambda **kw: FakeEngine(tiny_tokenizer, **kw)


def wait_for(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.005)


def test_reply_timings_and_counts(fake):
    engine = fake(delay=0.002)
    with Scheduler([engine], max_queue=4) as s:
        job = s.submit("Alice", max_tokens=6)
        done = job.result()
    expected = engine.complete("Alice", max_tokens=6)
    assert done.text == expected.text and done.finish_reason == "length"
    assert job.completion_tokens == 6 and job.prompt_tokens == len(engine.prompt_ids("Alice"))
    assert 0 <= job.queue_s <= job.ttft_s <= job.total_s
    assert job.outcome == "completed"


def test_queue_bound_and_counters(fake):
    with Scheduler([fake(delay=0.02)], max_queue=1) as s:
        running = s.submit("a", max_tokens=50)
        wait_for(lambda: s.stats().in_flight == 1)
        waiting = s.submit("b", max_tokens=50)
        with pytest.raises(QueueFull, match="1 slot"):
            s.submit("c", max_tokens=5)
        stats = s.stats()
        assert (stats.queued, stats.in_flight, stats.submitted, stats.rejected) == (1, 1, 2, 1)
        waiting.cancel()  # dropped from the queue without running
        assert waiting.outcome == "cancelled" and waiting.started is None
        assert s.stats().queued == 0
        running.cancel()
        wait_for(lambda: s.stats().in_flight == 0)
        assert s.stats().cancelled == 2


def test_max_queue_zero_runs_on_a_free_slot(fake):
    with Scheduler([fake(delay=0.02)], max_queue=0) as s:
        job = s.submit("a", max_tokens=30)
        with pytest.raises(QueueFull):
            s.submit("b", max_tokens=5)
        job.cancel()


def test_close_lets_queued_jobs_finish_and_refuses_new(fake):
    s = Scheduler([fake(delay=0.005)], max_queue=4)
    jobs = [s.submit(p, max_tokens=10) for p in ("a", "b", "c")]
    s.close(wait=False)
    with pytest.raises(ShuttingDown):
        s.submit("d", max_tokens=5)
    assert [j.result().finish_reason for j in jobs] == ["length"] * 3
    s.close(wait=True)
    assert all(not w.is_alive() for w in s._workers)
    assert s.stats().completed == 3


def test_cancel_stops_a_running_job_within_a_token(fake):
    with Scheduler([fake(delay=0.01)], max_queue=4) as s:
        job = s.submit("a", max_tokens=1000)
        chunks = iter(job)
        next(chunks)
        start = time.perf_counter()
        job.cancel()
        rest = list(chunks)
        assert rest[-1].finish_reason == "cancelled"
        assert time.perf_counter() - start < 1.0
        assert job.completion_tokens < 1000


def test_reader_leaving_early_cancels(fake):
    with Scheduler([fake(delay=0.01)], max_queue=4) as s:
        job = s.submit("a", max_tokens=1000)
        for _ in job:
            break  # the generator closes: the job must not run on
        wait_for(lambda: s.stats().in_flight == 0)
        assert job.outcome == "cancelled"


def test_timeout_cancels_and_frees_the_slot(fake):
    with Scheduler([fake(delay=0.02)], max_queue=4, request_timeout_s=0.2) as s:
        slow = s.submit("a", max_tokens=1000)
        queued = s.submit("b", max_tokens=1000)  # waits behind `slow`, expires in the queue
        with pytest.raises(JobTimeout, match="0.2 s"):
            list(slow)
        with pytest.raises(JobTimeout):
            queued.result()
        wait_for(lambda: s.stats().in_flight == 0)
        assert s.stats().timed_out == 2
        assert s.submit("c", max_tokens=3).result().finish_reason == "length"  # the slot serves again


def test_engine_error_reaches_the_reader_and_the_slot_survives(fake):
    engine = fake(fail=True)
    with Scheduler([engine], max_queue=4) as s:
        job = s.submit("a", max_tokens=10)
        with pytest.raises(RuntimeError, match="boom"):
            job.result()
        assert job.outcome == "failed" and s.stats().failed == 1
        engine.fail = False
        assert s.submit("a", max_tokens=4).result().completion_tokens == 4


def test_submit_validates_before_queueing(fake):
    with Scheduler([fake(n_ctx=16)], max_queue=4) as s:
        with pytest.raises(InvalidInputError, match="empty"):
            s.submit("", max_tokens=4)
        with pytest.raises(InvalidInputError, match="context holds 16"):
            s.submit("Alice was beginning to get very tired of sitting by her sister", max_tokens=4)
        with pytest.raises(InvalidInputError, match="max_tokens"):
            s.submit("a", max_tokens=-1)
        with pytest.raises(InvalidInputError, match=r"messages\[0\].role"):
            s.submit([{"role": "wizard", "content": "hi"}])
        with pytest.raises(InvalidInputError, match="token ids"):
            s.submit([1, 10**6])
        assert s.stats().submitted == 0


def test_one_reader_and_async_bridge(fake):
    engine = fake(delay=0.002)
    with Scheduler([engine, fake(delay=0.002)], max_queue=4) as s:
        job = s.submit("Alice", max_tokens=8)

        async def read():
            # a ticking task shows the loop is never blocked while the job runs
            ticks = 0

            async def tick():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)

            ticker = asyncio.ensure_future(tick())
            text = "".join([c.text async for c in job.aiter()])
            ticker.cancel()
            return text, ticks

        text, ticks = asyncio.run(read())
        assert text == engine.complete("Alice", max_tokens=8).text and ticks > 1
        with pytest.raises(RuntimeError, match="already has a reader"):
            list(job)


def test_slots_run_in_parallel(fake):
    engines = [fake(delay=0.02), fake(delay=0.02)]
    with Scheduler(engines, max_queue=0) as s:
        jobs = [s.submit(p, max_tokens=50) for p in ("a", "b")]  # max_queue 0: both need a free slot now
        wait_for(lambda: s.stats().in_flight == 2)
        for job in jobs:
            job.cancel()
        assert [e.calls for e in engines] == [1, 1]


def test_a_steps_chunks_reach_an_asyncio_reader_as_one_batch_after_one_wake():
    """What a batching loop pushes inside ``wakes_per_step`` wakes each event loop once, when the step ends,
    and the reader takes every chunk that arrived as one list (the server writes it with one send); a job's
    deadline still ends a reader that waits (504), from its one timer."""
    from supertiny.runtime.engines.sampling import Sampling
    from supertiny.runtime.engines.text import Chunk
    from supertiny.runtime.serving.job import Job, wakes_per_step

    def job(timeout: float | None = None) -> Job:
        return Job([1], 8, Sampling(), [], False, timeout, lambda j: None)

    async def main():
        loop = asyncio.get_running_loop()
        calls = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (calls.append(a), real(*a))[1]
        a, b = job(), job()
        readers = [a.abatches(), b.abatches()]
        first = [asyncio.ensure_future(r.__anext__()) for r in readers]
        await asyncio.sleep(0.01)  # both readers wait

        def step():  # a worker thread's step: 3 tokens for a, the last one for b
            with wakes_per_step():
                for text in ("x", "y", "z"):
                    a.push(Chunk(text, [1]))
                b.push(Chunk("!", [1], "length"))

        await asyncio.to_thread(step)
        got = await asyncio.gather(*first)
        assert [[c.text for c in batch] for batch in got] == [["x", "y", "z"], ["!"]]
        assert len([c for c in calls if c[0].__name__ == "run"]) == 1  # one wake for both jobs, 4 chunks
        with pytest.raises(StopAsyncIteration):
            await readers[1].__anext__()
        a.push(Chunk("", [], "stop"))
        assert [c.finish_reason for c in await readers[0].__anext__()] == ["stop"]

        late = job(timeout=0.05)
        t0 = time.perf_counter()
        with pytest.raises(JobTimeout):
            async for _ in late.abatches():
                pass
        assert 0.04 < time.perf_counter() - t0 < 2

    asyncio.run(main())
