"""Label-preserving augmentation of task data: more ways of writing the same records.

A generator (or a small set of real records) writes its inputs in a narrow style; a model
trained on them learns that style, and the cues it happens to carry, instead of the task.
:func:`augment` writes ``copies`` variants of each record, each by a few of these **operations**
(at least one; chosen and seeded per record and copy, so a variant does not depend on the others):

- ``spans``: every span of the input that an extractive field (``source = "input"``) could take
  (its ``pattern``) is rewritten into another string of the pattern: letters to other letters
  (one more or fewer now and then), digits to other digits, each character's case kept; one span
  is rewritten alike wherever it occurs, and the **label follows its span**. A model can then
  no longer learn the task from the tags' vocabulary (factory-tickets: a ``HYD-`` prefix
  standing for "hydraulic"), and copies tags it has never seen;
- ``case``: the whole input in lower case, upper case or with its first letter capitalized
  (an extractive label follows its span);
- ``typos``: a few words (4+ letters, outside the spans) with two letters swapped, one dropped
  or one doubled;
- ``abbrev``: common words in their shorthand (``please`` -> ``pls``, ``with`` -> ``w/``);
- ``punct``: sentence ends turned into commas or dashes, commas dropped;
- ``reorder``: the sentences in another order (not a default: where order carries meaning, e.g.
  "stopped at 2pm. running again.", it does not preserve the label).

Only the input changes; the labels of other fields are kept, and every new label is checked
against the task (a variant that fails, or that equals its record, is dropped and counted).
Imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

OPERATIONS = ("spans", "case", "typos", "abbrev", "punct", "reorder")
DEFAULT_OPERATIONS = ("spans", "case", "typos", "abbrev", "punct")
# How likely each operation is applied to a variant (``spans`` always: it is what a variant is for).
CHANCE = {"spans": 1.0, "case": 0.3, "typos": 0.5, "abbrev": 0.5, "punct": 0.4, "reorder": 0.5}
ABBREVIATIONS = {
    "please": "pls", "with": "w/", "without": "w/o", "because": "bc", "about": "abt", "minutes": "mins",
    "hours": "hrs", "approximately": "approx", "thanks": "thx", "and": "&", "before": "b4", "message": "msg",
    "number": "no.", "maintenance": "maint", "temperature": "temp", "information": "info", "tomorrow": "tmrw",
    "you": "u", "are": "r", "right now": "rn", "as soon as possible": "asap", "between": "btwn",
}
_WORD = re.compile(r"[A-Za-z]{4,}")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9])\.(\s+)(?=[A-Za-z])")


@dataclass(frozen=True)
class Variant:
    """One augmented record: ``input``, ``label`` (None for an unlabelled record) and the operations applied."""

    input: str
    label: dict[str, Any] | None
    operations: tuple[str, ...]


def _rng(seed: int, index: int, copy: int) -> random.Random:
    digest = hashlib.sha256(f"augment:{seed}:{index}:{copy}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _letters(rng: random.Random, run: str) -> str:
    """Other letters for ``run``, one more or fewer now and then, each position's case kept (the last's for a
    new one)."""
    n = max(1, len(run) + rng.choice((-1, 0, 0, 0, 1)))
    cases = [c.isupper() for c in run] + [run[-1].isupper()] * max(0, n - len(run))
    new = [rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n)]
    return "".join(c.upper() if up else c for c, up in zip(new, cases, strict=False))


def _digits(rng: random.Random, run: str) -> str:
    n = max(1, len(run) + rng.choice((-1, 0, 0, 0, 1)))
    return "".join(rng.choice("0123456789") for _ in range(n))


def rewrite_span(rng: random.Random, span: str, fits: Any, tries: int = 20) -> str | None:
    """Another string of ``span``'s shape that ``fits`` (the field's pattern, normalized); None if none was found
    in ``tries``."""
    parts = re.findall(r"[A-Za-z]+|[0-9]+|[^A-Za-z0-9]+", span)
    for _ in range(tries):
        new = "".join(_letters(rng, p) if p[0].isalpha() else _digits(rng, p) if p[0].isdigit() else p
                      for p in parts)
        if new.lower() != span.lower() and fits(new):
            return new
    return None


class Augmenter:
    """Writes variants of a task's records (see the module docstring)."""

    def __init__(self, task: Any, operations: Sequence[str] = DEFAULT_OPERATIONS, typo_rate: float = 0.05):
        unknown = [op for op in operations if op not in OPERATIONS]
        if unknown:
            raise ValueError(f"unknown operation(s) {', '.join(unknown)}; known: {', '.join(OPERATIONS)}")
        self.task, self.operations, self.typo_rate = task, tuple(operations), typo_rate
        self.fields = [f for f in task.fields if f.source == "input" and f.pattern]

    # -- the spans of extractive fields ---------------------------------------------------------

    def _span_pattern(self, field: Any) -> re.Pattern[str]:
        flags = re.IGNORECASE if field.normalize in ("upper", "lower") else 0
        return re.compile(rf"(?<!\w)(?:{field.pattern})(?!\w)", flags)

    def _protected(self, text: str) -> list[tuple[int, int]]:
        """Where the extractive spans are (typos and shorthand leave them alone)."""
        return [m.span() for f in self.fields for m in self._span_pattern(f).finditer(text)]

    def _spans(self, rng: random.Random, text: str, label: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
        label = None if label is None else dict(label)
        for f in self.fields:
            mapping: dict[str, str] = {}  # one span (as normalized) -> its rewrite, wherever it occurs

            def fits(s: str, f: Any = f) -> bool:
                return re.fullmatch(f.pattern, f.normalized(s)) is not None

            def swap(m: re.Match[str], f: Any = f, mapping: dict[str, str] = mapping) -> str:
                key = f.normalized(m.group(0))
                if key not in mapping:
                    mapping[key] = rewrite_span(rng, m.group(0), fits) or m.group(0)
                # in this occurrence's case where case does not matter (a span written twice in two cases
                # keeps both)
                return mapping[key] if f.normalize is None else _like(m.group(0), mapping[key])

            text = self._span_pattern(f).sub(swap, text)
            if label is not None and isinstance(label.get(f.name), str):
                label[f.name] = f.normalized(mapping.get(f.normalized(label[f.name]), label[f.name]))
        return text, label

    # -- the other operations -------------------------------------------------------------------

    def _case(self, rng: random.Random, text: str, label: dict[str, Any] | None) -> tuple[str, Any]:
        how = rng.choice(("lower", "upper", "capitalize"))
        new = text.lower() if how == "lower" else text.upper() if how == "upper" else text[:1].upper() + text[1:]
        if label is not None:  # an extractive label is the span as the input writes it, normalized
            label = dict(label)
            for f in self.fields:
                if isinstance(label.get(f.name), str) and f.normalize is None:
                    label[f.name] = label[f.name].lower() if how == "lower" else label[f.name].upper() \
                        if how == "upper" else label[f.name]
        return new, label

    @staticmethod
    def _outside(spans: list[tuple[int, int]], start: int, end: int) -> bool:
        return all(end <= a or start >= b for a, b in spans)

    def _typos(self, rng: random.Random, text: str) -> str:
        spans = self._protected(text)
        words = [m for m in _WORD.finditer(text) if self._outside(spans, *m.span())]
        chosen = [m for m in words if rng.random() < self.typo_rate] or ([rng.choice(words)] if words else [])
        for m in sorted(chosen, key=lambda m: m.start(), reverse=True):
            w, i = m.group(0), rng.randrange(1, len(m.group(0)) - 1)
            kind = rng.choice(("swap", "drop", "double"))
            typo = (w[:i] + w[i + 1] + w[i] + w[i + 2:]) if kind == "swap" else \
                (w[:i] + w[i + 1:]) if kind == "drop" else (w[:i] + w[i] + w[i:])
            text = text[:m.start()] + typo + text[m.end():]
        return text

    def _abbrev(self, rng: random.Random, text: str) -> str:
        for long, short in ABBREVIATIONS.items():
            protected = self._protected(text)  # once per word replaced, not per match

            def swap(m: re.Match[str], short: str = short, spans: list[tuple[int, int]] = protected) -> str:
                if rng.random() >= 0.6 or not self._outside(spans, *m.span()):
                    return m.group(0)
                return short.upper() if m.group(0).isupper() and len(m.group(0)) > 1 else short
            text = re.sub(rf"\b{re.escape(long)}\b", swap, text, flags=re.IGNORECASE)
        return text

    def _punct(self, rng: random.Random, text: str) -> str:
        text = _SENTENCE_END.sub(lambda m: rng.choice((",", " -", ".", "")) + m.group(1), text)
        return re.sub(r",(?=\s)", lambda m: "" if rng.random() < 0.5 else ",", text)

    def _reorder(self, rng: random.Random, text: str) -> str:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
        if len(sentences) < 2:
            return text
        order = sentences[:]
        while order == sentences:
            rng.shuffle(order)
        return " ".join(order)

    # -- a variant ------------------------------------------------------------------------------

    def variant(self, text: str, label: dict[str, Any] | None, rng: random.Random) -> Variant:
        """One variant of a record (the operations drawn with ``rng``)."""
        usable = [op for op in self.operations if op != "spans" or self.fields]
        chosen = [op for op in usable if rng.random() < CHANCE[op]] or ([rng.choice(usable)] if usable else [])
        for op in chosen:  # at least one, in the order given
            if op == "spans":
                text, label = self._spans(rng, text, label)
            elif op == "case":
                text, label = self._case(rng, text, label)
            else:
                text = getattr(self, f"_{op}")(rng, text)
        return Variant(text, label, tuple(chosen))


def augment(task: Any, records: Sequence[Any], copies: int, seed: int = 0,
            operations: Sequence[str] = DEFAULT_OPERATIONS, typo_rate: float = 0.05,
            ) -> tuple[list[Variant], dict[str, Any]]:
    """``copies`` variants of each record (``records``: :class:`~supertiny.tasks.TaskRecord` s), after all the
    originals are listed by the caller; returns ``(variants, counts)``: counts of the variants written, of those
    dropped (``same``: no change, ``invalid``: a label the task refuses, ``repeated``: written before) and of
    each operation applied."""
    aug = Augmenter(task, operations, typo_rate)
    seen = {_key(r.input) for r in records}
    out: list[Variant] = []
    dropped: Counter[str] = Counter()
    used: Counter[str] = Counter()
    for i, r in enumerate(records):
        for c in range(copies):
            v = aug.variant(r.input, r.label, _rng(seed, i, c))
            if _key(v.input) in seen:
                dropped["same" if _key(v.input) == _key(r.input) else "repeated"] += 1
                continue
            if v.label is not None and task.check_label(v.label)[0] is None:
                dropped["invalid"] += 1
                continue
            seen.add(_key(v.input))
            used.update(v.operations)
            out.append(v)
    return out, {"variants": len(out), "dropped": dict(dropped), "operations": dict(used)}


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def _like(shape: str, text: str) -> str:
    """``text`` in ``shape``'s case style (all upper, all lower, else as it is)."""
    return text.upper() if shape.isupper() else text.lower() if shape.islower() else text


__all__ = ["ABBREVIATIONS", "DEFAULT_OPERATIONS", "OPERATIONS", "Augmenter", "Variant", "augment", "rewrite_span"]
