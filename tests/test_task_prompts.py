"""The brief task prompt: what it says, who picks it (auto), and how it travels with a fine-tuned model."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from supertiny.cli import main
from supertiny.errors import TaskError, UserError
from supertiny.stages.runs import model_run
from supertiny.stages.transfer.distill import DistillConfig, distill
from supertiny.tasks import load_task, parse_task, recorded_prompt, task_for

from conftest import write_color_task

BRIEF = 'brief = "Colour of the text."\n'


def _brief_task(tmp_path):
    write_color_task(tmp_path, records=6, dev=2)
    path = tmp_path / "task.toml"
    path.write_text(path.read_text().replace('instruction = "Name the colour."\n',
                                             'instruction = "Name the colour."\n' + BRIEF))
    return path


def test_brief_prompt_is_one_line_and_the_keys_without_examples():
    task = load_task("factory-tickets")
    full, brief = task.messages("cnc-07 down"), task.with_prompt("brief").messages("cnc-07 down")
    assert brief[0] == {"role": "system", "content": "Triage this factory maintenance ticket. Answer with one JSON "
                        "object with the keys asset, category, line_stopped, severity."}
    assert brief[1] == full[-1] and len(brief) == 2
    assert len(full[0]["content"]) > 10 * len(brief[0]["content"])
    data = {"schema_version": 1, "name": "t", "input": "x", "instruction": "Long.", "brief": "Short.",
            "output": {"ok": {"type": "bool"}}, "examples": [{"input": "a", "output": {"ok": True}}]}
    t = parse_task(data, "t.toml")
    assert len(t.messages("b")) == 4 and len(t.with_prompt("brief").messages("b")) == 2
    assert t.to_dict()["brief"] == "Short."


def test_brief_errors_are_one_line():
    data = {"schema_version": 1, "name": "t", "input": "x", "instruction": "Long.", "output": {"ok": {"type": "bool"}}}
    with pytest.raises(TaskError, match="has no brief prompt"):
        parse_task(data, "t.toml").with_prompt("brief")
    with pytest.raises(TaskError, match="brief: expected a non-empty string"):
        parse_task({**data, "brief": " "}, "t.toml")
    with pytest.raises(TaskError, match="unknown prompt 'short'"):
        parse_task(data, "t.toml").with_prompt("short")
    with pytest.raises(UserError, match="unknown prompt"):
        task_for("factory-tickets", prompt="tiny")


def test_auto_picks_full_for_untrained_models_and_brief_for_training(tmp_path):
    assert task_for("factory-tickets").prompt == "full"
    assert task_for("factory-tickets", "default").prompt == "full"
    assert task_for("factory-tickets", "http://127.0.0.1:1/v1").prompt == "full"
    assert task_for("factory-tickets", training=True).prompt == "brief"
    assert task_for("factory-tickets", training=True, prompt="full").prompt == "full"
    write_color_task(tmp_path, records=2, dev=1)  # a task without a brief line trains on its full prompt
    assert task_for(tmp_path / "task.toml", training=True).prompt == "full"


def test_a_fine_tuned_model_records_its_prompt_and_it_travels(tmp_path, make_tiny_dir):
    task = _brief_task(tmp_path)
    student = make_tiny_dir(tied=False, seed=2, name="student")
    cfg = DistillConfig(loss="sft", steps=2, batch_size=2, save_every=0, dev_limit=1, max_length=256)
    m = distill(student, tmp_path / "sft", task, tmp_path / "data.jsonl", cfg)
    assert m.details["task_prompt"] == {"task": "tiny-colors", "prompt": "brief"}
    assert m.settings["prompt"] == "auto"
    assert recorded_prompt(tmp_path / "sft") == {"task": "tiny-colors", "prompt": "brief"}
    assert task_for(task, tmp_path / "sft").prompt == "brief"  # eval/teach of the trained model: its prompt
    assert task_for(task, tmp_path / "sft", prompt="full").prompt == "full"  # unless asked otherwise
    assert task_for("factory-tickets", tmp_path / "sft").prompt == "full"  # trained on another task: no record

    # any later stage made from it (prune, export, ...) carries the record along: every stage opens its manifest
    # run through model_run
    out = tmp_path / "copy"
    with model_run("copy", 1, out, tmp_path / "sft", settings={}, info={}) as run:
        run.dir.mkdir()
        (run.dir / "x.txt").write_text("x")
        copied = run.install(details={"n": 1})
    assert copied.details["task_prompt"] == {"task": "tiny-colors", "prompt": "brief"}
    assert recorded_prompt(out) == {"task": "tiny-colors", "prompt": "brief"}

    # quantize calibrates on task records with the prompt the model was trained with, and passes the record on
    r = CliRunner().invoke(main, ["quantize", str(tmp_path / "sft"), str(tmp_path / "q8"), "--scheme", "w8a8",
                                  "--task", str(task), "--data", str(tmp_path / "data.jsonl"), "--eval-tokens",
                                  "128", "--json"])
    assert r.exit_code == 0, r.output
    q = json.loads(r.stdout[r.stdout.index("{"):])
    assert q["details"]["calibration"]["prompt"] == "brief"
    assert q["details"]["task_prompt"] == {"task": "tiny-colors", "prompt": "brief"}

    # eval --task on it uses the brief prompt and says so; --task-prompt full overrides
    for flag, want in (([], "brief"), (["--task-prompt", "full"], "full")):
        r = CliRunner().invoke(main, ["eval", str(tmp_path / "sft"), "--task", str(task), "--data",
                                      str(tmp_path / "dev.jsonl"), "--max-new-tokens", "4", "--json", *flag])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output[r.output.index("{"):])["prompt"] == want


def test_batched_greedy_replies_equal_one_at_a_time(tmp_path, make_tiny_dir):
    from supertiny.runtime.engines.torch_engine import TorchEngine
    from supertiny.tasks import evaluate_task, read_task_data

    engine = TorchEngine(make_tiny_dir(seed=3), threads=1)
    chats = [[{"role": "user", "content": text}] for text in
             ("red", "the green one, quite bright today", "blue?", "a long text " * 6, "dark")]
    one = [engine.complete(c, max_tokens=12).text for c in chats]
    assert engine.complete_batch(chats, max_tokens=12) == one
    task = _brief_task(tmp_path)
    records = read_task_data(tmp_path / "data.jsonl", load_task(task))
    calls = []

    def many(batch):
        calls.append(len(batch))
        return engine.complete_batch(batch, max_tokens=6)

    a = evaluate_task(lambda m: engine.complete(m, max_tokens=6).text, load_task(task), records)
    b = evaluate_task(None, load_task(task), records, complete_batch=many, batch_size=4)
    assert a.outputs == b.outputs and calls == [4, 2]
