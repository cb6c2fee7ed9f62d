"""Recipes: validation with precise messages, overrides, the stage plan, and the shipped recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from supertiny.cli import main
from supertiny.errors import RecipeError
from supertiny.flows.pipeline import plan
from supertiny.flows.recipe import load_recipe, parse_override, shipped_recipes
from supertiny.settings import to_argv
from supertiny.stages.quantize import QuantizeConfig
from supertiny.stages.transfer.distill import DistillConfig
from supertiny.stages.transfer.teach import TeachConfig

BASE = """schema_version = 1
name = "demo"
teacher = "default"
target = "factory-pc"

[task]
name = "factory-tickets"
train = "train.jsonl"
test = "test.jsonl"

[prune]
layers = 4

[distill]
loss = "fkl"
epochs = 0.5
"""


LABEL = {"asset": "CNC-07", "category": "electrical", "severity": "high", "line_stopped": True}


def write(tmp_path: Path, text: str = BASE, data: bool = True) -> Path:
    if data:
        for name in ("train", "test", "dev", "rl"):
            (tmp_path / f"{name}.jsonl").write_text(json.dumps({"input": "x", "label": LABEL}) + "\n")
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_a_valid_recipe_resolves_paths_from_its_folder(tmp_path):
    r = load_recipe(write(tmp_path))
    assert r.name == "demo" and r.teacher == "default" and r.target == "factory-pc"
    assert r.task["train"] == str((tmp_path / "train.jsonl").resolve())
    assert r.stages() == ["prune", "distill", "export"]
    assert r.section("distill") == {"loss": "fkl", "epochs": 0.5}


@pytest.mark.parametrize("edit, message", [
    (("[distill]", "[distill]\nepoch = 2"),
     "r.toml: distill: unknown key 'epoch' (did you mean 'epochs'? known: loss, epochs,"),
    (("[prune]", "[prunning]\nlayers = 2\n[prune]"),
     "r.toml: top level: unknown key 'prunning' (did you mean 'prune'? known:"),
    (("layers = 4", "layers = \"4\""), "r.toml: prune.layers: expected a positive integer, got '4'"),
    (("epochs = 0.5", "epochs = -1"), "r.toml: distill.epochs: expected a positive number, got -1"),
    (("loss = \"fkl\"", "loss = \"kl\""), "r.toml: distill.loss: expected one of sft, fkl, rkl, jsd, got 'kl'"),
    (("schema_version = 1", "schema_version = 2"), "r.toml: schema_version: expected 1, got 2"),
    (("name = \"demo\"", "name = \"Demo Run\""), "r.toml: name: expected a name of a-z"),
    (("layers = 4", "calib_tokens = 64"), "r.toml: prune: nothing to prune: give --layers/--drop-layers"),
    (("[distill]", "[rl]\nsteps = 2\n[distill]"), "r.toml: rl: needs task.rl"),
    (("test = \"test.jsonl\"\n", ""), "r.toml: task.test: required key is missing"),
    (("test = \"test.jsonl\"\n", "test = \"test.jsonl\"\nholdout = \"dev.jsonl\"\n"),
     "r.toml: task.holdout: expected a non-empty list of data files, got 'dev.jsonl'"),
    (("test = \"test.jsonl\"\n", "test = \"test.jsonl\"\nholdout = [\"a/real.jsonl\", \"b/real.jsonl\"]\n"),
     "r.toml: task.holdout: hold-out sets are named by their file's stem: real is given twice"),
    (("[distill]\nloss = \"fkl\"\nepochs = 0.5\n", "[export]\nformats = [\"tflite\"]\n"),
     "r.toml: distill: required key is missing; "
     "export.formats: expected a non-empty list of gguf | onnx without repeats, got ['tflite']"),
])
def test_mistakes_are_named_precisely(tmp_path, edit, message):
    old, new = edit
    assert old in BASE
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, BASE.replace(old, new, 1)))
    assert str(exc.value).startswith(str(tmp_path / "r.toml")) and message.split("r.toml", 1)[1] in str(exc.value)


def test_missing_files_unknown_task_and_target_are_all_listed(tmp_path):
    text = BASE.replace('test = "test.jsonl"', 'test = "test.jsonl"\nholdout = ["real.jsonl"]').replace(
        'teacher = "default"', 'teacher = "nowhere/model.gguf"').replace(
        'target = "factory-pc"', 'target = "toaster"').replace('name = "factory-tickets"', 'name = "no-such-task"')
    with pytest.raises(RecipeError) as exc:
        load_recipe(write(tmp_path, text, data=False))
    msg = str(exc.value)
    assert f"task.train: no such file: {tmp_path / 'train.jsonl'}" in msg
    assert f"task.holdout: no such file: {tmp_path / 'real.jsonl'}" in msg
    assert f"task.test: no such file: {tmp_path / 'test.jsonl'}" in msg
    assert f"teacher: no such file or directory: {tmp_path / 'nowhere' / 'model.gguf'}" in msg
    assert "task.name: unknown task 'no-such-task'" in msg and "target: unknown target 'toaster'" in msg


def test_not_toml_and_a_folder_are_one_line_errors(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("name = [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad.toml: not valid TOML"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="is a directory, expected a recipe .toml file"):
        load_recipe(tmp_path)


def test_overrides_flags_and_set(tmp_path):
    r = load_recipe(write(tmp_path), {"target": "laptop"}, ["distill.epochs=2", "quantize.scheme=w4a16",
                                                           "export.formats=['gguf', 'onnx']"])
    assert r.target == "laptop" and r.section("distill")["epochs"] == 2
    assert r.section("quantize") == {"scheme": "w4a16"} and r.section("export")["formats"] == ("gguf", "onnx")
    assert parse_override("teach.judge=http://x:1/v1") == ("teach", "judge", "http://x:1/v1")
    with pytest.raises(RecipeError, match="expected SECTION.KEY=VALUE"):
        parse_override("epochs=2")
    with pytest.raises(RecipeError, match="distill.epochs: expected a positive number, got 'two'"):
        load_recipe(write(tmp_path), sets=["distill.epochs=two"])


def test_options_follow_the_commands_flags():
    # a recipe table is a Config; the command line the pipeline runs is that Config's flags (defaults left out)
    assert to_argv(DistillConfig(batch_size=8, bf16=True, lr=2e-4)) == ["--lr", "0.0002", "--batch-size", "8", "--bf16"]
    assert to_argv(QuantizeConfig(scheme="w4a16", symmetric=False)) == ["--scheme", "w4a16", "--asymmetric"]
    assert to_argv(TeachConfig(stop_when_perfect=False)) == []


def test_the_plan_wires_each_stage_to_the_one_before(tmp_path):
    text = BASE + '\n[prototype]\nepochs = 1.0\n\n[teach]\nsamples = 2\n\n[quantize]\nscheme = "w4a16"\n' \
        'group = 32\n\n[export]\nformats = ["gguf", "onnx"]\n'
    stages, layout = plan(load_recipe(write(tmp_path, text)), tmp_path / "run")
    names = [s.name for s in stages]
    assert names == ["prototype", "teacher-gguf", "teach", "prune", "distill", "quantize", "export-gguf", "export-onnx",
                     "eval-teacher", "eval-student", "bench"]
    by = {s.name: s for s in stages}
    run = (tmp_path / "run").resolve()
    # the prototype (a HF directory) answers as a Q8_0 GGUF in llama.cpp; it is also what the teacher's score is of
    gguf = str(run / "teacher-gguf" / "teacher.q8_0.gguf")
    assert by["teacher-gguf"].argv == ["export", "gguf", str(run / "prototype"), gguf, "--quant", "Q8_0"]
    assert by["teach"].argv[1] == gguf and by["eval-teacher"].argv[1] == gguf
    assert by["prune"].argv[1:3] == [str(run / "prototype"), str(run / "prune")]
    assert by["distill"].argv[by["distill"].argv.index("--teacher") + 1] == str(run / "prototype")
    assert by["quantize"].argv[1] == str(run / "distill")
    assert by["export-gguf"].argv[-2:] == ["--quant", "carry"] and by["export-onnx"].argv[-1] == "carry"
    assert layout.primary == run / "export-gguf" / "model.gguf"
    assert by["bench"].ok_codes == (0, 1) and by["eval-student"].argv[1] == str(layout.primary)

    # [trim_vocab]: after distillation, before quantization, on the teacher data the student learnt
    stages, _ = plan(load_recipe(write(tmp_path, text + "\n[trim_vocab]\nkeep = 4000\n")), tmp_path / "run")
    by = {s.name: s for s in stages}
    assert [s.name for s in stages][4:7] == ["distill", "trim-vocab", "quantize"]
    assert by["trim-vocab"].argv == ["trim-vocab", str(run / "distill"), str(run / "trim-vocab"), "--task",
                                     "factory-tickets", "--data", str(run / "teach" / "teacher-data.jsonl"),
                                     "--keep", "4000"]
    assert by["quantize"].argv[1] == str(run / "trim-vocab")
    # before_distill: the pruned student is trimmed and KD trains the trimmed one
    stages, _ = plan(load_recipe(write(tmp_path, text + "\n[trim_vocab]\nkeep = 4000\nbefore_distill = true\n")),
                     tmp_path / "run")
    by = {s.name: s for s in stages}
    assert [s.name for s in stages][3:7] == ["prune", "trim-vocab", "distill", "quantize"]
    assert by["trim-vocab"].argv[1:3] == [str(run / "prune"), str(run / "trim-vocab")]
    assert by["distill"].argv[1] == str(run / "trim-vocab") and by["quantize"].argv[1] == str(run / "distill")
    assert "--before-distill" not in by["trim-vocab"].argv

    # [augment]: the train split and its variants, what the prototype learns and the teacher answers
    stages, _ = plan(load_recipe(write(tmp_path, text + "\n[augment]\ncopies = 2\n")), tmp_path / "run")
    by = {s.name: s for s in stages}
    aug = str(run / "augment" / "train.jsonl")
    assert [s.name for s in stages][:2] == ["augment", "prototype"]
    assert by["augment"].argv == ["augment", str(tmp_path / "train.jsonl"), "--out", aug, "--task",
                                  "factory-tickets", "--copies", "2"]
    assert by["prototype"].argv[by["prototype"].argv.index("--data") + 1] == aug
    assert by["teach"].argv[by["teach"].argv.index("--prompts") + 1] == aug
    # prototype = false: the prototype learns the split as written; teach and distill see the variants
    stages, _ = plan(load_recipe(write(tmp_path, text + "\n[augment]\ncopies = 2\nprototype = false\n")),
                     tmp_path / "run")
    by = {s.name: s for s in stages}
    assert "--prototype" not in by["augment"].argv
    assert by["prototype"].argv[by["prototype"].argv.index("--data") + 1] == str(tmp_path / "train.jsonl")
    assert by["teach"].argv[by["teach"].argv.index("--prompts") + 1] == aug
    assert by["distill"].argv[by["distill"].argv.index("--data") + 1] == str(run / "teach" / "teacher-data.jsonl")



def test_without_teach_the_teacher_is_still_scored_as_a_gguf(tmp_path):
    """No [teach] (labelled train prompts): distill and prune read the train split; [eval] teacher_quant exports the
    domain teacher once, and both its scores are of that GGUF; left out, the teacher is scored as it is; with
    [teach] the key may only repeat teach's quant."""
    text = BASE + '\n[prototype]\nepochs = 1.0\n\n[eval]\nteacher_quant = "Q8_0"\nthreads = 2\n'
    stages, layout = plan(load_recipe(write(tmp_path, text)), tmp_path / "run")
    by = {s.name: s for s in stages}
    run, train = (tmp_path / "run").resolve(), str(tmp_path / "train.jsonl")
    gguf = str(run / "teacher-gguf" / "teacher.q8_0.gguf")
    assert [s.name for s in stages][:4] == ["prototype", "teacher-gguf", "prune", "distill"]
    assert by["teacher-gguf"].argv == ["export", "gguf", str(run / "prototype"), gguf, "--quant", "Q8_0"]
    assert by["prune"].argv[by["prune"].argv.index("--calib") + 1] == train
    assert by["distill"].argv[by["distill"].argv.index("--data") + 1] == train
    assert by["distill"].argv[by["distill"].argv.index("--teacher") + 1] == str(run / "prototype")
    assert by["eval-teacher"].argv[1] == gguf and layout.teacher_for_eval == gguf
    assert "--teacher-quant" not in by["eval-teacher"].argv and by["eval-teacher"].argv[-2:] == ["--threads", "2"]
    stages, _ = plan(load_recipe(write(tmp_path, text.replace('teacher_quant = "Q8_0"\n', ""))), tmp_path / "run")
    assert "teacher-gguf" not in [s.name for s in stages]
    assert {s.name: s for s in stages}["eval-teacher"].argv[1] == str(run / "prototype")
    with pytest.raises(RecipeError, match="teacher_quant 'F16' differs from teach's quant 'Q8_0'"):
        load_recipe(write(tmp_path, text.replace('"Q8_0"', '"F16"') + "\n[teach]\nsamples = 1\n"))
    same = load_recipe(write(tmp_path, text + "\n[teach]\nquant = \"Q8_0\"\n"))
    assert same.section("eval")["teacher_quant"] == "Q8_0"

