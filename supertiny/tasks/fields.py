"""The output fields of a task and how one value is checked against its field.

A field is ``string`` (optionally normalized, then matched against a regex ``pattern``),
``bool`` (JSON ``true``/``false`` only: the string ``"true"`` is a wrong type, so a model
is held to the schema it was shown), ``enum`` (a string from ``values``), ``number`` (a JSON
number, int or float; a prediction within ``tolerance`` of the label is right) or ``list``
(multi-label: a JSON array of strings from ``values``, order and repeats not counted; its
canonical form is the set in ``values`` order, scored by exact set and reported with F1).
``nullable`` lets any field be ``null`` (the input has no such value). ``normalize``
(``upper``, ``lower`` or ``strip``; upper and lower strip too) applies to predictions and
labels alike, so both are compared in the same canonical form.

>>> f = OutputField("asset", "string", pattern="[A-Z]{2,6}-[0-9]{1,4}", normalize="upper")
>>> check_value(f, " cnc-07 ")
('CNC-07', None)
>>> check_value(f, "CNC07")
(None, "expected a string matching '[A-Z]{2,6}-[0-9]{1,4}', got 'CNC07'")
>>> check_value(OutputField("ok", "bool"), "true")
(None, "expected true or false, got 'true'")
>>> check_value(OutputField("tags", "list", values=("a", "b", "c")), ["c", "a", "c"])
(['a', 'c'], None)
>>> check_value(OutputField("order", "string", nullable=True), None)
(None, None)
>>> OutputField("qty", "number", tolerance=0.5).matches(2.4, 2)
True
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

TYPES = ("string", "bool", "enum", "number", "list")
NORMALIZE = ("upper", "lower", "strip")
SOURCES = ("input",)  # where a string's value comes from: "input" = copied from the record's input
_NORMALIZERS = {"upper": lambda s: s.strip().upper(), "lower": lambda s: s.strip().lower(),
                "strip": lambda s: s.strip(), None: lambda s: s}


@dataclass(frozen=True)
class OutputField:
    """One key of the task's JSON output; ``values`` only for ``enum``, ``pattern`` and ``source`` only for
    ``string`` (``source="input"``: the value is a span of the input that matches ``pattern``)."""

    name: str
    type: str
    description: str = ""
    values: tuple[str, ...] = ()
    pattern: str | None = None
    normalize: str | None = None
    source: str | None = None
    nullable: bool = False
    tolerance: float = 0.0  # number: how far a right prediction may be from the label

    def matches(self, predicted: Any, label: Any) -> bool:
        """Whether a canonical prediction is right for a canonical label (a number within ``tolerance``)."""
        if self.type == "number" and predicted is not None and label is not None:
            return abs(predicted - label) <= self.tolerance
        return bool(predicted == label)

    def spans(self, text: str) -> list[str]:
        """The values this field can take from ``text`` (``source="input"``): each span of it that matches
        ``pattern`` and is not part of a longer word (case-insensitively where the field normalizes case),
        normalized, in order of first appearance.

        >>> f = OutputField("asset", "string", pattern="[A-Z]{2,6}-[0-9]{1,4}", normalize="upper", source="input")
        >>> f.spans("Press-3 leaks oil near cnc-07; XCNC-0712345 and PRESS-3 again")
        ['PRESS-3', 'CNC-07']
        """
        assert self.pattern is not None
        flags = re.IGNORECASE if self.normalize in ("upper", "lower") else 0
        found = (m.group(0) for m in re.finditer(rf"(?<!\w)(?:{self.pattern})(?!\w)", text, flags))
        values = (self.normalized(s) for s in found)
        return list(dict.fromkeys(v for v in values if re.fullmatch(self.pattern, v)))

    def normalized(self, text: str) -> str:
        """``text`` in the field's canonical form (what predictions and labels are compared in)."""
        return _NORMALIZERS[self.normalize](text)

    def schema_line(self) -> str:
        """How the field is described to the model: ``- "severity": one of "low", "high". What it is.``"""
        if self.type == "bool":
            kind = "true or false (JSON boolean)"
        elif self.type == "enum":
            kind = "one of " + ", ".join(json.dumps(v) for v in self.values)
        elif self.type == "number":
            kind = "a number (JSON number)"
        elif self.type == "list":
            kind = "a list of any of " + ", ".join(json.dumps(v) for v in self.values) + " (JSON array, [] for none)"
        else:
            case = {"upper": " in upper case", "lower": " in lower case"}.get(self.normalize or "", "")
            kind = f"a string{case}" + (f" matching the regex {self.pattern}" if self.pattern else "")
        text = f"- {json.dumps(self.name)}: {kind}" + (", or null when the text has none." if self.nullable else ".")
        return f"{text} {self.description}" if self.description else text


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value(field: OutputField, value: Any) -> tuple[Any, str | None]:
    """``(canonical value, None)`` when ``value`` is valid for ``field``, else ``(None, why not)``."""
    if value is None and field.nullable:
        return None, None
    if field.type == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return value, None
        return None, f"expected a number, got {_show(value)}"
    if field.type == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, f"expected a list of strings, got {_show(value)}"
        chosen = {field.normalized(v) for v in value}
        if unknown := sorted(chosen - set(field.values)):
            return None, f"expected items from {', '.join(field.values)}, got {_show(unknown[0])}"
        return [v for v in field.values if v in chosen], None
    if field.type == "bool":
        if isinstance(value, bool):
            return value, None
        return None, f"expected true or false, got {_show(value)}"
    if not isinstance(value, str):
        return None, f"expected a string, got {_show(value)}"
    text = field.normalized(value)
    if field.type == "enum" and text not in field.values:
        return None, f"expected one of {', '.join(field.values)}, got {_show(value)}"
    if field.pattern is not None and re.fullmatch(field.pattern, text) is None:
        return None, f"expected a string matching {field.pattern!r}, got {_show(value)}"
    return text, None
