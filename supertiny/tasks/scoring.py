"""A task's built-in metric, its data files, and evaluating any model on it.

The metric: per-field exact match (on canonical values, after the field's ``normalize``),
the JSON-valid and schema-valid rates, and ``task_score`` = the mean over fields of the
field accuracy. An output with no JSON object (or no output) is wrong on every field; a
JSON object is scored field by field, a missing or invalid field counting as wrong.

Data files are JSON Lines, one ``{"input": "...", "label": {...}}`` per line; ``label`` is
optional (unlabelled prompts) and blank lines are skipped. Errors name the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError, TaskError
from supertiny.schema import reading, unknown_key
from supertiny.tasks.output import ParsedOutput
from supertiny.tasks.spec import Message, Task

# A task's answer is one JSON object: ~30-60 tokens for factory-tickets; room for more fields. What task
# evaluation generates at most, in a dev evaluation during training and in `supertiny eval --task`.
MAX_ANSWER_TOKENS = 128

Progress = Callable[[int, int], None]  # (records done, records in all)
Complete = Callable[..., str]  # chat messages (and grammar= where held to one) -> the model's greedy reply
_RECORD_KEYS = ("input", "label")


@dataclass(frozen=True)
class TaskRecord:
    """One line of a data file: the input, its canonical label (None: unlabelled), and where it came from."""

    input: str
    label: dict[str, Any] | None
    line: int = 0
    source: str = ""


@dataclass(frozen=True)
class TaskScore:
    """The metric over ``n`` records; rates and accuracies are fractions in [0, 1]."""

    task: str
    n: int
    json_valid: float
    schema_valid: float
    fields: dict[str, float]
    f1: dict[str, float] = field(default_factory=dict)  # list fields: mean per-record F1 of the chosen values

    @property
    def task_score(self) -> float:
        """Mean field accuracy."""
        return sum(self.fields.values()) / len(self.fields)

    def to_dict(self) -> dict[str, Any]:
        out = {"task": self.task, "task_score": self.task_score, "n": self.n, "json_valid": self.json_valid,
               "schema_valid": self.schema_valid, "fields": dict(self.fields)}
        return {**out, "f1": dict(self.f1)} if self.f1 else out


@dataclass(frozen=True)
class TaskEvaluation:
    """What :func:`evaluate_task` returns: the score, and each record's raw output and parse."""

    score: TaskScore
    outputs: list[str | None]
    parsed: list[ParsedOutput]

    def to_dict(self) -> dict[str, Any]:
        return {**self.score.to_dict(), "predictions": [
            {"output": o, **p.to_dict()} for o, p in zip(self.outputs, self.parsed, strict=True)]}


def field_matches(task: Task, parsed: ParsedOutput, label: dict[str, Any]) -> dict[str, bool]:
    """Per field: does the parsed answer equal the (canonical) label? The seam a reward can use."""
    return {f.name: f.name in parsed.values and f.matches(parsed.values[f.name], label[f.name]) for f in task.fields}


def score(task: Task, predictions: Sequence[str | None], labels: Sequence[dict[str, Any]]) -> TaskScore:
    """The task metric of raw model outputs against ground-truth labels.

    Args:
        task: the task whose schema and fields are scored.
        predictions: the model's text per record (None: no output, wrong on every field).
        labels: the answers, as dicts of field values (checked and normalized here).

    Returns:
        A :class:`TaskScore`. Raises :class:`TaskError` for mismatched lengths, no records or a bad label.

    >>> from supertiny.tasks import load_task
    >>> t = load_task("factory-tickets")
    >>> gold = {"asset": "CNC-07", "category": "electrical", "severity": "high", "line_stopped": True}
    >>> s = score(t, [t.format_answer(gold), "no idea"], [gold, gold])
    >>> s.task_score, s.json_valid, s.fields["asset"]
    (0.5, 0.5, 0.5)
    """
    if len(predictions) != len(labels):  # checked before parsing anything
        raise TaskError(f"{task.name}: {len(predictions)} predictions for {len(labels)} labels")
    return score_parsed(task, [task.parse(p) for p in predictions], labels)


