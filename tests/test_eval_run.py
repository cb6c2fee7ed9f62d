"""One evaluation through the library (what ``supertiny eval`` calls): the config's checks,
perplexity, agreement with a teacher, generations, the report."""

from __future__ import annotations

import pytest

from supertiny import evaluate as ev
from supertiny.errors import InvalidInputError, UserError
from supertiny.stages.eval import EvalConfig, evaluate_model


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Alice was beginning to get very tired of sitting by her sister on the bank. " * 8)
    return path


@pytest.mark.parametrize("kw, match", [
    ({"window": 8, "stride": 9}, "stride"),
    ({"window": 1}, "window must be at least 2"),
    ({"max_tokens": 1}, "max_tokens: expected an integer, at least 2, got 1"),
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ({"prompts": "Hi"}, "prompts: expected a list of strings"),
    ({"provider": "tpu"}, "provider: expected one of cpu, cuda, dml"),
    ({"threads": 0}, "threads: expected a positive integer, got 0"),
    ({"dtype": "int8"}, "dtype: expected one of float32, bfloat16, float16, got 'int8'"),
])
def test_config_rejects_bad_settings_before_anything_loads(kw, match):
    with pytest.raises(InvalidInputError, match=match):
        EvalConfig(**kw)


def test_config_defaults_and_normal_forms():
    config = EvalConfig(prompts=["a", "b"], provider="directml")
    assert config.prompts == ("a", "b") and config.engine_options().provider == "dml"  # the engine's alias
    assert EvalConfig(prompts=(), max_new_tokens=0).prompts == ()  # no generations: the budget is moot
    options = EvalConfig(window=64, stride=32, threads=2).engine_options()
    assert (options.n_ctx, options.threads, options.logits) == (64, 2, True)


def test_perplexity_report_matches_the_measure_on_the_model(make_tiny_dir, text_file):
    from supertiny.models import load_model

    path = make_tiny_dir()
    seen = []
    config = EvalConfig(window=64, stride=32, prompts=("Hi",), max_new_tokens=4)
    report = evaluate_model(path, config, progress=lambda done, total: seen.append((done, total)), text=text_file)
    assert report.text == str(text_file) and report.agreement is None and report.teacher is None
    assert report.model["backend"].startswith("torch") and report.model["n_ctx"] == 64
    lm = load_model(path)
    ids = ev.tokenize_text(lm.tokenizer, text_file.read_text())
    want = ev.perplexity(ev.torch_logits(lm.model), ids, 64, 32)
    assert (report.score.tokens, report.score.tokens_scored) == (len(ids), len(ids) - 1)
    assert report.score.perplexity == pytest.approx(want.perplexity, rel=1e-5)
    assert seen and seen[-1][0] == seen[-1][1] == len(list(ev.windows(len(ids), 64, 32)))
    [g] = report.generations
    assert g.prompt == "Hi" and 0 < g.new_tokens <= 4
    d = report.to_dict()
    assert d["generations"][0]["tokens_per_s"] == g.tokens_per_s and d["score"]["window"] == 64


def test_agreement_with_a_teacher(make_tiny_dir):
    # untied: tied random models all predict the token they read, so they would agree
    student, teacher = make_tiny_dir(seed=0, tied=False), make_tiny_dir(seed=1, tied=False)
    config = EvalConfig(max_tokens=120, prompts=(), window=64, stride=32)
    report = evaluate_model(student, config, teacher=teacher)
    a = report.agreement
    assert report.teacher["source"] == str(teacher) and report.generations == []
    assert report.score == a.student and a.student.tokens == 120 and 0 <= a.top1_agreement < 1 and a.kl_mean > 0
    alone = evaluate_model(student, config)
    assert alone.score.perplexity == pytest.approx(a.student.perplexity, rel=1e-6)
    same = evaluate_model(student, config, teacher=student).agreement
    assert same.top1_agreement == 1.0 and same.kl_mean == pytest.approx(0, abs=1e-6)


def test_a_teacher_with_another_vocabulary_is_refused(make_tiny_dir, tiny_tokenizer, tmp_path):
    student, other = make_tiny_dir(seed=0), make_tiny_dir(seed=1, name="other")
    tok = tiny_tokenizer.__class__.from_pretrained(other)
    tok.add_tokens(["<|extra|>"])
    tok.save_pretrained(other)
    with pytest.raises(UserError, match="teacher's tokenizer differs from the student's"):
        evaluate_model(student, EvalConfig(max_tokens=64, prompts=()), teacher=other)


