"""A task's answer as a JSON Schema: what constrained decoding holds a model to.

The schema accepts the answers :meth:`~supertiny.tasks.spec.Task.parse` calls
schema-valid, written as one JSON object: every field required, no other key. A field's
``normalize`` widens it the way the parser does: ``upper``/``lower`` make a pattern or
the values case-insensitive. It is narrower than the parser in two ways, both so that a
grammar-held model writes what it was trained to write and finishes within its token
budget: keys come in the task's order (the order answers are trained in), and a value
may have at most :data:`PAD` spaces around it (the parser strips any padding; a grammar
that allowed any would let a small model write spaces until its budget ends).

>>> from supertiny.tasks import load_task
>>> s = task_json_schema(load_task("factory-tickets"))
>>> list(s["properties"]), s["required"] == list(s["properties"]), s["additionalProperties"]
(['asset', 'category', 'line_stopped', 'severity'], True, False)
>>> s["properties"]["asset"]["pattern"], s["properties"]["line_stopped"]["type"]
('^ {0,2}(?i:[A-Z]{2,6}-[0-9]{1,4}) {0,2}$', 'boolean')
>>> s["properties"]["severity"]["pattern"]
'^ {0,2}(?i:critical|high|medium|low) {0,2}$'

An extractive field (``source = "input"``, factory-tickets' ``asset``) is narrowed per record to what the
record's text holds:

>>> task_json_schema(load_task("factory-tickets"), "Press-3 leaks; CNC-07 fed it")["properties"]["asset"]["pattern"]
'^ {0,2}(?i:PRESS\\\\-3|CNC\\\\-07) {0,2}$'
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from supertiny.tasks.fields import OutputField
from supertiny.tasks.spec import Task

PAD = 2  # spaces a normalized value may have around it (the parser strips any: a grammar that allowed
# any would let a small model write spaces until its token budget ends)


def _value_schema(field: OutputField) -> dict[str, Any]:
    """The schema of one (non-null) value: a string, an enum value or a list item."""
    if field.normalize is None:
        out: dict[str, Any] = {"enum": list(field.values)} if field.values else {"type": "string"}
        if field.pattern is not None:  # the parser matches the whole value (re.fullmatch)
            out["pattern"] = f"^(?:{field.pattern})$"
        return out
    body = "|".join(re.escape(v) for v in field.values) if field.values else field.pattern or ".*"
    flags = "?i:" if field.normalize in ("upper", "lower") else "?:"
    return {"type": "string", "pattern": rf"^ {{0,{PAD}}}({flags}{body}) {{0,{PAD}}}$"}


def field_schema(field: OutputField, input_text: str | None = None) -> dict[str, Any]:
    """One field's JSON Schema (a ``description`` where the task gives one); an extractive field
    (``source="input"``) given the record's ``input_text`` allows only the spans found there (all its pattern
    allows when there is none, or only ``null`` when the field is nullable). A list holds each value at most
    once in the parser's eyes; the schema bounds it to as many items as there are values (JSON Schema's
    ``uniqueItems`` is not enforceable token by token)."""
    spans = field.spans(input_text) if field.source == "input" and input_text is not None else []
    if spans:
        field = dataclasses.replace(field, pattern="|".join(re.escape(v) for v in spans))
    elif field.source == "input" and input_text is not None and field.nullable:
        return {"type": "null", **({"description": field.description} if field.description else {})}
    if field.type == "bool":
        out: dict[str, Any] = {"type": "boolean"}
    elif field.type == "number":
        out = {"type": "number"}
    elif field.type == "list":
        out = {"type": "array", "items": _value_schema(field), "maxItems": len(field.values)}
    else:
        out = _value_schema(field)
    if field.nullable:
        out = {"anyOf": [out, {"type": "null"}]}
    if field.description:
        out["description"] = field.description
    return out


def task_json_schema(task: Task, input_text: str | None = None) -> dict[str, Any]:
    """The JSON Schema of ``task``'s answer (an object of its fields, all required, nothing else); with the
    record's ``input_text``, its extractive fields narrowed to the spans of that text (a schema per record)."""
    return {"type": "object", "title": task.name,
            "properties": {f.name: field_schema(f, input_text) for f in task.fields},
            "required": list(task.field_names), "additionalProperties": False}
