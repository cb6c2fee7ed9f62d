"""The benchmark: its maths on synthetic timings, verdicts against a target, and one
real run through the CLI on tiny artifacts (pass, fail with exit 1, usage errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from supertiny.cli import main
from supertiny.errors import InvalidInputError
from supertiny.runtime.bench.measure import (
    BenchConfig,
    decode_rate,
    measured_for_budgets,
    percentile,
    summarize,
    verdicts,
)
from supertiny.runtime.bench.report import format_comparison, format_result
from supertiny.targets import parse_target

TARGET = {
    "schema_version": 1, "name": "tiny-box", "description": "test",
    "device": {"arch": "x86_64", "cores": 2, "memory_gb": 4},
    "runtime": {"threads": 1, "context": 512, "formats": ["gguf"]},
    "budget": {"prompt_tokens": 16, "ttft_ms": 500, "decode_tokens_per_s": 10, "concurrency": 2, "max_tokens": 4,
               "p95_latency_ms": 2000, "peak_rss_mb": 3000, "file_size_mb": 10},
}


def synthetic_result(ttft=100.0, decode=50.0, p95=900.0, rss=1000.0, size=5.0):
    return {
        "artifact": "/x/model.gguf", "backend": "llama.cpp", "threads": 1, "slots": 1, "file_size_mb": size,
        "load_s": 0.5, "baseline_rss_mb": 300.0, "peak_rss_mb": rss, "notes": [],
        "prompts": [{"prompt_tokens": n, "ttft_ms_p50": ttft * n / 16, "ttft_ms_min": ttft * n / 16 - 1,
                     "ttft_ms_max": ttft * n / 16 + 1, "prompt_tokens_per_s_p50": 160.0,
                     "decode_tokens_per_s_p50": decode, "decode_tokens_per_s_min": decode - 1,
                     "decode_tokens_per_s_max": decode + 1} for n in (8, 16)],
        "concurrency": [{"concurrency": c, "requests": 4, "request_prompt_tokens": 16, "request_max_tokens": 4,
                         "latency_ms_p50": p95 / 2, "latency_ms_p95": p95 * c / 2, "latency_ms_p99": p95 * c / 2 + 5,
                         "ttft_ms_p95": 50.0, "throughput_tokens_per_s": 20.0, "requests_per_s": 2.0}
                        for c in (1, 2)],
    }


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5, 1, 4, 2, 3], list(np.random.default_rng(0).random(101))])
@pytest.mark.parametrize("q", [0, 25, 50, 95, 99, 100])
def test_percentile_matches_numpy(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_rejects_nonsense():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_and_decode_rate():
    s = summarize([10.0, 30.0, 20.0, 40.0], "latency_ms", (50, 95))
    assert s == {"latency_ms_p50": 25.0, "latency_ms_p95": pytest.approx(38.5), "latency_ms_min": 10.0,
                 "latency_ms_max": 40.0}
    # 1 prefill token at 0.5 s, then 4 more tokens 0.1 s apart: 10 tok/s, the prefill not counted
    assert decode_rate([0.5, 0.6, 0.7, 0.8, 0.9]) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        decode_rate([0.5])


def test_verdicts_pick_the_budgets_conditions():
    target = parse_target(TARGET, "tiny-box.toml")
    result = synthetic_result()
    got = measured_for_budgets(result, target)
    # TTFT and decode at the budget's 16-token prompt, p95 at its concurrency of 2
    assert got == {"ttft_ms": 100.0, "decode_tokens_per_s": 50.0, "p95_latency_ms": 900.0, "peak_rss_mb": 1000.0,
                   "file_size_mb": 5.0}
    assert all(v["passed"] for v in verdicts(result, target))
    slow = verdicts(synthetic_result(decode=9.99, size=10.0, p95=2001.0), target)
    status = {v["key"]: v["passed"] for v in slow}
    assert status == {"ttft_ms": True, "decode_tokens_per_s": False, "p95_latency_ms": False, "peak_rss_mb": True,
                      "file_size_mb": True}  # 10.0 == limit passes
    result["concurrency"] = result["concurrency"][:1]  # concurrency 2 not measured
    assert {v["key"]: v["passed"] for v in verdicts(result, target)}["p95_latency_ms"] is None


def test_tables_render():
    target = parse_target(TARGET, "tiny-box.toml")
    a, b = synthetic_result(), synthetic_result(decode=25.0, p95=5000.0)
    for r in (a, b):
        r["verdicts"] = verdicts(r, target)
        r["passed"] = all(v["passed"] is not False for v in r["verdicts"])
    text = format_result(b)
    assert "FAIL  p95 request latency: 5000 ms (budget <= 2000; 2 concurrent, 16-token prompt" in text
    assert "verdict: FAIL" in text
    table = format_comparison([a, b])
    assert "(0.50x)" in table and "PASS" in table and "FAIL" in table


def test_config_validation_and_target_merge():
    with pytest.raises(InvalidInputError, match="concurrency"):
        BenchConfig(concurrency=(0,))
    with pytest.raises(InvalidInputError, match="new_tokens: expected an integer, at least 2, got 1"):
        BenchConfig(new_tokens=1)
    merged = BenchConfig(prompt_lengths=(8,), concurrency=(1,)).for_target(parse_target(TARGET, "t.toml"))
    assert merged.prompt_lengths == (8, 16) and merged.concurrency == (1, 2)
    assert (merged.request_prompt_tokens, merged.request_max_tokens, merged.threads) == (16, 4, 1)
    assert BenchConfig(threads=2).for_target(parse_target(TARGET, "t.toml")).threads == 2  # the user's wins


# -- a real run, through the CLI, in child processes ------------------------------------------


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory):
    from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf

    from conftest import build_tiny_model, train_tiny_tokenizer

    root = tmp_path_factory.mktemp("bench")
    src = root / "hf"
    build_tiny_model().save_pretrained(src)
    train_tiny_tokenizer().save_pretrained(src)
    export_gguf(src, root / "tiny.gguf", GGUFExportConfig(dtype="f32", verify=False))
    return root, src


def write_target(path, **budget):
    limits = {**TARGET["budget"], **budget}
    lines = ["schema_version = 1", 'name = "tiny-box"', "[device]", 'arch = "x86_64"', "cores = 2", "memory_gb = 4",
             "[runtime]", "threads = 1", "context = 512", 'formats = ["gguf"]', "[budget]"]
    lines += [f"{k} = {v}" for k, v in limits.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


FAST = ["--prompt-lengths", "8", "--new-tokens", "4", "--repeats", "2", "--warmup", "0", "--concurrency", "1",
        "--requests", "2"]


def test_bench_passes_fails_and_plots(tiny_artifacts):
    root, src = tiny_artifacts
    ok = write_target(root / "ok.toml", ttft_ms=60000, decode_tokens_per_s=0.1, p95_latency_ms=60000)
    runner = CliRunner()
    res = runner.invoke(main, ["bench", str(root / "tiny.gguf"), str(src), "--target", str(ok), *FAST, "--json",
                               "--plot", str(root / "b.png")])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["passed"] and len(report["results"]) == 2
    gguf, hf = report["results"]
    # auto: the GGUF file batches the most concurrent clients measured (the target's 2), the HF dir cannot
    assert (gguf["format"], gguf["backend"], hf["backend"]) == ("gguf", "llama.cpp (batched x2)", "torch")
    assert (gguf["parallel"], hf["parallel"]) == (2, 0) and "AVX2" in gguf["llama_cpp_build"]["features"]
    # the target's prompt length (16) and concurrency (2) were added to what was asked
    assert [p["prompt_tokens"] for p in gguf["prompts"]] == [8, 16]
    assert [c["concurrency"] for c in gguf["concurrency"]] == [1, 2]
    p, c = gguf["prompts"][1], gguf["concurrency"][1]
    assert p["runs"] == 2 and 0 < p["ttft_ms_min"] <= p["ttft_ms_p50"] <= p["ttft_ms_max"]
    assert p["decode_tokens_per_s_p50"] > 0 and c["requests"] == 2 and c["request_max_tokens"] == 4
    assert c["latency_ms_p50"] <= c["latency_ms_p95"] <= c["latency_ms_p99"]
    assert gguf["file_size_mb"] == pytest.approx((root / "tiny.gguf").stat().st_size / 2**20)
    assert gguf["peak_rss_mb"] >= gguf["baseline_rss_mb"] > 0 and gguf["threads"] == 1
    assert [v["passed"] for v in gguf["verdicts"]] == [True] * 5
    assert (root / "b.png").stat().st_size > 10_000

    tight = write_target(root / "tight.toml", decode_tokens_per_s=1e9)
    res = runner.invoke(main, ["bench", str(root / "tiny.gguf"), "--target", str(tight), *FAST])
    assert res.exit_code == 1, res.output
    assert "FAIL  decode speed" in res.output and "verdict: FAIL" in res.output
    assert "llama.cpp build: " in res.output and "vs 1" in res.output
    res = runner.invoke(main, ["bench", str(root / "tiny.gguf"), *FAST, "--parallel", "0", "--json"])
    assert res.exit_code == 0, res.output
    (plain,) = json.loads(res.stdout)["results"]
    assert (plain["backend"], plain["parallel"]) == ("llama.cpp", 0)


@pytest.mark.parametrize("args, match", [
    (["--concurrency", "a,b"], "--concurrency takes whole numbers"),
    (["--prompt-lengths", "0"], "prompt_lengths: expected whole numbers >= 1"),
    (["--target", "no-such-device"], "no-such-device"),
    (["--plot", "out.gif"], "--plot writes .png"),
    (["--parallel", "many"], "--parallel takes auto or a whole number"),
])
def test_bench_usage_errors(tiny_artifacts, args, match):
    root, _ = tiny_artifacts
    res = CliRunner().invoke(main, ["bench", str(root / "tiny.gguf"), *args])
    assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output
    assert res.output.count("\n") == 1 and res.output.startswith("error:")


def test_bench_missing_artifact(tmp_path):
    res = CliRunner().invoke(main, ["bench", str(tmp_path / "nope.gguf")])
    assert res.exit_code == 2 and res.output.startswith("error:")


def test_bench_parallel_measures_the_batched_engine(tiny_artifacts):
    root, src = tiny_artifacts
    res = CliRunner().invoke(main, ["bench", str(root / "tiny.gguf"), *FAST[:-4], "--concurrency", "1,4",
                                    "--requests", "8", "--parallel", "4", "--json"])
    assert res.exit_code == 0, res.output
    (result,) = json.loads(res.stdout)["results"]
    assert result["backend"] == "llama.cpp (batched x4)" and result["parallel"] == 4
    levels = result["concurrency"]
    assert [c["concurrency"] for c in levels] == [1, 4] and all(c["parallel"] == 4 for c in levels)
    assert all(c["throughput_tokens_per_s"] > 0 and c["requests"] == 8 for c in levels)
    res = CliRunner().invoke(main, ["bench", str(src), *FAST, "--parallel", "2"])
    assert res.exit_code == 2 and "--parallel batches GGUF files" in res.output
    res = CliRunner().invoke(main, ["bench", str(root / "tiny.gguf"), "--parallel", "2", "--slots", "2"])
    assert res.exit_code == 2 and "not combined with slots" in res.output
