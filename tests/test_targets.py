"""Device target profiles: shipped ones validate, lookup order, field-level errors, budget checks, CLI."""

from __future__ import annotations

import json
import os
import re

import pytest
from click.testing import CliRunner

from supertiny.cli import main
from supertiny.errors import TargetError, UserError
from supertiny.targets import (
    BUDGETS,
    SHIPPED_DIR,
    Target,
    check,
    list_targets,
    load_target,
    parse_target,
    scan_targets,
    target_dirs,
)

SHIPPED = ["factory-pc", "jetson-orin-nano", "laptop", "rpi5"]

BOARD = """\
schema_version = 1
name = "myboard"
description = "test board"

[device]
arch = "arm64"
cores = 4
memory_gb = 4

[runtime]
threads = 4
context = 1024
formats = ["gguf"]

[budget]
ttft_ms = 2000
"""


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No profiles from the real user config or environment leak into the tests."""
    monkeypatch.delenv("SUPERTINY_TARGETS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def valid(**sections) -> dict:
    """A minimal valid profile as a dict, with sections or top-level keys replaced or added."""
    data = {
        "schema_version": 1, "name": "demo",
        "device": {"arch": "x86_64", "cores": 4, "memory_gb": 8},
        "runtime": {"threads": 4, "context": 2048, "formats": ["gguf"]},
        "budget": {"ttft_ms": 1500, "decode_tokens_per_s": 20},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def error_of(data: dict) -> str:
    with pytest.raises(TargetError) as info:
        parse_target(data, "myboard.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("myboard.toml: ")
    return message


# -- shipped profiles --

@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_validate(name):
    t = load_target(name)
    assert isinstance(t, Target) and t.name == name and t.source == SHIPPED_DIR / f"{name}.toml"
    assert t.description and t.budget.limits()
    assert t.runtime.threads <= t.device.cores
    # round trip: to_dict is the schema plus the source
    data = t.to_dict()
    json.dumps(data)
    assert parse_target({k: v for k, v in data.items() if k != "source"}, t.source) == t


def test_shipped_values():
    rpi = load_target("rpi5")
    assert rpi.device.arch == "arm64" and {"neon", "dotprod"} <= set(rpi.device.isa)
    assert rpi.runtime.formats[0] == "gguf" and rpi.runtime.quant_types[:2] == ("Q4_0", "Q4_K_M")
    jetson = load_target("jetson-orin-nano")
    assert (jetson.device.gpu, jetson.runtime.gpu_layers, jetson.runtime.provider) == ("cuda", -1, "cuda")
    pc = load_target("factory-pc")
    assert (pc.device.arch, pc.device.cores, pc.device.memory_gb, pc.device.gpu) == ("x86_64", 4, 8, "none")
    assert load_target("laptop").runtime.threads == 8


def test_list_targets():
    assert [t.name for t in list_targets()] == SHIPPED
    targets, problems = scan_targets()
    assert len(targets) == 4 and problems == []


# -- lookup order and user directories --

def test_user_dir_overrides_and_extends(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "myboard.toml").write_text(BOARD)
    (first / "rpi5.toml").write_text(BOARD.replace('"myboard"', '"rpi5"').replace("cores = 4", "cores = 2"))
    (second / "rpi5.toml").write_text(BOARD.replace('"myboard"', '"rpi5"').replace("cores = 4", "cores = 3"))
    monkeypatch.setenv("SUPERTINY_TARGETS", os.pathsep.join([str(first), str(second)]))
    assert target_dirs()[:2] == [first, second]
    assert load_target("myboard").device.cores == 4
    assert load_target("rpi5").device.cores == 2  # the first directory wins
    names = {t.name: t for t in list_targets()}
    assert sorted(names) == sorted([*SHIPPED, "myboard"])
    assert names["rpi5"].source == first / "rpi5.toml"


def test_xdg_config_dir(tmp_path):
    user = tmp_path / "xdg" / "supertiny" / "targets"
    user.mkdir(parents=True)
    (user / "laptop.toml").write_text(BOARD.replace('"myboard"', '"laptop"'))
    assert load_target("laptop").source == user / "laptop.toml"


def test_invalid_user_file_does_not_break_listing(tmp_path, monkeypatch):
    (tmp_path / "broken.toml").write_text(BOARD.replace("cores = 4", "cores = -4"))
    (tmp_path / "myboard.toml").write_text(BOARD)
    (tmp_path / "rpi5.toml").write_text("not toml = = =")
    monkeypatch.setenv("SUPERTINY_TARGETS", str(tmp_path))
    targets, problems = scan_targets()
    names = [t.name for t in targets]
    assert "myboard" in names and "factory-pc" in names
    assert "broken" not in names and "rpi5" not in names  # an invalid override hides the shipped profile
    messages = {p.path.name: p.message for p in problems}
    assert "device.cores: expected a positive integer, got -4" in messages["broken.toml"]
    assert "not valid TOML" in messages["rpi5.toml"]
    with pytest.raises(TargetError, match="not valid TOML"):
        load_target("rpi5")


def test_missing_env_dir_is_a_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERTINY_TARGETS", str(tmp_path / "nowhere"))
    targets, problems = scan_targets()
    assert len(targets) == 4
    assert len(problems) == 1 and "does not exist" in problems[0].message


def test_name_must_match_stem_in_a_directory(tmp_path, monkeypatch):
    (tmp_path / "other.toml").write_text(BOARD)
    monkeypatch.setenv("SUPERTINY_TARGETS", str(tmp_path))
    with pytest.raises(TargetError, match=r"name: expected 'other' \(the file's name\), got 'myboard'"):
        load_target("other")
    assert load_target(tmp_path / "other.toml").name == "myboard"  # an explicit path may differ


def test_load_by_path(tmp_path):
    path = tmp_path / "myboard.toml"
    path.write_text(BOARD)
    t = load_target(str(path))
    assert t.name == "myboard" and t.budget.limits() == {"ttft_ms": 2000}
    assert t.device.gpu == "none" and t.runtime.provider == "cpu" and t.runtime.gpu_layers == 0
    assert t.budget.prompt_tokens == 256 and t.budget.concurrency == 1 and t.budget.max_tokens == 64


def test_unknown_name_lists_available():
    with pytest.raises(TargetError) as info:
        load_target("nope")
    assert isinstance(info.value, UserError)
    assert "unknown target 'nope'" in str(info.value)
    assert "factory-pc, jetson-orin-nano, laptop, rpi5" in str(info.value)


def test_missing_file():
    with pytest.raises(TargetError, match="no such file"):
        load_target("does/not/exist.toml")


def test_unparseable_toml(tmp_path):
    path = tmp_path / "myboard.toml"
    path.write_text(BOARD + "\n[budget\n")
    with pytest.raises(TargetError) as info:
        load_target(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid TOML: ") and "line" in message and "\n" not in message


# -- field-level errors --

def test_unknown_top_level_key():
    message = error_of(valid(colour="red"))
    assert "top level: unknown key 'colour'" in message and "known: schema_version, name," in message


def test_unknown_budget_key_lists_known():
    message = error_of(valid(budget={"ttft": 900}))
    known = "prompt_tokens, ttft_ms, decode_tokens_per_s, concurrency, max_tokens, p95_latency_ms, peak_rss_mb, " \
            "file_size_mb"
    assert f"budget: unknown key 'ttft' (did you mean 'ttft_ms'? known: {known})" in message


def test_unknown_device_key():
    assert "device: unknown key 'ram_gb'" in error_of(valid(device={"ram_gb": 8}))


def test_wrong_type():
    message = error_of(valid(budget={"ttft_ms": "fast"}))
    assert message == "myboard.toml: budget.ttft_ms: expected a positive number, got 'fast'"
    assert "device.cores: expected a positive integer, got 4.5" in error_of(valid(device={"cores": 4.5}))
    assert "device.cores: expected a positive integer, got True" in error_of(valid(device={"cores": True}))
    assert "device: expected a table, got 'x'" in error_of(valid(device="x"))
    assert "runtime.formats: expected a list of gguf | onnx | hf, got 'gguf'" in error_of(
        valid(runtime={"formats": "gguf"}))


def test_negative_and_zero_numbers():
    assert "budget.peak_rss_mb: expected a positive number, got -1" in error_of(valid(budget={"peak_rss_mb": -1}))
    assert "runtime.threads: expected a positive integer, got 0" in error_of(valid(runtime={"threads": 0}))
    assert "device.gpu_memory_gb: expected a number >= 0, got -2" in error_of(valid(device={"gpu_memory_gb": -2}))
    assert "runtime.gpu_layers: expected an integer >= -1" in error_of(
        valid(device={"gpu": "cuda"}, runtime={"gpu_layers": -2}))
    assert "expected a positive number, got inf" in error_of(valid(budget={"ttft_ms": float("inf")}))


def test_schema_version():
    data = valid()
    del data["schema_version"]
    assert "schema_version: required key is missing" in error_of(data)
    assert "schema_version: expected 1, got 2" in error_of(valid(schema_version=2))


def test_missing_required_keys_all_reported():
    data = valid()
    del data["device"]["cores"]
    del data["runtime"]
    message = error_of(data)
    assert "device.cores: required key is missing" in message and "runtime: required key is missing" in message


def test_bad_arch_format_name():
    assert "device.arch: expected one of x86_64, arm64, got 'riscv64'" in error_of(valid(device={"arch": "riscv64"}))
    message = error_of(valid(runtime={"formats": ["gguf", "tflite"]}))
    assert "runtime.formats: expected a list of gguf | onnx | hf, got 'tflite'" in message
    assert "runtime.formats: expected at least one entry" in error_of(valid(runtime={"formats": []}))
    assert "runtime.formats: expected no repeated entries" in error_of(valid(runtime={"formats": ["gguf", "gguf"]}))
    assert "name: expected a name of a-z" in error_of(valid(name="My Board"))
    assert "runtime.provider: expected one of cpu, cuda, dml, got 'rocm'" in error_of(
        valid(runtime={"provider": "rocm"}))


def test_empty_budget():
    assert "budget: expected at least one limit (ttft_ms, decode_tokens_per_s, p95_latency_ms, peak_rss_mb, " \
           "file_size_mb), got none" in error_of({**valid(), "budget": {}})
    assert "budget: expected at least one limit" in error_of({**valid(), "budget": {"prompt_tokens": 128}})


def test_consistency_rules():
    assert "runtime.provider: 'cuda' needs device.gpu = 'cuda', got 'none'" in error_of(
        valid(runtime={"provider": "cuda"}))
    assert "runtime.gpu_layers: offloading needs a GPU" in error_of(valid(runtime={"gpu_layers": -1}))
    assert "must fit runtime.context = 256" in error_of(valid(runtime={"context": 256}))
    assert "budget.peak_rss_mb: expected at most device.memory_gb = 8 GB" in error_of(
        valid(budget={"peak_rss_mb": 9000}))


def test_targets_are_frozen():
    t = parse_target(valid(), "demo.toml")
    with pytest.raises(AttributeError):
        t.budget.ttft_ms = 1  # type: ignore[misc]
    assert t.runtime.formats == ("gguf",)


# -- check() --

def test_budgets_table():
    assert [b.key for b in BUDGETS] == ["ttft_ms", "decode_tokens_per_s", "p95_latency_ms", "peak_rss_mb",
                                        "file_size_mb"]
    assert {b.key: b.direction for b in BUDGETS}["decode_tokens_per_s"] == "min"
    assert all(b.direction in ("max", "min") and b.unit and b.label for b in BUDGETS)


def test_check_pass_fail_not_measured():
    t = parse_target(valid(budget={"peak_rss_mb": 2048, "prompt_tokens": 128}), "demo.toml")
    verdicts = {v.key: v for v in check(t, {"ttft_ms": 1500.0, "decode_tokens_per_s": 20, "peak_rss_mb": 2049,
                                            "file_size_mb": 10})}
    assert set(verdicts) == {"ttft_ms", "decode_tokens_per_s", "peak_rss_mb"}  # only limits the target sets
    assert verdicts["ttft_ms"].passed is True  # max, equal to the limit
    assert verdicts["decode_tokens_per_s"].passed is True  # min, equal to the limit
    assert verdicts["peak_rss_mb"].passed is False and verdicts["peak_rss_mb"].status == "fail"
    assert "128-token prompt" in verdicts["ttft_ms"].conditions
    slow = {v.key: v for v in check(t, {"ttft_ms": 1500.1, "decode_tokens_per_s": 19.9})}
    assert slow["ttft_ms"].passed is False and slow["decode_tokens_per_s"].passed is False
    fast = {v.key: v for v in check(t, {"ttft_ms": 10, "decode_tokens_per_s": 100})}
    assert fast["ttft_ms"].passed is True and fast["decode_tokens_per_s"].passed is True
    none = fast["peak_rss_mb"]
    assert none.passed is None and none.measured is None and none.status == "not measured"
    assert none.to_dict() == {"key": "peak_rss_mb", "label": "peak resident memory", "limit": 2048,
                              "measured": None, "unit": "MiB", "passed": None, "direction": "max",
                              "conditions": "serving process", "status": "not measured"}


def test_check_rejects_unknown_measurements():
    t = parse_target(valid(), "demo.toml")
    with pytest.raises(TargetError, match=r"unknown measurement 'ttft' \(known: ttft_ms,"):
        check(t, {"ttft": 1})
    with pytest.raises(TargetError, match="expected a finite number, got 'x'"):
        check(t, {"ttft_ms": "x"})


# -- CLI --

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_list():
    result = run("targets", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["NAME", "DEVICE"]
    assert [ln.split()[0] for ln in lines[1:]] == SHIPPED
    assert "ttft<=1500ms" in result.output and "shipped" in result.output
    data = json.loads(run("targets", "list", "--json").output)
    assert [t["name"] for t in data["targets"]] == SHIPPED and data["problems"] == []


def test_cli_list_warns_about_invalid_files(tmp_path, monkeypatch):
    (tmp_path / "broken.toml").write_text("schema_version = 3")
    monkeypatch.setenv("SUPERTINY_TARGETS", str(tmp_path))
    result = run("targets", "list")
    assert result.exit_code == 0
    assert re.search(r"^warning: .*broken\.toml: schema_version: expected 1, got 3", result.stderr, re.M)
    assert "factory-pc" in result.stdout


def test_cli_show():
    result = run("targets", "show", "factory-pc", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["name"] == "factory-pc" and data["budget"]["ttft_ms"] == 1500
    assert data["device"]["isa"][0] == "avx2" and data["runtime"]["formats"] == ["gguf", "onnx"]
    text = run("targets", "show", "rpi5").output
    assert "budget.ttft_ms" in text and "<= 3000 ms" in text and ">= 8 tok/s" in text
    assert "runtime.quant_types" in text and "Q4_0" in text


def test_cli_show_file(tmp_path):
    path = tmp_path / "myboard.toml"
    path.write_text(BOARD)
    result = run("targets", "show", path)
    assert result.exit_code == 0 and "myboard" in result.output and "not set" in result.output


@pytest.mark.parametrize(("args", "pattern"), [
    (["nope"], "unknown target 'nope'; available: factory-pc"),
    (["missing.toml"], "missing.toml: no such file"),
])
def test_cli_show_errors(args, pattern):
    result = run("targets", "show", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0]
