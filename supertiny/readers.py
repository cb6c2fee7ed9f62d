"""What every stage reads: a user's text and JSON Lines files, the bundled corpus, and token spans.

* **Readers**: plain text (:func:`read_text`) and JSON Lines (:func:`read_jsonl`, a
  list of :class:`Record`), whose errors name the file and line (``FILE:LINE: ...``).
  Calibration text (:func:`calibration_text`) is built on them; task and teacher data
  use the same record reader. :func:`default_corpus_path` is the text bundled with supertiny.
* **Token splits**: :func:`spans` cuts consecutive runs of tokens (calibration, then
  held-out), :func:`token_windows` cuts a run into forward-pass windows. Every stage
  splits its tokens with these two, so the same settings select the same tokens.

Torch-free: the one calibration pass over a model lives in :mod:`supertiny.stages.calibration`.

Example::

    calib, held_out = spans(ids, 2048, 2048)  # what pruning scores on, then what it evaluates on
    windows = token_windows(calib, 512)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError

MIN_WINDOW = 16  # pruning's shortest calibration window: shorter ones say little and are dropped

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object"}
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
               dict: "an object", type(None): "null"}


def default_corpus_path() -> Path:
    """The evaluation text shipped with the package (see ``supertiny/data/README.md``)."""
    return Path(str(resources.files("supertiny") / "data" / "eval_corpus.txt"))


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a text file (UTF-8).

    Raises:
        InvalidInputError: missing, not a file, not UTF-8 or empty.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"no such text file: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise InvalidInputError(f"{p} is empty")
    return text


@dataclass(frozen=True)
class Record:
    """One JSON object of a JSON Lines file, with where it came from (for error messages)."""

    path: Path
    line: int
    data: dict[str, Any]

    @property
    def where(self) -> str:
        """``FILE:LINE``."""
        return f"{self.path}:{self.line}"

    def error(self, message: str) -> InvalidInputError:
        """An error about this record: ``FILE:LINE: message``."""
        return InvalidInputError(f"{self.where}: {message}")

    def field(self, name: str, kind: type | tuple[type, ...] = str, required: bool = True) -> Any:
        """The value of field ``name``, checked to be of ``kind``; ``None`` when absent and not required.

        Raises:
            InvalidInputError: ``FILE:LINE: missing field "name"`` or ``... must be a string, got a list``.
        """
        if name not in self.data or self.data[name] is None:
            if required:
                raise self.error(f"missing field \"{name}\"")
            return None
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds:  # JSON writes 2.0 as 2
            kinds = (*kinds, int)
        # JSON true/false are Python bools, which are ints too: only accept them where asked
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise self.error(f"field \"{name}\" must be {wanted}, got {_JSON_NAMES.get(type(value), 'a value')}")
        return value


def read_jsonl(path: str | os.PathLike[str]) -> list[Record]:
    """The JSON objects of a JSON Lines file, one per non-blank line.

    Raises:
        InvalidInputError: the file is missing, holds no records, or a line is not
            UTF-8, not JSON or not an object (``FILE:LINE: ...``).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidInputError(f"no such JSON Lines file: {p}")
    records = []
    with open(p, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(f"{p}:{n}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                msg = getattr(exc, "msg", str(exc))
                raise InvalidInputError(f"{p}:{n}: not valid JSON ({msg}, column {getattr(exc, 'colno', '?')})"
                                        ) from None
            if not isinstance(data, dict):
                got = _JSON_NAMES.get(type(data), "a value")
                raise InvalidInputError(f"{p}:{n}: expected a JSON object, got {got}")
            records.append(Record(p, n, data))
    if not records:
        raise InvalidInputError(f"{p} holds no records")
    return records


def calibration_text(path: str | os.PathLike[str] | None) -> str:
    """The calibration text: a ``.txt`` file, a ``.jsonl`` file of records, or the bundled corpus.

    A record gives its text as ``text``, or as ``prompt`` (or ``input``, as in task and teacher
    data) and ``response`` (or ``completion``), joined by a newline; records are joined by a blank line.
    """
    if path is None:
        return read_text(default_corpus_path())
    p = Path(path).expanduser()
    if p.suffix != ".jsonl":
        return read_text(p)
    if not p.is_file():
        raise InvalidInputError(f"calibration file {p} does not exist")
    parts = []
    for rec in read_jsonl(p):
        fields = (rec.field(k, required=False) for k in ("prompt", "input", "response", "completion"))
        text = rec.field("text", required=False) or "\n".join(v for v in fields if isinstance(v, str))
        if not text:
            raise rec.error("needs a \"text\" field or \"prompt\"/\"response\" fields")
        parts.append(text)
    return "\n\n".join(parts)


def spans(ids: Sequence[int], *counts: int) -> list[list[int]]:
    """Consecutive runs of ``ids``: the first ``counts[0]`` tokens, the next ``counts[1]``, ...

    A run is shorter (or empty) where the tokens run out.

    Example:
        >>> spans(list(range(10)), 4, 3, 5)
        [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    """
    out, begin = [], 0
    for n in counts:
        out.append(list(ids[begin:begin + n]))
        begin += n
    return out


def token_windows(ids: Sequence[int], window: int, min_len: int = MIN_WINDOW) -> list[list[int]]:
    """``ids`` cut into windows of ``window`` tokens (one forward pass each), dropping
    windows shorter than ``min_len`` (only the last one can be).

    Example:
        >>> token_windows(list(range(10)), 4, min_len=2)
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """
    if window < 1:
        raise InvalidInputError(f"the window must be at least 1 token, got {window}")
    chunks = (list(ids[i:i + window]) for i in range(0, len(ids), window))
    return [c for c in chunks if len(c) >= min_len]
