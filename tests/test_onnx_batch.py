"""Static batches on onnxruntime: a padded batch decodes what each prompt decodes alone."""

from __future__ import annotations

import pytest
import torch

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.onnx_batch import StaticBatch, generate_batch
from supertiny.runtime.engines.onnxrt import OnnxEngine
from supertiny.runtime.engines.sampling import Sampling
from supertiny.runtime.serving.static_batch import StaticBatchScheduler
from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx

from conftest import build_tiny_model

# prompts of different lengths, so every row but the longest is left-padded
PROMPTS = [list(range(3, 6)), list(range(10, 27)), list(range(40, 49)), list(range(100, 130))]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from conftest import train_tiny_tokenizer

    src = tmp_path_factory.mktemp("src")
    model = build_tiny_model("llama", tied=False)
    with torch.no_grad():  # peaked next-token distributions, like a trained model's
        model.get_output_embeddings().weight.normal_(0, 0.6, generator=torch.Generator().manual_seed(1))
    model.save_pretrained(src)
    train_tiny_tokenizer().save_pretrained(src)
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(src, out, OnnxExportConfig(verify=False, overwrite=True))
    return OnnxEngine(out, threads=1)


def test_batched_greedy_equals_one_at_a_time(engine):
    alone = [engine.generate(p, 20, stop_ids=[]) for p in PROMPTS]
    assert all(len(a) == 20 for a in alone)
    assert generate_batch(engine, PROMPTS, 20) == alone
    # a stop id ends its row early; the others go on unchanged, and shrink the batch
    stop = alone[1][5]
    expect = [a[:a.index(stop)] if stop in a else a for a in alone]
    assert generate_batch(engine, PROMPTS, 20, stop_ids=[stop]) == expect
    assert len(expect[1]) == 5 and any(len(e) == 20 for e in expect)


def test_sampled_rows_follow_their_own_seed(engine):
    s = [Sampling(temperature=1.0, top_k=20, seed=i) for i in range(len(PROMPTS))]
    alone = [engine.generate(p, 12, sampling=si, stop_ids=[]) for p, si in zip(PROMPTS, s, strict=True)]
    batch = StaticBatch(engine, PROMPTS, [12] * len(PROMPTS), s)
    got = [[] for _ in PROMPTS]
    while batch.active:
        for row, token, _ in batch.step():
            got[row].append(token)
    assert got == alone
    assert len({tuple(a) for a in alone}) == len(PROMPTS)


def test_released_row_leaves_the_others_correct(engine):
    alone = [engine.generate(p, 10, stop_ids=[]) for p in PROMPTS]
    batch = StaticBatch(engine, PROMPTS, [10] * len(PROMPTS))
    got = [[] for _ in PROMPTS]
    for step in range(10):
        if step == 3:
            batch.release(2)
            assert batch.active == [0, 1, 3]
        for row, token, _ in batch.step():
            got[row].append(token)
    assert batch.active == []
    assert got[2] == alone[2][:3] and [got[i] for i in (0, 1, 3)] == [alone[i] for i in (0, 1, 3)]


def test_scheduler_batches_jobs_and_cancels_one(engine):
    alone = [engine.tokenizer.decode(engine.generate(p, 16, stop_ids=[])) for p in PROMPTS]
    with StaticBatchScheduler(engine, batch=4, max_queue=8, request_timeout_s=None, gather_s=0.5) as sched:
        jobs = [sched.submit(p, 16, ignore_eos=True) for p in PROMPTS]
        doomed = sched.submit(PROMPTS[0], 16, ignore_eos=True)  # the fifth waits for the next batch
        doomed.cancel()
        results = [job.result() for job in jobs]
        assert [r.text for r in results] == alone
        assert {r.finish_reason for r in results} == {"length"}
        assert doomed.outcome == "cancelled"
        stats = sched.stats()
    assert (stats.completed, stats.cancelled) == (4, 1)


def test_what_cannot_batch(engine, monkeypatch):
    with pytest.raises(InvalidInputError, match="one budget each"):
        StaticBatch(engine, PROMPTS, [4])
    monkeypatch.setattr(engine, "shared_cache", True)  # a genai graph's in-place cache
    with pytest.raises(InvalidInputError, match="optimum graph"):
        generate_batch(engine, PROMPTS, 4)


def test_bench_parallel_runs_onnx_in_static_batches(engine):
    from supertiny.runtime.bench.measure import BenchConfig, bench

    config = BenchConfig(prompt_lengths=(8,), new_tokens=4, repeats=1, warmup=0, concurrency=(1, 4), requests=4,
                         request_prompt_tokens=8, request_max_tokens=4, parallel=4, threads=1)
    (result,) = bench([str(engine.path.parent)], config, isolate=False)["results"]
    assert (result["format"], result["parallel"]) == ("onnx", 4)
    levels = result["concurrency"]
    assert [c["concurrency"] for c in levels] == [1, 4] and all(c["requests"] == 4 for c in levels)
    assert all(c["throughput_tokens_per_s"] > 0 and c["latency_ms_p50"] <= c["latency_ms_p95"] for c in levels)


def test_the_server_decodes_an_onnx_export_in_static_batches(engine):
    from concurrent.futures import ThreadPoolExecutor

    from starlette.testclient import TestClient

    from supertiny.runtime.engines.base import EngineOptions
    from supertiny.runtime.serving.pool import open_engines
    from supertiny.runtime.serving.server import ServeConfig, create_app

    texts = ["hello", "the cat sat on the mat", "a b c", "hello world hello world hello"]
    alone = [engine.complete(t, max_tokens=8, ignore_eos=True).text for t in texts]
    config = ServeConfig(port=0, model_name="tiny", parallel=4, max_tokens_limit=64)
    with open_engines(engine.path.parent, "onnx", options=EngineOptions(threads=1), parallel=4) as pool:
        scheduler = pool.scheduler(config.max_queue, config.request_timeout_s)
        assert isinstance(scheduler, StaticBatchScheduler) and scheduler.slots == 4
        with TestClient(create_app(scheduler, "tiny", config)) as client:  # its lifespan closes the scheduler

            def ask(text: str) -> str:
                body = {"model": "tiny", "prompt": text, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
                reply = client.post("/v1/completions", json=body)
                assert reply.status_code == 200, reply.text
                return reply.json()["choices"][0]["text"]

            with ThreadPoolExecutor(4) as pool_of_clients:
                assert list(pool_of_clients.map(ask, texts)) == alone
