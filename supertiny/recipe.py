"""Recipes: one validated, versioned TOML file describing a whole run, teacher to device bundle.

A recipe names the teacher, the task and its data, the device target, and one table per
stage whose keys are that stage command's options (``[distill] batch_size = 8`` is
``supertiny distill --batch-size 8``), so what a recipe can say is what the commands can do
and nothing is translated twice. Every key is checked (facts as data in :data:`SECTIONS`);
an unknown key is an error with a suggestion, like the target profiles and tasks.

>>> r = parse_recipe({"schema_version": 1, "name": "demo", "teacher": "default", "target": "factory-pc",
...                   "task": {"name": "factory-tickets", "train": "train.jsonl", "test": "test.jsonl"},
...                   "teach": {"samples": 1}, "prune": {"layers": 8}, "distill": {"loss": "fkl"}},
...                  "demo.toml", check_files=False)
>>> r.stages(), r.section("prune")
(['teach', 'prune', 'distill', 'export'], {'layers': 8})
>>> parse_recipe({"schema_version": 1, "name": "x", "teacher": "default", "target": "factory-pc",
...               "task": {"name": "factory-tickets", "train": "a", "test": "b"}, "teach": {"sample": 1},
...               "prune": {"layers": 8}, "distill": {}}, "x.toml", check_files=False)  # doctest: +ELLIPSIS
Traceback (most recent call last):
supertiny.errors.RecipeError: x.toml: teach: unknown key 'sample' (did you mean 'samples'? known: ...)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import schema
from .errors import RecipeError

SCHEMA_VERSION = 1
Check = Callable[[Any], Any]

_pos_int = schema.expect(lambda v: type(v) is int and v > 0, "a positive integer")
_non_neg_int = schema.expect(lambda v: type(v) is int and v >= 0, "an integer >= 0")
_pos = schema.expect(lambda v: schema.is_number(v) and v > 0, "a positive number")
_unit = schema.expect(lambda v: schema.is_number(v) and 0 <= v <= 1, "a number from 0 to 1")
_non_neg = schema.expect(lambda v: schema.is_number(v) and v >= 0, "a number >= 0")
_bool = schema.expect(lambda v: isinstance(v, bool), "true or false")
_text = schema.expect(lambda v: isinstance(v, str) and v != "", "a non-empty string")
_count_or_fraction = schema.expect(lambda v: (type(v) is int and v > 0) or (isinstance(v, str) and v != ""),
                                   "a count (integer) or a fraction as a string such as \"0.75\"")


_int_list = schema.expect(lambda v: isinstance(v, str) and all(x.strip().isdigit() for x in v.split(",")),
                          "comma-separated whole numbers such as \"32,256\"")


def _formats(v: Any) -> tuple[str, ...]:
    if not (isinstance(v, list) and v and all(f in FORMATS for f in v) and len(set(v)) == len(v)):
        raise schema.Bad(f"expected a non-empty list of {' | '.join(FORMATS)} without repeats, got {schema.show(v)}")
    return tuple(v)


FORMATS = ("gguf", "onnx")
LOSSES = ("sft", "fkl", "rkl", "jsd")
# Keys that are booleans on the command line: recipe key -> (flag for true, flag for false or None: leave out).
BOOL_FLAGS = {"bf16": ("--bf16", "--no-bf16"), "symmetric": ("--symmetric", "--asymmetric"),
              "stop_when_perfect": ("--stop-when-perfect", None),
              "greedy_first": ("--greedy-first", "--no-greedy-first"), "batched": ("--batched", None)}

# The stages a recipe configures, in the order they run, and the keys each takes (a command option each,
# except the few the pipeline reads itself: teach.quant, export.*, eval.*, bench.*).
SECTIONS: dict[str, dict[str, Check]] = {
    "prototype": {"epochs": _pos, "steps": _pos_int, "lr": _pos, "batch_size": _pos_int, "bf16": _bool,
                  "dev_limit": _pos_int, "seed": _non_neg_int},
    "teach": {"quant": schema.one_of("Q8_0", "F16", "none"), "samples": _pos_int, "max_new_tokens": _pos_int,
              "temperature": _non_neg, "top_p": _unit, "stop_when_perfect": _bool, "greedy_first": _bool,
              "limit": _pos_int, "concurrency": _pos_int, "threads": _pos_int, "judge": _text, "batched": _bool},
    "prune": {"layers": _pos_int, "drop_layers": _unit, "layer_metric": schema.one_of("block-influence", "loss"),
              "heads": _count_or_fraction, "kv_heads": _count_or_fraction, "mlp": _count_or_fraction,
              "hidden": _count_or_fraction, "calib_tokens": _pos_int, "eval_tokens": _pos_int},
    "distill": {"loss": schema.one_of(*LOSSES), "epochs": _pos, "steps": _pos_int, "lr": _pos,
                "batch_size": _pos_int, "temperature": _pos, "alpha": _unit, "top_k": _pos_int, "bf16": _bool,
                "dev_limit": _pos_int, "seed": _non_neg_int},
    "rl": {"steps": _pos_int, "group": _pos_int, "batch_prompts": _pos_int, "resample": _pos_int, "lr": _pos,
           "kl_coef": _non_neg, "max_new_tokens": _pos_int, "temperature": _pos, "bf16": _bool, "dev_limit": _pos_int},
    "quantize": {"scheme": schema.one_of("w4a16", "w8a8", "fp8"), "method": schema.one_of("rtn", "gptq", "awq"),
                 "group": schema.expect(lambda v: v in (32, 64, 128) and type(v) is int, "32, 64 or 128"),
                 "symmetric": _bool, "head_bits": schema.expect(lambda v: v in (4, 8) and type(v) is int, "4 or 8"),
                 "max_mb": _pos, "calib_tokens": _pos_int, "eval_tokens": _pos_int},
    "export": {"formats": _formats, "gguf_quant": _text, "onnx_quant": _text, "verify_tokens": _pos_int},
    "eval": {"limit": _pos_int, "max_new_tokens": _pos_int, "threads": _pos_int},
    "bench": {"repeats": _pos_int, "warmup": _non_neg_int, "new_tokens": _pos_int, "threads": _pos_int,
              "prompt_lengths": _int_list, "concurrency": _int_list, "requests": _pos_int},
}
REQUIRED_SECTIONS = ("prune", "distill")  # without [teach], distill learns the labelled train split
TASK_KEYS: dict[str, Check] = {"name": _text, "train": _text, "dev": _text, "test": _text, "rl": _text}
TASK_FILES = ("train", "dev", "test", "rl")
_TOP: dict[str, Check] = {"schema_version": schema.version(SCHEMA_VERSION), "name": schema.NAME,
                          "description": schema.TEXT, "teacher": _text, "target": _text, "task": schema.TABLE,
                          **{s: schema.TABLE for s in SECTIONS}}


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``values`` holds the tables present (after overrides); paths are absolute.

    Attributes:
        name, description: what the run is called and is for.
        teacher: ``"default"``, or an absolute path to a HF directory or ``.gguf`` file.
        target: a target name or an absolute path to a profile.
        task: ``{"name", "train", "test", ...}`` with the data files absolute.
        source: the file it was read from.
    """

    name: str
    description: str
    teacher: str
    target: str
    task: dict[str, str]
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: Path = Path("recipe.toml")

    def stages(self) -> list[str]:
        """The configured stages that run, in order (``export`` always does)."""
        return [s for s in SECTIONS if s in self.values and s not in ("eval", "bench")] + \
            (["export"] if "export" not in self.values else [])

    def section(self, name: str) -> dict[str, Any]:
        """A stage's table as given (empty when absent)."""
        return dict(self.values.get(name, {}))

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a TOML document (what the bundle records)."""
        return {"schema_version": SCHEMA_VERSION, "name": self.name, "description": self.description,
                "teacher": self.teacher, "target": self.target, "task": dict(self.task),
                **{k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                   for k, v in self.values.items()}}


def _resolve(base: Path, value: str) -> str:
    return str((base / value).expanduser().resolve())


def parse_recipe(data: Mapping[str, Any], source: str | os.PathLike[str], check_files: bool = True) -> Recipe:
    """Validate a parsed recipe; every problem in one :class:`RecipeError` naming ``source``.

    Relative paths (teacher, target, task and its data) are taken from the recipe file's folder.
    ``check_files``: also require the files to exist and the task and target to load.
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source}: expected a table of keys, got {schema.show(data)}")
    top = schema.check_keys(dict(data), _TOP, {"schema_version", "name", "teacher", "target", "task",
                                               *REQUIRED_SECTIONS}, "", problems)
    task = schema.check_keys(top.get("task", {}), TASK_KEYS, {"name", "train", "test"}, "task", problems)
    values = {s: schema.check_keys(top[s], checks, set(), s, problems) for s, checks in SECTIONS.items() if s in top}
    prune = values.get("prune", {})
    if "prune" in values and not any(k in prune for k in ("layers", "drop_layers", "heads", "kv_heads", "mlp",
                                                          "hidden")):
        problems.append("prune: expected at least one of layers, drop_layers, heads, kv_heads, mlp, hidden")
    if "rl" in values and "rl" not in task:
        problems.append("rl: needs task.rl, the labelled prompts RL samples on")
    schema.raise_problems(problems, source, RecipeError)
    base = Path(source).expanduser().resolve().parent
    for key in TASK_FILES:
        if key in task:
            task[key] = _resolve(base, task[key])
    if task["name"].endswith(".toml") or "/" in task["name"]:
        task["name"] = _resolve(base, task["name"])
    teacher = top["teacher"] if top["teacher"] == "default" else _resolve(base, top["teacher"])
    target = _resolve(base, top["target"]) if schema.is_path(top["target"]) else top["target"]
    recipe = Recipe(name=top["name"], description=top.get("description", ""), teacher=teacher, target=target,
                    task=task, values=values, source=Path(source))
    if check_files:
        check_references(recipe)
    return recipe


