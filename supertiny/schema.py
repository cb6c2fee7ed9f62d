"""Checking a user's file key by key: the shared parts of every format with a schema.

Targets, tasks (and recipes next) are small TOML files in which every key is checked and an
unknown key is an error with a suggestion, so a typo is never a silently ignored setting.
A format is facts as data: a table ``key -> check``, where a check takes the raw value and
returns the validated one or raises :class:`Bad` saying what was expected and what came.
:func:`check_keys` runs such a table and collects every problem; :func:`raise_problems`
reports them all in one line that starts with the file.

>>> checks = {"name": NAME, "threads": expect(lambda v: type(v) is int and v > 0, "a positive integer")}
>>> problems = []
>>> check_keys({"name": "demo", "thread": 2}, checks, {"name", "threads"}, "", problems)
{'name': 'demo'}
>>> problems  # doctest: +NORMALIZE_WHITESPACE
["top level: unknown key 'thread' (did you mean 'threads'? known: name, threads)",
 'threads: required key is missing']
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

Check = Callable[[Any], Any]
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


class Bad(Exception):
    """A value is wrong; the message says what was expected and what came."""


def show(value: Any) -> str:
    """A value as an error message quotes it: its ``repr``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def expect(ok: Callable[[Any], bool], what: str) -> Check:
    """A check that passes values on which ``ok`` holds and otherwise names ``what`` was expected.

    >>> expect(lambda v: v in (1, 2), "1 or 2")(3)
    Traceback (most recent call last):
    supertiny.schema.Bad: expected 1 or 2, got 3
    """
    def check(v: Any) -> Any:
        if not ok(v):
            raise Bad(f"expected {what}, got {show(v)}")
        return v
    return check


def is_number(v: Any) -> bool:
    """A finite int or float; not a bool (TOML ``true`` is no number)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def one_of(*choices: str) -> Check:
    """A check for one string of ``choices``."""
    return expect(lambda v: isinstance(v, str) and v in choices, f"one of {', '.join(choices)}")


def version(number: int) -> Check:
    """The check of ``schema_version``: exactly ``number``, a TOML integer."""
    return expect(lambda v: type(v) is int and v == number, str(number))


TEXT = expect(lambda v: isinstance(v, str), "a string")
TABLE = expect(lambda v: isinstance(v, dict), "a table")
BOOL = expect(lambda v: isinstance(v, bool), "true or false")
NAME = expect(lambda v: isinstance(v, str) and _NAME.fullmatch(v) is not None,
              "a name of a-z, 0-9, '.', '_', '-' starting with a letter or digit")


def unknown_key(key: str, known: Iterable[str], where: str) -> str:
    """The problem of an unknown key, with the closest known one as a suggestion."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{where}: unknown key {key!r} ({hint}known: {', '.join(known)})"


def check_keys(data: Mapping[str, Any], checks: Mapping[str, Check], required: set[str], where: str,
               problems: list[str]) -> dict[str, Any]:
    """Validated values of the keys present; unknown, missing and bad keys go to ``problems``.

    Args:
        data: one table of the document.
        checks: its known keys, in the order they are reported, and their checks.
        required: the keys that must be present.
        where: the table's dotted path (``""``: the top level), which starts each problem.
        problems: where the problems are appended.
    """
    problems += [unknown_key(key, checks, where or "top level") for key in data if key not in checks]
    out = {}
    for key, check in checks.items():
        name = f"{where}.{key}" if where else key
        if key not in data:
            if key in required:
                problems.append(f"{name}: required key is missing")
            continue
        try:
            out[key] = check(data[key])
        except Bad as exc:
            problems.append(f"{name}: {exc}")
    return out


def raise_problems(problems: list[str], source: str | os.PathLike[str], error: type[Exception]) -> None:
    """Raise ``error("SOURCE: problem; problem")`` when there are any problems."""
    if problems:
        raise error(f"{source}: " + "; ".join(problems))


def is_path(name_or_path: str | os.PathLike[str]) -> bool:
    """Whether a command-line argument names a file rather than a profile: a path object,
    anything ending in ``.toml`` or holding a path separator."""
    text = os.fspath(name_or_path)
    return isinstance(name_or_path, os.PathLike) or text.endswith(".toml") or "/" in text or os.sep in text


@contextmanager
def reading(path: Path, error: type[Exception], directory: str | None = None,
            not_utf8: str = "not UTF-8 text") -> Iterator[None]:
    """Turn a failure to open or decode ``path`` into a one-line ``error`` naming it.

    Args:
        directory: what was expected instead when ``path`` is a directory (None: the system's message).
        not_utf8: what to call a file that is not UTF-8 (the byte offset follows).
    """
    try:
        yield
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as exc:
        if directory is not None and isinstance(exc, IsADirectoryError):
            raise error(f"{path}: is a directory, expected {directory}") from None
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {not_utf8} (byte {exc.start})") from None


def read_toml(path: Path, error: type[Exception], directory: str | None = None) -> Any:
    """The parsed TOML document in ``path``; ``error`` naming the file when it cannot be read or parsed.

    Args:
        directory: what was expected instead when ``path`` is a directory (see :func:`reading`).
    """
    with reading(path, error, directory, not_utf8="not valid TOML: not UTF-8"), path.open("rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise error(f"{path}: not valid TOML: {' '.join(str(exc).split())}") from None


def check_file_name(path: Path, name: str, error: type[Exception]) -> None:
    """A file found by name must call itself by that name (its stem): else ``error``."""
    if name != path.stem:
        raise error(f"{path}: name: expected {path.stem!r} (the file's name), got {name!r}")