def score_parsed(task: Task, parsed: Sequence[ParsedOutput], labels: Sequence[dict[str, Any]]) -> TaskScore:
    """:func:`score` for outputs already parsed with ``task.parse``."""
    if len(parsed) != len(labels):
        raise TaskError(f"{task.name}: {len(parsed)} predictions for {len(labels)} labels")
    if not labels:
        raise TaskError(f"{task.name}: nothing to score (no records)")
    hits = dict.fromkeys(task.field_names, 0)
    lists = [f.name for f in task.fields if f.type == "list"]
    f1 = dict.fromkeys(lists, 0.0)
    for i, (p, raw) in enumerate(zip(parsed, labels, strict=True)):
        label, why = task.check_label(raw, f"labels[{i}]")
        if label is None:
            raise TaskError(f"{task.name}: " + "; ".join(why))
        for name, ok in field_matches(task, p, label).items():
            hits[name] += ok
        for name in lists:
            f1[name] += set_f1(p.values.get(name), label[name])
    n = len(labels)
    return TaskScore(task.name, n, sum(p.json_valid for p in parsed) / n, sum(p.schema_valid for p in parsed) / n,
                     {name: k / n for name, k in hits.items()}, {name: total / n for name, total in f1.items()})


def set_f1(predicted: Sequence[str] | None, label: Sequence[str] | None) -> float:
    """F1 of a predicted set of values against the label's (both empty, or both null: 1; a missing or null
    prediction for a list, or a list for a null label: 0).

    >>> set_f1(["a", "b"], ["b", "c"]), set_f1([], []), set_f1(None, ["a"])
    (0.5, 1.0, 0.0)
    """
    p, g = set(predicted or ()), set(label or ())
    if not p and not g:
        return 1.0 if (predicted is None) == (label is None) else 0.0
    hit = len(p & g)
    return 2 * hit / (len(p) + len(g))


def _record(task: Task, obj: Any, path: Path, number: int) -> TaskRecord:
    """One decoded line as a record, or :class:`InvalidInputError` naming the file and line."""
    where = f"{path}:{number}"
    if not isinstance(obj, dict):
        raise InvalidInputError(f"{where}: expected an object like {{\"input\": ..., \"label\": ...}}, "
                                f"got {type(obj).__name__}")
    for key in obj:
        if key not in _RECORD_KEYS:
            raise InvalidInputError(unknown_key(key, _RECORD_KEYS, where))
    text = obj.get("input")
    if not isinstance(text, str) or not text.strip():
        got = "it is missing" if "input" not in obj else f"got {json.dumps(text)[:40]}"
        raise InvalidInputError(f"{where}: input: expected a non-empty string, {got}")
    label = None
    if "label" in obj:
        label, why = task.check_label(obj["label"])
        if label is None:
            raise InvalidInputError(f"{where}: " + "; ".join(why))
    return TaskRecord(text, label, number, str(path))


def task_data_problems(path: str | os.PathLike[str], task: Task, labelled: bool = False) -> list[str]:
    """Every problem of a data file, one line each (``FILE:LINE: ...``), where :func:`read_task_data` stops at the
    first: what ``supertiny run --dry-run`` reports before any stage runs.

    >>> import tempfile, pathlib
    >>> from supertiny.tasks import load_task
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
    >>> _ = p.write_text('{"input": "a", "label": {"asset": "CNC-07"}}\\nnot json\\n{"input": "b"}\\n')
    >>> [x.split(": ", 1)[1] for x in task_data_problems(p, load_task("factory-tickets"), labelled=True)][1:]
    ['not valid JSON: Expecting value (column 1)', 'label: required here (evaluation needs the answers)']
    """
    path = Path(path)
    try:
        with reading(path, InvalidInputError, directory="a .jsonl file"), path.open(encoding="utf-8-sig") as fh:
            lines = fh.readlines()
    except InvalidInputError as exc:
        return [str(exc)]
    problems = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = _record(task, json.loads(line), path, number)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: not valid JSON: {exc.msg} (column {exc.colno})")
        except InvalidInputError as exc:
            problems.append(str(exc))
        else:
            if labelled and record.label is None:
                problems.append(f"{path}:{number}: label: required here (evaluation needs the answers)")
    if not any(line.strip() for line in lines):
        problems.append(f"{path}: no records (the file is empty); expected one JSON object a line")
    return problems


