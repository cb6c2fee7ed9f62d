"""Budget-driven search: the Pareto front and the recommendation on hand-checked points, the grid and its
errors, and one real run on a tiny random teacher that a second run takes entirely from the cache."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from supertiny.cli import main
from supertiny.errors import InvalidInputError
from supertiny.flows.search_grid import (
    QUANTS,
    Candidate,
    SearchConfig,
    dominates,
    expand,
    overshoot,
    pareto_front,
    quant_for,
    recommend,
)

from conftest import write_color_task

QLS = [("quality", "max"), ("ttft_ms", "min"), ("size_mb", "min")]


def pt(q, t, s, meets=True, verdicts=()):
    return {"quality": q, "ttft_ms": t, "size_mb": s, "meets": meets, "verdicts": list(verdicts)}


# -- Pareto front -----------------------------------------------------------------------------


def test_front_two_objectives_hand_checked():
    # (quality, latency): b is dominated by a (worse on both); c trades quality for speed; d by c
    points = [{"q": 0.9, "t": 100}, {"q": 0.8, "t": 120}, {"q": 0.7, "t": 50}, {"q": 0.6, "t": 60}]
    assert pareto_front(points, [("q", "max"), ("t", "min")]) == [0, 2]


def test_front_three_objectives_keeps_a_point_best_on_one_axis_only():
    points = [pt(0.9, 100, 50), pt(0.9, 100, 60), pt(0.5, 20, 80), pt(0.5, 30, 80), pt(0.1, 200, 5)]
    # 1 loses to 0 on size alone; 3 loses to 2 on latency alone; 4 is the smallest, so it stays
    assert pareto_front(points, QLS) == [0, 2, 4]
    assert dominates(points[0], points[1], QLS) and not dominates(points[1], points[0], QLS)
    assert not dominates(points[0], points[2], QLS) and not dominates(points[2], points[0], QLS)


def test_front_ties_single_point_missing_values_and_bad_direction():
    same = [pt(0.5, 10, 10), pt(0.5, 10, 10)]
    assert pareto_front(same, QLS) == [0, 1]  # equal points do not dominate each other
    assert not dominates(same[0], same[1], QLS)
    assert pareto_front([pt(0.0, 1, 1)], QLS) == [0]
    assert pareto_front([], QLS) == []
    # a failed point (no figures) is neither on the front nor able to push others off it
    failed = {"quality": None, "ttft_ms": 1, "size_mb": 1}
    assert pareto_front([failed, pt(0.1, 99, 99)], QLS) == [1]
    with pytest.raises(InvalidInputError, match="'max' or 'min'"):
        pareto_front(same, [("quality", "up")])


# -- recommendation ---------------------------------------------------------------------------


def test_recommend_highest_quality_meeting_budgets_then_size_then_speed():
    points = [pt(0.95, 10, 10, meets=False), pt(0.8, 50, 30), pt(0.8, 40, 20), pt(0.8, 30, 20), pt(0.6, 1, 1)]
    # the best (0) misses a budget; of the 0.8s, 2 and 3 are smaller than 1, and 3 is faster than 2
    assert recommend(points) == (3, None)
    # decode speed as the latency objective: higher is better
    fast = [{**pt(0.8, 0, 20), "decode_tokens_per_s": 30}, {**pt(0.8, 0, 20), "decode_tokens_per_s": 40}]
    assert recommend(fast, ("decode_tokens_per_s", "max")) == (1, None)


def test_recommend_names_the_closest_when_none_meets():
    v_far = [{"passed": False, "measured": 3000, "limit": 1000, "direction": "max"}]  # 2.0 over
    v_near = [{"passed": False, "measured": 1100, "limit": 1000, "direction": "max"},  # 0.1 over
              {"passed": False, "measured": 16, "limit": 20, "direction": "min"},  # 0.25 over
              {"passed": True, "measured": 1, "limit": 5, "direction": "max"}]
    assert overshoot(v_far) == pytest.approx(2.0) and overshoot(v_near) == pytest.approx(0.35)
    points = [pt(0.9, 5, 5, False, v_far), pt(0.5, 5, 5, False, v_near), {"quality": None, "meets": False}]
    assert recommend(points) == (None, 1)
    # a point that fails the task is not "close": the closest keeps at least half the best quality
    useless = [pt(0.9, 5, 5, False, v_far), pt(0.0, 5, 5, False, v_near)]
    assert recommend(useless) == (None, 0) and recommend(useless, useful_share=0.0) == (None, 1)
    assert recommend([{"quality": None, "ttft_ms": None, "size_mb": None}]) == (None, None)


# -- grid and validation ----------------------------------------------------------------------


def test_expand_levels_students_and_skipped_pairs():
    cfg = SearchConfig(layers=(16, 30), mlp=(1.0, 0.5), quants=("q4_0", "w4a16", "int4"), formats=("gguf", "onnx"),
                       students=("/s/kd16",), distill_data="teach.jsonl", kd_steps=5)
    assert cfg.quants == ("Q4_0", "w4a16", "int4")  # llama.cpp names in any case
    cands, notes = expand(cfg, 30, {"/s/kd16": ("kd16", 16)})
    pairs = [("Q4_0", "gguf"), ("w4a16", "gguf"), ("w4a16", "onnx"), ("int4", "onnx")]
    assert sorted(notes) == ["skipped Q4_0 x onnx: Q4_0 has no onnx form (it goes to gguf)",
                             "skipped int4 x gguf: int4 has no gguf form (it goes to onnx)"]
    levels = list(dict.fromkeys(c.level for c in cands))
    # deepest first; the unpruned teacher needs no transfer, every pruned level gets one; students kept as they are
    assert levels == [("teacher", 30, 1.0, False), ("teacher", 30, 0.5, True), ("teacher", 16, 1.0, True),
                      ("teacher", 16, 0.5, True), ("/s/kd16", 16, 1.0, False)]
    assert len(cands) == 5 * len(pairs)
    assert [c.name for c in cands[:4]] == ["L30-Q4_0-gguf", "L30-w4a16-gguf", "L30-w4a16-onnx", "L30-int4-onnx"]
    assert cands[4].name == "L30-m0.5-kd-Q4_0-gguf" and cands[-1].name == "kd16-int4-onnx"
    assert Candidate("teacher", 12, 1.0, False, "none", "onnx").name == "L12-none-onnx"
    assert QUANTS["w4a16"].formats == {"gguf": "carry", "onnx": "carry"}


@pytest.mark.parametrize("kw, match", [
    ({"quants": ("Q9_9",)}, "unknown quantization 'Q9_9'; known: Q8_0"),
    ({"quants": ()}, "--quant is empty"),
    ({"formats": ()}, "--formats is empty"),
    ({"formats": ("tflite",)}, "unknown format 'tflite'"),
    ({"layers": ()}, "nothing to try"),
    ({"layers": (0,)}, "decoder layers to keep"),
    ({"mlp": (1.5,)}, "fractions of the MLP width"),
    ({"kd_steps": 5}, "--kd-steps N"),
    ({"distill_data": "x.jsonl"}, "--kd-steps N"),
    ({"latency": "p99"}, "unknown latency measure"),
    ({"task_limit": 0}, "--task-limit must be >= 1"),
    ({"vocabs": ("big",)}, "--vocab takes full or a count"),
    ({"vocabs": ("0",)}, "needs --distill-data"),
    ({"distill_data": "x.jsonl", "vocabs": ("full",)}, "read by --kd-steps or a trimmed --vocab"),
    ({"vocabs": ()}, "--vocab is empty"),
])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(InvalidInputError, match=match):
        SearchConfig(**{"layers": (2,), **kw})


def test_distill_data_alone_feeds_a_trimmed_vocabulary():
    """Without --kd-steps, --distill-data is the data whose tokens trim-vocab keeps (--vocab 0: only those)."""
    cfg = SearchConfig(students=("s",), distill_data="teach.jsonl", vocabs=("full", "0"))
    assert cfg.kd_steps == 0 and [c.name for c in expand(cfg, 30, {"s": ("s", 12)})[0]] == \
        ["s-Q8_0-gguf", "s-Q4_0-gguf", "s-v0-Q8_0-gguf", "s-v0-Q4_0-gguf"]


def test_expand_rejects_deeper_than_the_teacher_and_an_empty_grid():
    with pytest.raises(InvalidInputError, match="--layers 40: the teacher has 30 layers"):
        expand(SearchConfig(layers=(16, 40)), 30)
    with pytest.raises(InvalidInputError, match="no quantization fits a chosen format"):
        expand(SearchConfig(layers=(16,), quants=("int4",), formats=("gguf",)), 30)
    assert quant_for("none").formats == {"gguf": None, "onnx": "none"}


# -- a real run -------------------------------------------------------------------------------


def _target(path):
    lines = ["schema_version = 1", 'name = "tiny-box"', "[device]", 'arch = "x86_64"', "cores = 2", "memory_gb = 4",
             "[runtime]", "threads = 1", "context = 512", 'formats = ["gguf"]', "[budget]", "prompt_tokens = 16",
             "ttft_ms = 60000", "decode_tokens_per_s = 0.1", "concurrency = 2", "max_tokens = 4",
             "p95_latency_ms = 60000", "peak_rss_mb = 4000", "file_size_mb = 0.15"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_search(make_tiny_dir, tmp_path):
    write_color_task(tmp_path, 6, 2)
    teacher = make_tiny_dir(tied=False, num_hidden_layers=4)
    base = ["search", "--teacher", str(teacher), "--task", str(tmp_path / "task.toml"), "--task-data",
            str(tmp_path / "data.jsonl"), "--task-limit", "2", "--target", str(_target(tmp_path / "t.toml")),
            "--bench-new-tokens", "4", "--agreement-tokens", "64", "--work", str(tmp_path / "work")]
    return tmp_path, base


def test_search_runs_measures_chooses_and_reuses_its_cache(tiny_search):
    tmp_path, base = tiny_search
    args = [*base, "--layers", "4,2", "--quant", "Q8_0,Q4_0,int8", "--json", "--plot", str(tmp_path / "s.png")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ran"] == {"prune": 1, "distill": 0, "trim": 0, "quantize": 0, "export": 4, "measure": 4, "bench": 0}
    assert report["notes"] == ["skipped int8 x gguf: int8 has no gguf form (it goes to onnx)"]
    points = {p["name"]: p for p in report["points"]}
    assert list(points) == ["L4-Q8_0-gguf", "L4-Q4_0-gguf", "L2-Q8_0-gguf", "L2-Q4_0-gguf"]
    for p in points.values():
        assert "error" not in p, p
        assert p["size_mb"] == pytest.approx((tmp_path / "work" / "artifacts" / p["artifact"].split("/")[-1])
                                             .stat().st_size / 2**20)
        assert p["ttft_ms"] > 0 and p["decode_tokens_per_s"] > 0 and p["p95_latency_ms"] > 0
        assert p["quality"] == 0.0 and 0 <= p["top1_agreement"] <= 1  # a random model writes no JSON
        # the budgets are loose but for the size: only files under 0.15 MiB meet them
        assert p["meets"] == (p["size_mb"] <= 0.15)
        assert [v["key"] for v in p["verdicts"] if v["passed"] is False] == ([] if p["meets"] else ["file_size_mb"])
    # every quality is 0, so the front is the (latency, size) front of the four: recomputed independently
    expect = [n for n, p in points.items()
              if not any(q["ttft_ms"] <= p["ttft_ms"] and q["size_mb"] <= p["size_mb"]
                         and (q["ttft_ms"], q["size_mb"]) != (p["ttft_ms"], p["size_mb"]) for q in points.values())]
    assert report["front"] == expect and [n for n, p in points.items() if p["on_front"]] == expect
    meeting = [p for p in points.values() if p["meets"]]
    best = min(meeting, key=lambda p: (p["size_mb"], p["ttft_ms"]))
    assert report["recommended"] == best["name"] and report["closest"] is None
    benchmarks = [p for p in (tmp_path / "work" / "measures").glob("*-bench-*.json")
                  if not p.name.endswith(".supertiny.json")]
    assert len(benchmarks) == 4  # one benchmark per candidate
    assert (tmp_path / "s.png").stat().st_size > 10_000
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*") if p.is_file()
              and p.name not in ("search.json", "hashes.json")}

    # again, as text: nothing is made or measured, nothing is rewritten, the same choice
    res = CliRunner().invoke(main, [*base, "--layers", "4,2", "--quant", "Q8_0,Q4_0,int8"])
    assert res.exit_code == 0, res.output
    assert "ran         nothing (all cached)" in res.output and "measured before (cached)" in res.output
    assert f"recommended {report['recommended']}: quality 0.000" in res.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    rows = [line for line in res.stdout.splitlines() if "-gguf " in line]
    # --rebench measures the timings again and keeps the quality figures
    res = CliRunner().invoke(main, [*base, "--layers", "4,2", "--quant", "Q8_0,Q4_0", "--rebench", "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["ran"] == {"prune": 0, "distill": 0, "trim": 0, "quantize": 0, "export": 0, "measure": 0, "bench": 4}
    assert [(p["name"], p["quality"], p["top1_agreement"]) for p in again["points"]] == \
        [(n, p["quality"], p["top1_agreement"]) for n, p in points.items()]
    assert len(rows) == 4 and all(("*" in r.split()[0]) == (r.split()[1] in expect) for r in rows
                                  if r.split()[0] == "*") and sum(r.startswith("*") for r in rows) == len(expect)

    # a hold-out set: only its scores are measured (the rest is cached), a column of the table
    (tmp_path / "real.jsonl").write_text("\n".join((tmp_path / "data.jsonl").read_text().splitlines()[:3]) + "\n")
    res = CliRunner().invoke(main, [*base, "--layers", "4,2", "--quant", "Q8_0,Q4_0", "--holdout",
                                    str(tmp_path / "real.jsonl")])
    assert res.exit_code == 0, res.output
    assert "ran         measure 4;" in res.output and "task score on the hold-out set real" in res.output
    head = next(line for line in res.stdout.splitlines() if "CANDIDATE" in line).split()
    assert head[head.index("QUALITY") + 1] == "REAL"
    report = json.loads((tmp_path / "work" / "search.json").read_text())
    assert [set(p["holdout"]) for p in report["points"]] == [{"real"}] * 4
    scored = json.loads(next(p for p in (tmp_path / "work" / "measures").glob("L2-Q4_0-gguf*-holdout-real-*.json")
                             if not p.name.endswith(".supertiny.json")).read_text())
    assert scored["n"] == 3 and report["points"][-1]["holdout"]["real"] == scored["task_score"]


def test_a_vocabulary_axis_trims_each_level_once(tiny_search):
    """--vocab full,100: each level as it is and trimmed to the tokenizer's 100 most frequent merges (plus bytes and
    specials); the trimmed candidate is smaller, its agreement with the (untrimmed) teacher skipped, not failed."""
    tmp_path, base = tiny_search
    res = CliRunner().invoke(main, [*base, "--layers", "2", "--quant", "Q8_0", "--vocab", "full,100", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ran"]["trim"] == 1 and report["ran"]["prune"] == 1 and report["ran"]["measure"] == 2
    full, trimmed = report["points"]
    assert (full["name"], trimmed["name"]) == ("L2-Q8_0-gguf", "L2-v100-Q8_0-gguf") and trimmed["vocab"] == "100"
    assert "error" not in trimmed and trimmed["size_mb"] < full["size_mb"]
    assert trimmed["top1_agreement"] is None and full["top1_agreement"] is not None
    made = json.loads(next((tmp_path / "work" / "models").glob("trim-v100-*/supertiny.json")).read_text())
    assert made["details"]["vocab"]["before"] == 400 and made["details"]["vocab"]["after"] < 400


def test_search_usage_errors_stop_before_any_work(tiny_search):
    tmp_path, base = tiny_search
    for extra, message in ((["--layers", "9"], "--layers 9: the teacher has 4 layers"),
                           (["--layers", "2", "--quant", "Q9"], "unknown quantization 'Q9'"),
                           (["--layers", ""], "--layers is empty"),
                           (["--layers", "a"], "--layers takes whole numbers"),
                           (["--layers", "2", "--target", "no-such-device"], "no-such-device"),
                           (["--layers", "2", "--plot", "x.gif"], "--plot writes .png"),
                           (["--layers", "2", "--holdout", str(tmp_path / "none.jsonl")], "none.jsonl"),
                           (["--layers", "2", "--holdout", str(tmp_path / "data.jsonl"), "--holdout",
                             str(tmp_path / "data.jsonl")], "--holdout: two sets named data")):
        res = CliRunner().invoke(main, [*base, *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "work" / "measures").exists() and not (tmp_path / "work" / "models").exists()