def check_references(recipe: Recipe) -> None:
    """Every file the recipe names exists and the task and target load (one error listing them all)."""
    from .targets import load_target
    from .tasks import load_task

    problems = [f"task.{k}: no such file: {recipe.task[k]}" for k in TASK_FILES
                if k in recipe.task and not Path(recipe.task[k]).is_file()]
    if recipe.teacher != "default" and not Path(recipe.teacher).exists():
        problems.append(f"teacher: no such file or directory: {recipe.teacher}")
    for what, load, value in (("task.name", load_task, recipe.task["name"]), ("target", load_target, recipe.target)):
        try:
            load(value)
        except Exception as exc:  # noqa: BLE001 - a TaskError/TargetError: its one line is the problem
            problems.append(f"{what}: {exc}")
    schema.raise_problems(problems, recipe.source, RecipeError)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``SECTION.KEY=VALUE`` (a TOML value; a bare word is a string) as ``(section, key, value)``.

    >>> parse_override("distill.epochs=0.5"), parse_override("export.formats=['gguf','onnx']")
    (('distill', 'epochs', 0.5), ('export', 'formats', ['gguf', 'onnx']))
    """
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise RecipeError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. distill.epochs=0.5")
    try:
        value = schema.tomllib.loads(f"v = {raw.strip()}")["v"]
    except schema.tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def load_recipe(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None,
                sets: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe file.

    Args:
        overrides: top-level values replacing the file's (``teacher``, ``target``), as a user passes them:
            relative to the current folder.
        sets: ``SECTION.KEY=VALUE`` strings (``--set``); a section absent from the file is added.
    """
    p = Path(path).expanduser()
    data = copy.deepcopy(schema.read_toml(p, RecipeError, directory="a recipe .toml file"))
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: expected a table of keys")
    for key, value in (overrides or {}).items():
        if value is not None:
            cwd_path = key in ("teacher", "target") and value != "default" and schema.is_path(value) \
                or (key == "teacher" and Path(value).exists())
            data[key] = str(Path(value).expanduser().resolve()) if cwd_path else value
    for text in sets:
        section, key, value = parse_override(text)
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise RecipeError(f"--set {text!r}: {section} is not a table")
        table[key] = value
    return parse_recipe(data, p)


def shipped_recipes() -> dict[str, Path]:
    """The recipes that ship with the examples, by name (empty when installed without them)."""
    root = Path(__file__).resolve().parent.parent / "examples"
    return {p.stem: p for p in sorted(root.glob("*/*.recipe.toml"))} if root.is_dir() else {}