def read_task_data(path: str | os.PathLike[str], task: Task, labelled: bool = False) -> list[TaskRecord]:
    """The records of a JSON Lines data file, checked against ``task``.

    Args:
        path: the ``.jsonl`` file.
        task: labels must be valid answers of this task (known keys, all fields, allowed values).
        labelled: require a label on every line (evaluation data).

    Returns:
        The records in file order. Raises :class:`InvalidInputError` naming the file and line of the
        first problem: unreadable or empty file, bad JSON, not an object, missing ``input``, bad label.
    """
    path = Path(path)
    # -sig: a byte-order mark some editors write is not data
    with reading(path, InvalidInputError, directory="a .jsonl file"), path.open(encoding="utf-8-sig") as fh:
        lines = fh.readlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{number}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        record = _record(task, obj, path, number)
        if labelled and record.label is None:
            raise InvalidInputError(f"{path}:{number}: label: required here (evaluation needs the answers)")
        records.append(record)
    if not records:
        raise InvalidInputError(f"{path}: no records (the file is empty); expected one JSON object a line")
    return records


def engine_complete(engine: Any, max_tokens: int = 128) -> Complete:
    """A :data:`Complete` over a :class:`supertiny.runtime.engines.base.Engine` (greedy, its chat template;
    ``grammar=`` holds a reply to a grammar)."""
    return lambda messages, **kw: engine.complete(messages, max_tokens=max_tokens, **kw).text


def evaluate_task(complete: Complete, task: Task, records: Sequence[TaskRecord],
                  progress: Progress | None = None,
                  complete_batch: Callable[[list[list[Message]]], list[str]] | None = None,
                  batch_size: int = 1, grammar: Callable[[str], Any] | None = None) -> TaskEvaluation:
    """Run a model on labelled records and score it with the task metric.

    Args:
        complete: chat messages -> reply text (greedy); any backend (see :func:`engine_complete`).
        task: the task (its prompt, parser and metric).
        records: labelled records, e.g. from :func:`read_task_data`.
        progress: called with (records done, records in all).
        complete_batch, batch_size: with both (``batch_size`` > 1), records go ``batch_size`` at a
            time through ``complete_batch`` (several chats -> their replies) instead of ``complete``.
        grammar: a record's input -> the grammar its answer is held to, passed to ``complete`` as
            ``grammar=`` (see :func:`engine_complete`), to ``complete_batch`` as ``grammars=`` (one each).

    Returns:
        A :class:`TaskEvaluation`: the :class:`TaskScore` and each record's output and parse.
    """
    if not records:
        raise TaskError(f"{task.name}: nothing to evaluate (no records)")
    for r in records:
        if r.label is None:
            raise InvalidInputError(f"{r.source or 'records'}:{r.line}: label: required for evaluation")
    outputs, parsed = [], []
    step = batch_size if complete_batch is not None and batch_size > 1 else 1
    for start in range(0, len(records), step):
        chunk = records[start:start + step]
        if step > 1:
            held = {} if grammar is None else {"grammars": [grammar(r.input) for r in chunk]}
            texts = complete_batch([task.messages(r.input) for r in chunk], **held)
        else:
            held = {} if grammar is None else {"grammar": grammar(chunk[0].input)}
            texts = [complete(task.messages(chunk[0].input), **held)]
        outputs += texts
        parsed += [task.parse(t) for t in texts]
        if progress:
            progress(len(outputs), len(records))
    return TaskEvaluation(score_parsed(task, parsed, [r.label for r in records]), outputs, parsed)
