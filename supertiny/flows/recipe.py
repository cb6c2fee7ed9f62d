"""Recipes: one validated, versioned TOML file describing a whole run, teacher to device bundle.

A recipe names the teacher, the task and its data, the device target, and one table per
stage whose keys are that stage command's options (``[distill] batch_size = 8`` is
``supertiny distill --batch-size 8``): a table's keys and their checks are the stage's Config
settings (:mod:`supertiny.settings`), so what a recipe can say is what the commands can do,
with the same defaults and the same checks, and nothing is translated twice (:data:`SECTIONS`).
An unknown key is an error with a suggestion, like the target profiles and tasks.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supertiny import schema
from supertiny.errors import RecipeError
from supertiny.settings import TEXT, build, recipe_checks
from supertiny.stages.registry import get
from supertiny.targets import load_target
from supertiny.tasks import load_task, task_data_problems

Check = schema.Check

SCHEMA_VERSION = 1
EXPORT_FORMATS = ("gguf", "onnx")
TEACH_QUANTS = ("Q8_0", "F16", "none")  # the domain teacher as a GGUF for fast generation (none: as it is)
EXPORT_STAGES = {"gguf": "export-gguf", "onnx": "export-onnx"}
EXPORT_SHARED = ("verify", "verify_tokens", "threads")  # settings both exporters mean alike: a bare key sets both


def _formats(v: Any) -> tuple[str, ...]:
    if not (isinstance(v, list) and v and all(f in EXPORT_FORMATS for f in v) and len(set(v)) == len(v)):
        raise schema.Bad(f"expected a non-empty list of {' | '.join(EXPORT_FORMATS)} without repeats, got "
                         f"{schema.show(v)}")
    return tuple(v)


@dataclass(frozen=True)
class Section:
    """A recipe table: the stage whose Config its keys are (``None``: the pipeline's own keys only), the values the
    pipeline fixes (not keys), and the pipeline's own keys with their checks and defaults."""

    stage: str | None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    own: Mapping[str, tuple[Check, Any]] = field(default_factory=dict)

    def checks(self) -> dict[str, Check]:
        """Every key this table takes and its check."""
        checks = {} if self.stage is None else recipe_checks(get(self.stage).config, tuple(self.fixed))
        return {**{k: c for k, (c, _) in self.own.items()}, **checks}


# The stages a recipe configures, in the order they run; each table's keys are its stage's settings
# (a command's options: `[distill] batch_size = 8` is `supertiny distill --batch-size 8`), checked by
# the stage's Config. [export] takes `formats` and each exporter's settings prefixed by its format
# (`gguf_quant`), the settings both exporters mean alike also bare (EXPORT_SHARED: `verify_tokens`).
SECTIONS: dict[str, Section] = {
    # prototype: the prototype learns the variants too; false: it learns the train split as written and only the
    # teacher data (teach's prompts) and distillation see the variants
    "augment": Section("augment", own={"prototype": (schema.BOOL, True)}),
    "prototype": Section("distill", fixed={"loss": "sft"}),
    "teach": Section("teach", own={"quant": (schema.one_of(*TEACH_QUANTS), "Q8_0")}),
    "prune": Section("prune"),
    "distill": Section("distill"),
    "rl": Section("rl"),
    # before_distill: trim the pruned student, so KD trains a 5x smaller output layer (the teacher is seen through
    # the student's vocabulary); else the trained student is trimmed, after distill/rl
    "trim_vocab": Section("trim-vocab", own={"before_distill": (schema.BOOL, False)}),
    "quantize": Section("quantize"),
    "export": Section(None, own={"formats": (_formats, ("gguf",))}),
    # teacher_quant: without [teach], the domain teacher is scored as a GGUF of this type (what teach would answer
    # with: llama.cpp, the engine the bundle runs in); none or left out: as it is. With [teach] it is scored as what
    # teach ran, and this key, when given, must say the same
    "eval": Section("eval", own={"teacher_quant": (schema.one_of(*TEACH_QUANTS), None)}),
    "bench": Section("bench"),
}
REQUIRED_SECTIONS = ("prune", "distill")  # without [teach], distill learns the labelled train split


def _holdout(v: Any) -> tuple[str, ...]:
    """``[task] holdout``: labelled data files scored beside ``test``, each named by its file's stem."""
    if not (isinstance(v, list) and v and all(isinstance(f, str) and f for f in v)):
        raise schema.Bad(f"expected a non-empty list of data files, got {schema.show(v)}")
    stems = [holdout_name(f) for f in v]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise schema.Bad(f"hold-out sets are named by their file's stem: {', '.join(repeated)} is given twice")
    return tuple(v)


def holdout_name(path: str) -> str:
    """A hold-out set's name: its file's stem (``data/handwritten.jsonl`` -> ``handwritten``)."""
    return Path(path).name.split(".")[0]


TASK_KEYS: dict[str, Check] = {"name": TEXT, "train": TEXT, "dev": TEXT, "test": TEXT, "rl": TEXT,
                               "holdout": _holdout}
TASK_FILES = ("train", "dev", "test", "rl")
LABELLED_FILES = ("dev", "test", "rl", "holdout")  # evaluation and reward read the labels; teach's need none
MAX_DATA_PROBLEMS = 50
_TOP: dict[str, Check] = {"schema_version": schema.version(SCHEMA_VERSION), "name": schema.NAME,
                          "description": schema.TEXT, "teacher": TEXT, "target": TEXT, "task": schema.TABLE,
                          **{s: schema.TABLE for s in SECTIONS}}


def export_checks() -> dict[str, Check]:
    """[export]'s keys: ``formats``, each exporter's settings as ``FORMAT_KEY``, and the shared ones bare."""
    per = {fmt: recipe_checks(get(stage).config) for fmt, stage in EXPORT_STAGES.items()}
    checks = {k: per["gguf"][k] for k in EXPORT_SHARED}
    for fmt, table in per.items():
        checks.update({f"{fmt}_{k}": c for k, c in table.items()})
    return {**SECTIONS["export"].checks(), **checks}


def export_values(values: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """The settings of the ``fmt`` exporter in an [export] table (its prefixed keys win over the shared ones)."""
    out = {k: v for k, v in values.items() if k in EXPORT_SHARED}
    out.update({k[len(fmt) + 1:]: v for k, v in values.items() if k.startswith(f"{fmt}_")})
    return out


def section_checks(name: str) -> dict[str, Check]:
    """The keys the recipe table ``name`` takes, each with its check."""
    return export_checks() if name == "export" else SECTIONS[name].checks()


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``values`` holds the tables present (after overrides); paths are absolute.

    Attributes:
        name, description: what the run is called and is for.
        teacher: ``"default"``, or an absolute path to a HF directory or ``.gguf`` file.
        target: a target name or an absolute path to a profile.
        task: ``{"name", "train", "test", ...}`` with the data files absolute; ``holdout`` (when given) is a tuple
            of files.
        source: the file it was read from.
    """

    name: str
    description: str
    teacher: str
    target: str
    task: dict[str, Any]
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: Path = Path("recipe.toml")

    def stages(self) -> list[str]:
        """The configured stages that run, in order (``export`` always does)."""
        return [s for s in SECTIONS if s in self.values and s not in ("eval", "bench")] + \
            (["export"] if "export" not in self.values else [])

    def section(self, name: str) -> dict[str, Any]:
        """A stage's table as given (empty when absent)."""
        return dict(self.values.get(name, {}))

    def holdout(self) -> dict[str, str]:
        """The hold-out sets by name (``[task] holdout``; none when not given)."""
        return {holdout_name(f): f for f in self.task.get("holdout", ())}

    def data_files(self) -> list[tuple[str, str]]:
        """Every data file of ``[task]`` as ``(key, path)``, the hold-out sets last."""
        return [(k, self.task[k]) for k in TASK_FILES if k in self.task] + \
            [("holdout", f) for f in self.task.get("holdout", ())]

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a TOML document (what the bundle records)."""
        task = {k: list(v) if isinstance(v, tuple) else v for k, v in self.task.items()}
        return {"schema_version": SCHEMA_VERSION, "name": self.name, "description": self.description,
                "teacher": self.teacher, "target": self.target, "task": task,
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
    values = {s: schema.check_keys(top[s], section_checks(s), set(), s, problems) for s in SECTIONS if s in top}
    if not problems:
        check_settings(values, problems)
    teach_quant = values.get("teach", {}).get("quant", SECTIONS["teach"].own["quant"][1])
    eval_quant = values.get("eval", {}).get("teacher_quant")
    if "teach" in values and eval_quant not in (None, teach_quant):
        problems.append(f"eval: teacher_quant {eval_quant!r} differs from teach's quant {teach_quant!r}: the teacher "
                        "is scored as the GGUF teach runs; leave teacher_quant out")
    if "rl" in values and "rl" not in task:
        problems.append("rl: needs task.rl, the labelled prompts RL samples on")
    schema.raise_problems(problems, source, RecipeError)
    base = Path(source).expanduser().resolve().parent
    for key in TASK_FILES:
        if key in task:
            task[key] = _resolve(base, task[key])
    if "holdout" in task:
        task["holdout"] = tuple(_resolve(base, f) for f in task["holdout"])
    if task["name"].endswith(".toml") or "/" in task["name"]:
        task["name"] = _resolve(base, task["name"])
    teacher = top["teacher"] if top["teacher"] == "default" else _resolve(base, top["teacher"])
    target = _resolve(base, top["target"]) if schema.is_path(top["target"]) else top["target"]
    recipe = Recipe(name=top["name"], description=top.get("description", ""), teacher=teacher, target=target,
                    task=task, values=values, source=Path(source))
    if check_files:
        check_references(recipe)
    return recipe


def check_settings(values: Mapping[str, Mapping[str, Any]], problems: list[str]) -> None:
    """Each table's settings together, as its stage's Config checks them (a single value is already checked)."""
    for name, table in values.items():
        section = SECTIONS[name]
        if name == "export":
            for fmt in table.get("formats", section.own["formats"][1]):
                build(get(EXPORT_STAGES[fmt]).config, export_values(table, fmt), f"export ({fmt})", problems)
        elif section.stage is not None:
            mine = {k: v for k, v in table.items() if k not in section.own}
            build(get(section.stage).config, {**mine, **section.fixed}, name, problems)


def check_references(recipe: Recipe) -> None:
    """Every file the recipe names exists and the task and target load (one error listing them all)."""
    problems = [f"task.{k}: no such file: {f}" for k, f in recipe.data_files() if not Path(f).is_file()]
    if recipe.teacher != "default" and not Path(recipe.teacher).exists():
        problems.append(f"teacher: no such file or directory: {recipe.teacher}")
    task = None
    for what, load, value in (("task.name", load_task, recipe.task["name"]), ("target", load_target, recipe.target)):
        try:
            loaded = load(value)
        except Exception as exc:  # noqa: BLE001 - a TaskError/TargetError: its one line is the problem
            problems.append(f"{what}: {exc}")
        else:
            task = loaded if what == "task.name" else task
    schema.raise_problems(problems, recipe.source, RecipeError)
    # every record of every split against the task, before any stage runs: all problems, one line each
    data = [line for k, f in recipe.data_files()
            for line in task_data_problems(f, task, labelled=k in LABELLED_FILES)]
    if data:
        shown = data[:MAX_DATA_PROBLEMS] + ([f"... and {len(data) - MAX_DATA_PROBLEMS} more"]
                                           if len(data) > MAX_DATA_PROBLEMS else [])
        raise RecipeError(f"{recipe.source}: {len(data)} problem(s) in the task's data:\n" + "\n".join(shown))


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
    root = Path(__file__).resolve().parents[2] / "examples"
    return {p.stem: p for p in sorted(root.glob("*/*.recipe.toml"))} if root.is_dir() else {}
