"""Reading a model's answer: the first JSON object in its text, then each field checked.

Models wrap JSON in code fences, put a sentence before or after it, or stop half-way.
:func:`extract_json` takes the first ``{`` at which a complete, strictly valid JSON object
starts (``json.JSONDecoder.raw_decode``), so fences and prose around the object do not
matter. It does not repair anything: a trailing comma, single quotes, ``True`` or a
truncated object is not JSON, and the answer counts as JSON-invalid. Repairing would
credit a model for output that a program consuming it would reject.

>>> extract_json('Sure! ```json\\n{"a": 1, "b": [2]}\\n``` Hope that helps.')
{'a': 1, 'b': [2]}
>>> extract_json('{"a": 1,}') is None
True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from supertiny.tasks.fields import OutputField, check_value

_DECODER = json.JSONDecoder()


def extract_json(text: str | None) -> dict[str, Any] | None:
    """The first complete JSON object in ``text``, or None when there is none."""
    if not text:
        return None
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):  # not JSON here, or nested deeper than Python recurses
            obj = None
        if isinstance(obj, dict):
            return obj
        start = text.find("{", start + 1)
    return None


@dataclass(frozen=True)
class ParsedOutput:
    """A model's answer checked against a task's fields.

    ``values`` holds the canonical value of every valid field; ``problems`` says why each
    other field is wrong (missing, wrong type, not an allowed value); ``extra`` lists keys
    the schema does not have. ``json_valid``: a JSON object was found at all.
    """

    json_valid: bool
    values: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()

    @property
    def schema_valid(self) -> bool:
        """A JSON object with every field valid and no other key."""
        return self.json_valid and not self.problems and not self.extra

    @property
    def answer(self) -> dict[str, Any] | None:
        """The canonical answer (field order of the task) when schema-valid, else None."""
        return dict(self.values) if self.schema_valid else None

    def to_dict(self) -> dict[str, Any]:
        return {"json_valid": self.json_valid, "schema_valid": self.schema_valid, "values": dict(self.values),
                "problems": dict(self.problems), "extra": list(self.extra)}


def parse_output(fields: Sequence[OutputField], text: str | None) -> ParsedOutput:
    """Extract the first JSON object from ``text`` and check it field by field."""
    obj = extract_json(text)
    if obj is None:
        why = "no output" if not text else "no JSON object in the output"
        return ParsedOutput(False, problems={f.name: why for f in fields})
    values, problems = {}, {}
    for f in fields:
        if f.name not in obj:
            problems[f.name] = "missing"
            continue
        value, why = check_value(f, obj[f.name])
        if why is None:
            values[f.name] = value
        else:
            problems[f.name] = why
    names = {f.name for f in fields}
    return ParsedOutput(True, values, problems, tuple(k for k in obj if k not in names))
