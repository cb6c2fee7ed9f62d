"""The batched llama.cpp engine and continuous batching on a tiny GGUF: greedy replies equal
the single-sequence engine's token for token, cancellation, KV slot reuse, context limits,
and the server with --parallel under concurrent load through the official client."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.batched import BatchedLlamaEngine
from supertiny.runtime.engines.llamacpp import LlamaCppEngine
from supertiny.runtime.engines.sampling import Sampling
from supertiny.runtime.serving.batch_scheduler import BatchScheduler
from supertiny.runtime.serving.server import ServeConfig, bind_socket, build_server, create_app

from conftest import start_server

TEXTS = ["Alice", "Alice was beginning to get very tired of sitting by her sister on the bank",
         "the Queen said", "down the rabbit hole " * 6, "Alice was beginning to get very tired"]



@pytest.fixture(scope="module")
def single(gguf_path):
    engine = LlamaCppEngine(gguf_path, n_ctx=256, n_threads=1)
    engine.llm.n_batch = 8  # feed prompts in the batched engine's chunks (see BatchedLlamaEngine.step)
    return engine


@pytest.fixture(scope="module")
def prompts(single):
    return [single.tokenize(t) for t in TEXTS]


def test_greedy_equals_single_sequence_with_staggered_admission(gguf_path, single, prompts):
    budgets = [12, 20, 16, 9, 14]
    expected = [single.generate(p, n, stop_ids=[]) for p, n in zip(prompts, budgets, strict=True)]
    assert len({tuple(e) for e in expected}) == len(expected)  # the prompts lead to different replies
    engine = BatchedLlamaEngine(gguf_path, n_ctx=256, n_threads=1, parallel=3, n_batch=8)
    assert max(len(p) for p in prompts) > 8  # some prompts are fed in several chunks
    got: dict[int, list[int]] = {}
    owner: dict[int, int] = {}
    waiting, step = list(range(len(prompts))), 0
    while waiting or engine.active:
        # admit one request every other step, while a slot is free: replies start mid-batch
        if waiting and engine.free_slots and step % 2 == 0:
            i = waiting.pop(0)
            owner[engine.add(prompts[i], budgets[i], stop_ids=[])] = i
            got[i] = []
        for slot, token, done in engine.step():
            assert token is not None  # stop_ids=[]: no eos event
            got[owner[slot]].append(token)
            assert done == (len(got[owner[slot]]) == budgets[owner[slot]])
        step += 1
    assert [got[i] for i in range(len(prompts))] == expected
    # the cells each stream holds are exactly the tokens the engine cached (nothing leaks)
    assert engine.free_slots == 3 and all(engine.kv_tokens(s) == len(engine.cached_tokens(s)) > 0 for s in range(3))
    engine.reset()
    assert [engine.kv_tokens(s) for s in range(3)] == [0, 0, 0]
    # the Engine API on one sequence: the same replies, eos handling and text
    assert engine.generate(prompts[1], budgets[1], stop_ids=[]) == expected[1]
    assert engine.complete(TEXTS[2], max_tokens=10).text == single.complete(TEXTS[2], max_tokens=10).text
    stop = expected[0][4]
    assert engine.generate(prompts[0], 12, stop_ids=[stop]) == expected[0][: expected[0].index(stop)]


def test_scheduler_replies_equal_engine_and_cancel_leaves_others_correct(gguf_path, single):
    engine = BatchedLlamaEngine(gguf_path, n_ctx=256, n_threads=1, parallel=4, n_batch=16)
    with BatchScheduler(engine, max_queue=16) as scheduler:
        jobs = [scheduler.submit(t, max_tokens=40, ignore_eos=True, stop=["zzz"]) for t in TEXTS]
        victim = jobs[1]
        pieces = iter(victim)
        next(pieces)  # it is running: cancel it mid-reply
        victim.cancel()
        results = {i: j.result() for i, j in enumerate(jobs) if j is not victim}
        assert victim.outcome == "cancelled" and victim.completion_tokens < 40
        for i, r in results.items():
            ref = single.complete(TEXTS[i], max_tokens=40, ignore_eos=True, stop=["zzz"])
            assert (r.text, r.token_ids, r.finish_reason) == (ref.text, ref.token_ids, ref.finish_reason)
        # a stop string ends a reply exactly as on the single engine
        ref = single.complete(TEXTS[0], max_tokens=20, ignore_eos=True)
        cut = ref.text[3:6]
        got = scheduler.submit(TEXTS[0], max_tokens=20, ignore_eos=True, stop=[cut]).result()
        want = single.complete(TEXTS[0], max_tokens=20, ignore_eos=True, stop=[cut])
        assert (got.text, got.finish_reason) == (want.text, "stop")
        stats = scheduler.stats()
    assert stats.cancelled == 1 and stats.completed == len(TEXTS) and stats.in_flight == 0
    assert engine.free_slots == 4 and all(engine.kv_tokens(s) == len(engine.cached_tokens(s)) for s in range(4))


def test_many_short_requests_reuse_slots_without_leaking(gguf_path, single, prompts):
    engine = BatchedLlamaEngine(gguf_path, n_ctx=64, n_threads=1, parallel=3, n_batch=32)
    with BatchScheduler(engine, max_queue=64) as scheduler:
        # 60 requests of up to 40 cells each through 3 slots of 64: without release they could not fit
        jobs = [scheduler.submit(prompts[i % 3], max_tokens=24, ignore_eos=True) for i in range(60)]
        replies = [j.result().token_ids for j in jobs]
        seeded = [scheduler.submit(prompts[0], max_tokens=8, sampling=Sampling(temperature=0.9, seed=7),
                                   ignore_eos=True).result().token_ids for _ in range(2)]
    for i, r in enumerate(replies):
        assert r == single.generate(prompts[i % 3], 24, stop_ids=[])
    assert seeded[0] == seeded[1] and len(seeded[0]) == 8  # per-sequence rng: a seed repeats
    # each stream holds what the engine cached, within its context: nothing leaks
    assert engine.free_slots == 3 and all(engine.kv_tokens(s) == len(engine.cached_tokens(s)) <= 64 for s in range(3))


def test_prompt_cache_reuses_the_longest_prefix_and_replies_stay_equal(gguf_path, single, prompts):
    engine = BatchedLlamaEngine(gguf_path, n_ctx=128, n_threads=1, parallel=2, n_batch=8)
    long, short = prompts[1], prompts[4]  # TEXTS[4] is the start of TEXTS[1]
    assert long[:len(short)] == short
    first = engine.generate(long, 6, stop_ids=[])
    slot = engine.add(short + [long[len(short)]] + [7, 8], 4, stop_ids=[])  # shares len(short) + 1 tokens
    assert engine.reused_tokens(slot) == len(short) + 1
    engine.release(slot)  # released before it ran: the slot keeps the shared prefix only
    assert engine.cached_tokens(slot) == long[:len(short) + 1] and engine.kv_tokens(slot) == len(short) + 1
    # the long prompt again: it feeds the rest, and gives the same reply
    assert engine.generate(long, 6, stop_ids=[]) == first == single.generate(long, 6, stop_ids=[])
    # and once more: all but its last token come from the cache
    slot = engine.add(long, 6, stop_ids=[])
    assert engine.reused_tokens(slot) == len(long) - 1
    engine.release(slot)
    # a prompt sharing nothing with any slot reuses nothing
    slot = engine.add(prompts[2], 4, stop_ids=[])
    assert engine.reused_tokens(slot) == 0
    engine.release(slot)
    off = BatchedLlamaEngine(gguf_path, n_ctx=128, n_threads=1, parallel=2, n_batch=8, cache_prompts=False)
    assert off.generate(long, 6, stop_ids=[]) == first
    slot = off.add(long, 6, stop_ids=[])
    assert off.reused_tokens(slot) == 0
    off.release(slot)
    assert [off.kv_tokens(s) for s in range(2)] == [0, 0]


def test_a_request_over_the_context_is_refused_at_submit(gguf_path, prompts):
    engine = BatchedLlamaEngine(gguf_path, n_ctx=32, n_threads=1, parallel=2, n_batch=8)
    with BatchScheduler(engine, max_queue=4) as scheduler:
        with pytest.raises(InvalidInputError, match="context holds 32"):
            scheduler.submit(list(range(5, 40)), max_tokens=4)
        # the batch keeps serving; a reply is cut at the context (length), never stalls it
        r = scheduler.submit(prompts[0], max_tokens=100, ignore_eos=True).result()
        assert r.finish_reason == "length" and len(prompts[0]) + r.completion_tokens == 32
    with pytest.raises(InvalidInputError, match="do not fit"):
        engine.add(prompts[0], 40)
    with pytest.raises(InvalidInputError, match="parallel must be"):
        BatchedLlamaEngine(gguf_path, parallel=0)


def test_server_with_parallel_under_concurrent_load(gguf_path, single):
    engine = BatchedLlamaEngine(gguf_path, n_ctx=256, n_threads=1, parallel=4, n_batch=32)
    config = ServeConfig(port=0, model_name="tiny", parallel=4, max_queue=32, max_tokens_limit=64)
    scheduler = BatchScheduler(engine, config.max_queue, config.request_timeout_s)
    sock = bind_socket("127.0.0.1", 0)
    server = build_server(create_app(scheduler, "tiny", config), config)
    thread = start_server(server, sock)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="-", max_retries=0,
                           timeout=60)

    def ask(i: int) -> tuple[int, str, str]:
        text = TEXTS[i % len(TEXTS)]
        if i % 2:
            stream = client.completions.create(model="tiny", prompt=text, max_tokens=16, temperature=0,
                                               stream=True)
            return i, "".join(c.choices[0].text for c in stream), "stream"
        r = client.completions.create(model="tiny", prompt=text, max_tokens=16, temperature=0)
        return i, r.choices[0].text, r.choices[0].finish_reason

    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(24)))
        for i, text, _ in answers:
            assert text == single.complete(TEXTS[i % len(TEXTS)], max_tokens=16).text
        with pytest.raises(openai.BadRequestError):  # over the context: a 400, the batch goes on
            client.completions.create(model="tiny", prompt="Alice " * 300, max_tokens=4)
        assert client.completions.create(model="tiny", prompt="Alice", max_tokens=3).usage.completion_tokens <= 3
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    stats = scheduler.stats()
    assert stats.failed == 0 and stats.in_flight == 0 and stats.completed == 25
    assert engine.free_slots == 4


def test_parallel_is_for_gguf_and_excludes_slots(make_tiny_dir):
    from supertiny.runtime.serving.server import serve

    with pytest.raises(InvalidInputError, match="either slots .* or parallel"):
        ServeConfig(slots=2, parallel=2)
    with pytest.raises(InvalidInputError, match="parallel must be >= 0"):
        ServeConfig(parallel=-1)
    with pytest.raises(InvalidInputError, match="--parallel batches GGUF files"):
        serve(make_tiny_dir(), ServeConfig(port=0, parallel=2))


def test_a_local_gguf_teacher_with_several_workers_decodes_them_in_one_batch(gguf_path):
    from supertiny.stages.transfer.teachers import BatchedTeacher, LocalTeacher, TeacherOptions, open_teacher

    chats = [[{"role": "user", "content": t}] for t in TEXTS]
    greedy = Sampling()
    with open_teacher(str(gguf_path), TeacherOptions(threads=1, n_ctx=256), workers=1) as one:
        assert isinstance(one, LocalTeacher)
        want = [one.complete(c, greedy, max_tokens=12) for c in chats]
    with open_teacher(str(gguf_path), TeacherOptions(threads=1, n_ctx=256, batched=True), workers=3) as teacher:
        assert isinstance(teacher, BatchedTeacher) and teacher.describe()["parallel"] == 3
        with ThreadPoolExecutor(3) as pool:  # three workers' calls share the batch
            got = list(pool.map(lambda c: teacher.complete(c, greedy, max_tokens=12), chats))
        assert teacher.prompt_tokens(chats[0]) == len(teacher.engine.prompt_ids(chats[0]))
    assert got == want and all(got)
    with pytest.raises(InvalidInputError, match="batched teaching decodes GGUF files"):
        open_teacher(str(gguf_path), TeacherOptions(backend="onnxruntime", batched=True), workers=2)


def test_the_pool_opens_engine_copies_or_one_batched_engine(gguf_path):
    from supertiny.backends import threads_for
    from supertiny.runtime.engines.base import EngineOptions
    from supertiny.runtime.serving.pool import batching_mode, open_engines
    from supertiny.runtime.serving.scheduler import Scheduler

    options = EngineOptions(n_ctx=64)
    with open_engines(gguf_path, "gguf", options=options, slots=2) as pool:  # copies share the cores
        assert len(pool.engines) == 2 and {e.threads for e in pool.engines} == {threads_for(None, share=2)}
        with pool.scheduler(max_queue=2) as scheduler:
            assert type(scheduler) is Scheduler and scheduler.slots == 2
            assert scheduler.submit("Alice", max_tokens=3, ignore_eos=True).result().completion_tokens == 3
    with open_engines(gguf_path, "gguf", options=options, parallel=3) as pool:
        (engine,) = pool.engines
        assert isinstance(engine, BatchedLlamaEngine) and engine.parallel == 3
        with pool.scheduler(max_queue=2) as scheduler:
            assert isinstance(scheduler, BatchScheduler) and scheduler.slots == 3
            assert scheduler.submit("Alice", max_tokens=3, ignore_eos=True).result().completion_tokens == 3
    assert batching_mode(gguf_path, "gguf", "auto", parallel=0) is None
    with pytest.raises(InvalidInputError, match="--parallel batches GGUF files"):
        batching_mode(gguf_path, "gguf", "onnxruntime", parallel=2)
    with pytest.raises(InvalidInputError, match="not both"):
        open_engines(gguf_path, "gguf", slots=2, parallel=2)