def test_missing_inputs_fail_before_any_engine_opens(make_tiny_dir, monkeypatch):
    import supertiny.stages.eval as run

    def refuse(*a, **kw):
        raise AssertionError("an engine was opened")

    monkeypatch.setattr(run, "open_engine", refuse)
    with pytest.raises(InvalidInputError, match="no such text file"):
        evaluate_model(make_tiny_dir(), EvalConfig(), text="/no/such.txt")
    with pytest.raises(UserError, match="no such file or directory"):
        evaluate_model(make_tiny_dir(), EvalConfig(), teacher="/no/teacher")


TINY_TASK = """
schema_version = 1
name = "tiny"
input = "note"
instruction = "Say the colour."
[output.colour]
type = "enum"
values = ["red", "blue"]
[output.urgent]
type = "bool"
"""


def _task_data(tmp_path, n=3):
    import json

    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"input": f"red {i}", "label": {"colour": "red", "urgent": False}}) + "\n"
                            for i in range(n)))
    return path


@pytest.fixture
def tiny_task(tmp_path):
    path = tmp_path / "tiny.toml"  # short: the tiny model's context is 1024 tokens of a tiny vocabulary
    path.write_text(TINY_TASK)
    return path


def test_task_report_scores_the_models_replies(make_tiny_dir, tmp_path, tiny_task):
    from supertiny.stages.eval import evaluate_task_model

    path, data = make_tiny_dir(), _task_data(tmp_path)
    seen = []
    report = evaluate_task_model(path, tiny_task, data, EvalConfig(prompts=()), max_new_tokens=6, limit=2,
                                 progress=lambda done, total: seen.append((done, total)))
    s = report.evaluation.score
    assert s.n == 2 and seen[-1] == (2, 2) and report.max_new_tokens == 6
    assert set(s.fields) == {"colour", "urgent"}
    # a random tiny model writes no JSON object in 6 tokens: wrong on every field
    assert s.json_valid == 0.0 and s.task_score == 0.0 and len(report.evaluation.outputs) == 2
    d = report.to_dict()
    assert d["task_score"] == 0.0 and d["n"] == 2 and "manifest" not in d and d["model"]["backend"].startswith("torch")


@pytest.mark.parametrize("kw, match", [
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ({"limit": 0}, "limit: expected an integer, at least 1, got 0"),
    ({"task": "no-such-task"}, "no-such-task"),
])
def test_task_report_rejects_bad_settings_before_loading(tmp_path, kw, match):
    from supertiny.stages.eval import evaluate_task_model

    data = tmp_path / "t.jsonl"
    data.write_text('{"input": "x", "label": {"asset": "AB-1", "category": "mechanical", "severity": "low", '
                    '"line_stopped": false}}\n')
    args = {"model": tmp_path / "missing-model", "task": "factory-tickets", "data": data, **kw}
    with pytest.raises(UserError, match=match):
        evaluate_task_model(**args)


def test_task_data_errors_name_the_line_before_the_model_loads(tmp_path):
    from supertiny.stages.eval import evaluate_task_model

    data = tmp_path / "bad.jsonl"
    data.write_text('{"input": "x", "label": {"asset": "AB-1", "category": "mechanical", "severity": "low", '
                    '"line_stopped": false}}\n{"input": 3}\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        evaluate_task_model(tmp_path / "missing-model", "factory-tickets", data)


def test_eval_cli_task_mode(make_tiny_dir, tmp_path, tiny_task):
    import json

    from click.testing import CliRunner

    from supertiny.cli import main

    path, data = make_tiny_dir(), _task_data(tmp_path, n=2)
    result = CliRunner().invoke(main, ["eval", str(path), "--task", str(tiny_task), "--data", str(data),
                                       "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "task score  0.000" in result.output and "colour 0.0%" in result.output and "2 records" in result.output
    result = CliRunner().invoke(main, ["eval", str(path), "--task", str(tiny_task), "--data", str(data),
                                       "--max-new-tokens", "4", "--limit", "1", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["n"] == 1
    for args, message in ((["--task", str(tiny_task)], "--task and --data go together"),
                          (["--limit", "2"], "--limit counts task records"),
                          (["--task", str(tiny_task), "--data", str(data), "--teacher", str(path)], "do not apply")):
        result = CliRunner().invoke(main, ["eval", str(path), *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