def test_dry_run_prints_the_commands(tmp_path):
    r = CliRunner().invoke(main, ["run", str(write(tmp_path)), "--dry-run", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert " 1. prune         $ supertiny prune default " in r.output and "4. eval-teacher" in r.output
    bad = CliRunner().invoke(main, ["run", str(write(tmp_path, BASE.replace("layers", "layer")))])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "did you mean 'layers'" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_dry_run_names_every_bad_record_of_every_split(tmp_path):
    """A bad label in test or dev fails before any stage runs, not at evaluation after the training: every
    problem of every split, one line each with its file and line; train may be unlabelled."""
    recipe = write(tmp_path, BASE.replace('test = "test.jsonl"', 'test = "test.jsonl"\ndev = "dev.jsonl"\n'
                                          'holdout = ["real.jsonl"]'))
    (tmp_path / "real.jsonl").write_text(json.dumps({"input": "d", "label": {**LABEL, "line_stopped": "yes"}}) + "\n")
    (tmp_path / "train.jsonl").write_text('{"input": "no label: a prompt for teach"}\n')
    (tmp_path / "test.jsonl").write_text("\n".join([
        json.dumps({"input": "ok", "label": LABEL}),
        json.dumps({"input": "a", "label": {**LABEL, "severity": "urgent"}}),
        json.dumps({"input": "b"}),
        "{broken"]) + "\n")
    (tmp_path / "dev.jsonl").write_text(json.dumps({"input": "c", "label": {**LABEL, "colour": "red"}}) + "\n")
    r = CliRunner().invoke(main, ["run", str(recipe), "--dry-run", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.startswith(f"error: {recipe}: 5 problem(s) in the task's data:")
    lines = r.output.strip().splitlines()[1:]
    assert lines[0].startswith(f"{tmp_path / 'dev.jsonl'}:1: label: unknown key 'colour'")
    assert lines[1:4] == [
        f"{tmp_path / 'test.jsonl'}:2: label.severity: expected one of critical, high, medium, low, got 'urgent'",
        f"{tmp_path / 'test.jsonl'}:3: label: required here (evaluation needs the answers)",
        f"{tmp_path / 'test.jsonl'}:4: not valid JSON: Expecting property name enclosed in double quotes "
        "(column 2)"]
    assert lines[4].startswith(f"{tmp_path / 'real.jsonl'}:1: label.line_stopped: expected")  # hold-out sets too


def test_shipped_recipes_validate():
    found = shipped_recipes()
    assert {"quick.recipe", "full.recipe", "laptop.recipe"} <= set(found), found
    for path in found.values():
        r = load_recipe(path)
        assert r.teacher == "default" and Path(r.task["test"]).is_file()
        if r.task["name"] == "factory-tickets":  # text no generator wrote, scored beside the test split
            assert set(r.holdout()) == {"handwritten", "handwritten_dev"}
        json.dumps(r.to_dict())
