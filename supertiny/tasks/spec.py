"""Task files: validation, lookup by name or path, and the chat prompt of a task.

A task is a small TOML file (schema version 1)::

    schema_version = 1
    name = "my-task"                 # a-z, 0-9, '.', '_', '-'
    description = "one line"         # optional
    input = "ticket"                 # what the input is called in the prompt
    instruction = "What to do, with the definitions the model needs."
    brief = "One line: the prompt of a model fine-tuned on the task."   # optional

    [output.asset]                   # one table per JSON key, in the order shown to the model
    type = "string"                  # string | bool | enum
    pattern = "[A-Z]{2,6}-[0-9]{1,4}"  # string only: the whole (normalized) value must match
    normalize = "upper"              # string or enum: upper | lower | strip
    description = "..."              # optional, shown to the model

    [output.severity]
    type = "enum"
    values = ["low", "high"]

    [[examples]]                     # optional few-shot examples, checked against the schema
    input = "..."
    output = { asset = "CNC-07", severity = "high" }

A model fine-tuned on the task does not need the long instruction: with ``brief`` set, the
**brief prompt** (the brief line and the schema, no few-shot examples) is what training
stages teach and what every later stage uses for that model (:mod:`supertiny.tasks.prompts`),
which makes an example several times shorter to train on and to serve.

Every key is validated and unknown keys are rejected with a suggestion; all problems of a
file are reported in one :class:`~supertiny.errors.TaskError` line that starts with the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny import schema
from supertiny.errors import TaskError
from supertiny.tasks.fields import NORMALIZE, SOURCES, TYPES, OutputField, check_value
from supertiny.tasks.output import ParsedOutput, parse_output

SCHEMA_VERSION = 1
PROMPTS = ("full", "brief")
SHIPPED_DIR = Path(__file__).resolve().parent
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
Message = dict[str, str]


@dataclass(frozen=True)
class TaskExample:
    """A few-shot example: an input and its (canonical) answer."""

    input: str
    output: dict[str, Any]


@dataclass(frozen=True)
class Task:
    """A validated structured-output task; ``source`` is the file it came from."""

    name: str
    description: str
    input: str
    instruction: str
    fields: tuple[OutputField, ...]
    examples: tuple[TaskExample, ...]
    source: Path
    brief: str = ""
    prompt: str = "full"  # which system prompt messages() uses: "full" or "brief"

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def with_prompt(self, prompt: str) -> Task:
        """The same task with the ``"full"`` or ``"brief"`` prompt; ``"brief"`` needs a ``brief`` line.

        >>> load_task("factory-tickets").with_prompt("brief").prompt
        'brief'
        """
        if prompt not in PROMPTS:
            raise TaskError(f"unknown prompt {prompt!r}; expected one of: {', '.join(PROMPTS)}")
        if prompt == "brief" and not self.brief:
            raise TaskError(f"{self.source}: task {self.name!r} has no brief prompt; add a one-line brief = \"...\" "
                            "or use the full prompt")
        return dataclasses.replace(self, prompt=prompt)

    def system_prompt(self) -> str:
        """The instruction, then the exact JSON schema with every allowed value; or, brief, one line and the keys.

        >>> load_task("factory-tickets").with_prompt("brief").system_prompt()
        'Triage this factory maintenance ticket. Answer with one JSON object with the keys asset, category, \
line_stopped, severity.'
        """
        if self.prompt == "brief":
            return f"{self.brief} Answer with one JSON object with the keys {', '.join(self.field_names)}."
        keys = "\n".join(f.schema_line() for f in self.fields)
        return (f"{self.instruction.strip()}\n\nAnswer with one JSON object and nothing else, with exactly "
                f"these keys:\n{keys}")

    def user_prompt(self, input_text: str) -> str:
        """The input as the user turn: ``'Ticket:\\n<text>'``."""
        return f"{self.input[:1].upper()}{self.input[1:]}:\n{input_text}"

    def messages(self, input_text: str) -> list[Message]:
        """Chat messages for one input: system (instruction and schema), examples as turns, then the input.

        >>> t = load_task("factory-tickets")
        >>> [m["role"] for m in t.messages("CNC-07 down, no power")]
        ['system', 'user']
        """
        out = [{"role": "system", "content": self.system_prompt()}]
        for ex in self.examples if self.prompt == "full" else ():
            out += [{"role": "user", "content": self.user_prompt(ex.input)},
                    {"role": "assistant", "content": self.format_answer(ex.output)}]
        return out + [{"role": "user", "content": self.user_prompt(input_text)}]

    def format_answer(self, answer: Mapping[str, Any]) -> str:
        """The answer as the model should write it: one line of JSON, keys in field order.

        >>> load_task("factory-tickets").format_answer(
        ...     {"line_stopped": True, "asset": "CNC-07", "category": "electrical", "severity": "high"})
        '{"asset": "CNC-07", "category": "electrical", "line_stopped": true, "severity": "high"}'
        """
        return json.dumps({n: answer[n] for n in self.field_names}, ensure_ascii=False)

    def parse(self, output_text: str | None) -> ParsedOutput:
        """The model's answer checked field by field (see :mod:`supertiny.tasks.output`).

        >>> p = load_task("factory-tickets").parse('```json\\n{"asset": "cnc-07", "category": "wiring"}\\n```')
        >>> p.json_valid, p.schema_valid, p.values, p.problems["line_stopped"]
        (True, False, {'asset': 'CNC-07'}, 'missing')
        """
        return parse_output(self.fields, output_text)

    def check_label(self, label: Any, where: str = "label") -> tuple[dict[str, Any] | None, list[str]]:
        """A ground-truth answer in canonical form, or None and what is wrong with it (unknown keys
        with a suggestion, missing keys, bad values), each problem starting with ``where``."""
        if not isinstance(label, dict):
            return None, [f"{where}: expected an object with keys {', '.join(self.field_names)}, "
                          f"got {schema.show(label)}"]
        problems = [schema.unknown_key(key, self.field_names, where) for key in label if key not in self.field_names]
        values = {}
        for f in self.fields:
            if f.name not in label:
                problems.append(f"{where}.{f.name}: required key is missing")
                continue
            value, why = check_value(f, label[f.name])
            if why:
                problems.append(f"{where}.{f.name}: {why}")
            values[f.name] = value
        return (None, problems) if problems else (values, [])

    def to_dict(self) -> dict[str, Any]:
        """The task as plain data (the TOML schema), plus ``source``."""
        out = {f.name: {"type": f.type, "description": f.description, "values": list(f.values),
                        "pattern": f.pattern, "normalize": f.normalize, "source": f.source,
                        "nullable": f.nullable or None, "tolerance": f.tolerance or None} for f in self.fields}
        return {"schema_version": SCHEMA_VERSION, "name": self.name, "description": self.description,
                "input": self.input, "instruction": self.instruction, **({"brief": self.brief} if self.brief else {}),
                "output": {k: {a: b for a, b in v.items() if b not in (None, "", [])} for k, v in out.items()},
                "examples": [{"input": e.input, "output": e.output} for e in self.examples],
                "source": str(self.source)}


# -- validation: one check per key (see supertiny.schema) --

def _regex(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise schema.Bad(f"expected a regular expression (a non-empty string), got {schema.show(v)}")
    try:
        re.compile(v)
    except re.error as exc:
        raise schema.Bad(f"expected a valid regular expression, got {schema.show(v)} ({exc})") from None
    return v


def _values(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s.strip() for s in v):
        raise schema.Bad(f"expected a non-empty list of non-empty strings, got {schema.show(v)}")
    if len(set(v)) != len(v):
        raise schema.Bad(f"expected no repeated values, got {schema.show(v)}")
    return tuple(v)


_non_empty = schema.expect(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
_TOP: dict[str, Callable[[Any], Any]] = {
    "schema_version": schema.version(SCHEMA_VERSION), "name": schema.NAME,
    "description": schema.TEXT, "input": _non_empty, "instruction": _non_empty, "brief": _non_empty,
    "output": schema.expect(lambda v: isinstance(v, dict) and v != {}, "a table with at least one field"),
    "examples": schema.expect(lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v),
                    "a list of tables ([[examples]])"),
}
_FIELD: dict[str, Callable[[Any], Any]] = {
    "type": schema.one_of(*TYPES), "description": schema.TEXT, "values": _values, "pattern": _regex,
    "normalize": schema.one_of(*NORMALIZE), "source": schema.one_of(*SOURCES), "nullable": schema.BOOL,
    "tolerance": schema.expect(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                               "a number >= 0"),
}
_ONLY_FOR = {"values": ("enum", "list"), "pattern": ("string",), "normalize": ("string", "enum", "list"),
             "source": ("string",), "tolerance": ("number",)}
_EXAMPLE: dict[str, Callable[[Any], Any]] = {"input": _non_empty, "output": schema.TABLE}


def _output_field(name: str, spec: Any, problems: list[str]) -> OutputField | None:
    where = f"output.{name}"
    if _KEY.fullmatch(name) is None:
        problems.append(f"{where}: expected a field name of letters, digits and '_' (not starting with a digit)")
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected a table with a type, got {schema.show(spec)}")
        return None
    n = len(problems)
    got = schema.check_keys(spec, _FIELD, {"type"}, where, problems)
    kind = got.get("type")
    if kind in ("enum", "list") and "values" not in spec:
        problems.append(f"{where}.values: {'an enum' if kind == 'enum' else 'a list'} needs its allowed values, "
                        f"e.g. values = [\"a\", \"b\"]")
    if kind == "string" and got.get("source") == "input" and "pattern" not in spec:
        problems.append(f"{where}.source: a value taken from the input needs the pattern that finds it there")
    for key, types in _ONLY_FOR.items():
        if kind and key in spec and kind not in types:
            problems.append(f"{where}.{key}: only {' or '.join(types)} fields take {key}, this one is {kind}")
    if len(problems) > n:
        return None
    f = OutputField(name, kind, got.get("description", ""), got.get("values", ()), got.get("pattern"),
                    got.get("normalize"), got.get("source"), got.get("nullable", False), got.get("tolerance", 0.0))
    # a value that normalizing changes could never be matched: the schema would be unsatisfiable
    if changed := [v for v in f.values if f.normalized(v) != v]:
        problems.append(f"{where}.values: {changed[0]!r} is not in its normalized form "
                        f"({f.normalize}: {f.normalized(changed[0])!r}), so no answer could match it")
        return None
    return f


def parse_task(data: Mapping[str, Any], source: str | os.PathLike[str]) -> Task:
    """Validate a task given as a dict (parsed TOML) and build a :class:`Task`.

    Raises :class:`TaskError` listing every problem, in one line that starts with ``source``.

    >>> parse_task({"schema_version": 1, "name": "t", "input": "text", "instruction": "Classify.",
    ...             "output": {"label": {"type": "enum", "valus": ["a"]}}}, "t.toml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    supertiny.errors.TaskError: t.toml: output.label: unknown key 'valus' (did you mean 'values'? ...); ...
    """
    if not isinstance(data, Mapping):
        raise TaskError(f"{source}: expected a table of keys, got {schema.show(data)}")
    problems: list[str] = []
    required = {"schema_version", "name", "input", "instruction", "output"}
    top = schema.check_keys(dict(data), _TOP, required, "", problems)
    fields = [_output_field(name, spec, problems) for name, spec in top.get("output", {}).items()]
    examples = []
    if all(fields) and "output" in top:
        task = Task(top.get("name", ""), "", "", "", tuple(fields), (), Path(source))
        for i, ex in enumerate(top.get("examples", [])):
            got = schema.check_keys(ex, _EXAMPLE, {"input", "output"}, f"examples[{i}]", problems)
            if "output" in got:
                answer, why = task.check_label(got["output"], f"examples[{i}].output")
                problems += why
                if answer is not None and "input" in got:
                    examples.append(TaskExample(got["input"], answer))
    schema.raise_problems(problems, source, TaskError)
    return Task(name=top["name"], description=top.get("description", ""), input=top["input"],
                instruction=top["instruction"], fields=tuple(fields), examples=tuple(examples), source=Path(source),
                brief=top.get("brief", "").strip())


def _read(path: Path) -> Task:
    return parse_task(schema.read_toml(path, TaskError, directory="a task .toml file"), path)


def list_tasks() -> list[str]:
    """The names of the shipped tasks (``supertiny/tasks/*.toml``).

    >>> "factory-tickets" in list_tasks()
    True
    """
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))


def load_task(name_or_path: str | os.PathLike[str]) -> Task:
    """A shipped task by name (``'factory-tickets'``) or a user's task file by path.

    Anything ending in ``.toml`` or containing a path separator is a path. Raises
    :class:`TaskError` for an unknown name (listing the shipped ones) or a bad file.

    >>> load_task("factory-tickets").field_names
    ('asset', 'category', 'line_stopped', 'severity')
    """
    text = os.fspath(name_or_path)
    if schema.is_path(name_or_path):
        return _read(Path(text))
    path = SHIPPED_DIR / f"{text}.toml"
    if not path.is_file():
        raise TaskError(f"unknown task {text!r}; shipped: {', '.join(list_tasks()) or 'none'} "
                        "(or pass a path to a .toml file)")
    task = _read(path)
    schema.check_file_name(path, task.name, TaskError)
    return task
