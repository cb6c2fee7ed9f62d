"""The stage registry: every stage declared once; every setting walked from a recipe's TOML through the pipeline's
stage command line and the command's own parsing back to the same Config; one default per setting; the runner's
key and record."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click
import pytest

from supertiny.cli import main
from supertiny.cli.options import config_from
from supertiny.errors import InvalidInputError, RecipeError
from supertiny.flows.pipeline import plan
from supertiny.flows.recipe import EXPORT_STAGES, SECTIONS, parse_recipe
from supertiny.settings import MISSING, Settings, config_fields, example, fields_of, to_argv
from supertiny.stages.registry import STAGE_MODULES, Input, get, stage, stages

# Settings whose example needs another setting to make a valid Config (a Config's check across fields).
WITH = {
    ("export-gguf", "imatrix_tokens"): {"quant": "Q4_0"},
    ("quantize", "granularity"): {"scheme": "fp8"},
}
# The smallest valid Config of each stage that has a required setting or a check across fields.
BASE = {"prune": {"mlp": 0.5}, "quantize": {"scheme": "w4a16"}}
# The recipe table that configures each stage (prototype, teacher-gguf and eval-teacher reuse these stages).
TABLE = {"augment": "augment", "prune": "prune", "distill": "distill", "rl": "rl", "quantize": "quantize",
         "teach": "teach", "eval": "eval", "bench": "bench", "export-gguf": "export", "export-onnx": "export",
         "trim-vocab": "trim_vocab"}
RECIPE = {"schema_version": 1, "name": "walk", "teacher": "default", "target": "factory-pc",
          "task": {"name": "factory-tickets", "train": "train.jsonl", "test": "test.jsonl", "rl": "rl.jsonl"},
          "augment": {}, "teach": {}, "prune": {"mlp": 0.5}, "distill": {}, "rl": {},
          "trim_vocab": {}, "export": {"formats": ["gguf", "onnx"]}, "eval": {}, "bench": {}}
# (no [quantize] but for its own settings: the exports would carry its codes)


def _cases() -> list[tuple[str, str]]:
    return [(name, f.name) for name, s in stages().items() for f in fields_of(s.config)]


def _toml(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _parse(argv: list[str], cls: type) -> Any:
    """The Config a command builds from ``argv`` (click's own parsing of the derived options, then config_from)."""
    group: click.Group = main
    words = list(argv)
    while isinstance(group, click.Group):
        group = group.commands[words.pop(0)]
    ctx = group.make_context(group.name, words)
    return config_from(cls, dict(ctx.params))


def test_every_stage_is_declared_once_with_its_command():
    found = stages()
    assert set(found) == {"augment", "prune", "quantize", "teach", "distill", "rl", "trim-vocab", "export-gguf",
                          "export-onnx", "eval", "bench"}
    assert len(STAGE_MODULES) == len(set(STAGE_MODULES))
    for name, s in found.items():
        assert issubclass(s.config, Settings) and dataclasses.is_dataclass(s.config), name
        group: Any = main
        for word in s.command:  # the command the pipeline prints exists
            group = group.commands[word]
        assert [i.name for i in s.inputs if i.argument], name  # every stage reads a model, an artifact or data
    with pytest.raises(InvalidInputError, match="unknown stage 'nope'; known: "):
        get("nope")
    with pytest.raises(AssertionError, match="declared twice"):
        stage("prune", version=9, config=found["prune"].config, inputs=(Input("m", "m"),), output="dir",
              command=("prune",))(lambda *a: None)


@pytest.mark.parametrize("name, field", _cases())
def test_a_setting_walks_from_recipe_to_command_line_to_config(name, field, tmp_path):
    s = get(name)
    f = next(x for x in fields_of(s.config) if x.name == field)
    value = example(f)
    extra = {**BASE.get(name, {}), **WITH.get((name, field), {})}
    expected = s.config(**{**extra, field: value})
    assert getattr(expected, field) != getattr(s.config(**extra), field), (name, field)  # not the default

    # recipe -> pipeline: the table's key reaches the stage's Config
    table = TABLE[name]
    key = f"{name.split('-')[1]}_{field}" if table == "export" else field
    recipe = json.loads(json.dumps(RECIPE))
    prefix = f"{name.split('-')[1]}_" if table == "export" else ""
    recipe[table] = {**recipe.get(table, {}), **{prefix + k: _toml(v) for k, v in extra.items()}, key: _toml(value)}
    invocations, _ = plan(parse_recipe(recipe, tmp_path / "r.toml", check_files=False), tmp_path / "run")
    inv = next(i for i in invocations if i.stage.name == name and i.name in (name, "eval-student"))
    for k in (field, *extra):
        assert getattr(inv.config, k) == getattr(expected, k), (name, k)

    # pipeline -> the command line it prints and runs -> the command's parsing: the same Config
    assert _parse(inv.argv, s.config) == inv.config

    # and a setting the recipe leaves out is the Config's default, on the command line as in the recipe
    default = s.config(**BASE.get(name, {}))
    assert _parse(s.argv({i.name: "x" for i in s.inputs}, tmp_path / "o", default), s.config) == default


def test_a_setting_has_one_default_and_the_command_sets_none():
    for name, s in stages().items():
        for f in config_fields(s.config):
            if f.meta.role == "internal":
                continue
            command: Any = main
            for word in s.command:
                command = command.commands[word]
            option = next(p for p in command.params if p.name == f.name)
            assert option.default in (None, ()) or option.multiple, (name, f.name)  # the Config fills the rest
            if f.default is not MISSING and f.default is not None and f.base is not bool:
                assert "[default: " in option.help, (name, f.name)  # shown from the field


def test_a_recipe_key_is_checked_by_the_stages_own_check(tmp_path):
    recipe = json.loads(json.dumps(RECIPE))
    recipe["distill"] = {"epochs": -1}
    recipe["export"] = {"formats": ["gguf"], "gguf_dtype": "f8", "verify_tokens": 3}
    with pytest.raises(RecipeError) as exc:
        parse_recipe(recipe, tmp_path / "r.toml", check_files=False)
    msg = str(exc.value)
    assert "distill.epochs: expected a positive number, got -1" in msg
    assert "export.gguf_dtype: unknown dtype 'f8'; choose one of f32, f16, bf16" in msg
    assert "export.verify_tokens: expected an integer, at least 16, got 3" in msg
    # the same check as the command's and the library's
    with pytest.raises(InvalidInputError, match="epochs: expected a positive number, got -1"):
        get("distill").config(epochs=-1)
    assert set(SECTIONS) >= {"prune", "distill", "export"} and set(EXPORT_STAGES.values()) <= set(stages())


def test_to_argv_writes_what_differs_from_the_defaults():
    gguf = get("export-gguf").config
    assert to_argv(gguf()) == [] and to_argv(gguf(quant="Q4_0", verify=False)) == ["--quant", "Q4_0", "--no-verify"]
    onnx = get("export-onnx").config
    # a default resolved on creation (symmetric: by format) is left out where it is the plain Config's, written out
    # where it is not (and then means the same)
    assert to_argv(onnx()) == [] and to_argv(onnx(format="genai")) == ["--format", "genai", "--symmetric"]
    ev = get("eval").config
    assert to_argv(ev(prompts=())) == ["--no-generate"] and to_argv(ev(prompts=("a", "b"))) == [
        "--prompt", "a", "--prompt", "b"]
    assert _parse(["eval", "m", *to_argv(ev(prompts=()))], ev) == ev(prompts=())


def test_the_runner_keys_settings_and_input_content_and_records_a_run(tmp_path, make_tiny_dir):
    from supertiny.flows.runner import RUNS, Invocation, Runner

    model = make_tiny_dir()
    s = get("prune")
    said: list[str] = []
    runner = Runner(tmp_path, isolate=False, say=said.append)
    a = Invocation("a", s, {"model": str(model), "calib": None}, tmp_path / "a",
                   s.config(layers=1, calib_tokens=64, eval_tokens=16))
    same = dataclasses.replace(a, name="b", out=tmp_path / "b", config=dataclasses.replace(a.config, overwrite=True))
    other = dataclasses.replace(a, config=dataclasses.replace(a.config, layers=2))
    key = runner.key(a)
    assert key == runner.key(same) != runner.key(other)  # run flags are not what a run makes; settings are
    first = runner.run(a)
    assert first.status == "ran" and (tmp_path / "a" / "supertiny.json").is_file()
    record = json.loads((tmp_path / RUNS / "a.json").read_text())
    assert record["key"] == key and record["stage"] == "prune" and record["command"].startswith("supertiny prune ")
    assert runner.run(a).status == "skipped" and said[-1] == f"[a] done earlier ({first.seconds:.0f} s): skipped"
    # the model's content is part of the key: a changed weight file makes it another run
    (model / "config.json").write_text((model / "config.json").read_text() + " ")
    assert runner.key(a) != key and not runner.done("a", a.out, runner.key(a))
