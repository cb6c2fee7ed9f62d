"""Settings declared once: each field of a frozen Config knows its checks, its help, its
command-line option and its recipe key.

A stage's Config (and a runtime one: the benchmark's) is a frozen dataclass deriving from
:class:`Settings` whose fields are made with :func:`setting`. The field's default is the only
default of that setting anywhere; its check (a :mod:`supertiny.schema` check, or one derived
from the annotation and ``choices``) is the only check of a single value, and
:meth:`Settings.problems` holds the checks across fields. From the fields:

* ``supertiny.cli.options`` makes the command's click options (``default=None``: the Config
  fills what is not given; ``[default: ...]`` shown from the field);
* :func:`recipe_checks` gives a recipe section's keys and checks (unknown keys suggest the
  known ones, as every schema of supertiny does);
* :func:`to_argv` writes a Config back as the command line that makes it (what the pipeline
  prints and runs), and :func:`identity` is what a cached run is keyed by.

Roles: ``setting`` (command option, recipe key and identity), ``run`` (how a run is carried
out, not what it makes: ``--overwrite``, ``--resume``; a command option only) and
``internal`` (identity only: tuning a user rarely needs, kept out of the command line).

Imports neither torch nor click.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo(Settings):
...     steps: int = setting(10, "Optimizer steps.", check=POS_INT)
...     lr: float = setting(1e-4, "Learning rate.", check=POSITIVE)
>>> Demo(steps=3, lr=1).lr, to_argv(Demo(steps=3))
(1.0, ['--steps', '3'])
>>> Demo(steps=0)
Traceback (most recent call last):
supertiny.errors.InvalidInputError: steps: expected a positive integer, got 0
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass
from typing import Any

from supertiny import schema
from supertiny.errors import InvalidInputError

ROLES = ("setting", "run", "internal")
_KEY = "supertiny"  # the dataclass field metadata key

POS_INT = schema.expect(lambda v: type(v) is int and v > 0, "a positive integer")
NON_NEG_INT = schema.expect(lambda v: type(v) is int and v >= 0, "an integer >= 0")
POSITIVE = schema.expect(lambda v: schema.is_number(v) and v > 0, "a positive number")
NON_NEG = schema.expect(lambda v: schema.is_number(v) and v >= 0, "a number >= 0")
UNIT = schema.expect(lambda v: schema.is_number(v) and 0 <= v <= 1, "a number from 0 to 1")
TEXT = schema.expect(lambda v: isinstance(v, str) and v != "", "a non-empty string")


def at_least(n: int) -> schema.Check:
    """An integer check: ``>= n``."""
    return schema.expect(lambda v: type(v) is int and v >= n, f"an integer, at least {n}")


@dataclass(frozen=True)
class Meta:
    """What :func:`setting` records on a field (see the module docstring)."""

    help: str
    check: schema.Check | None
    choices: tuple[Any, ...] | None
    flag: str | None
    off: str | None
    role: str
    parse: Callable[[str], Any] | None
    show: Callable[[Any], str] | None
    metavar: str | None
    example: Any
    short: str | None
    unknown: str | None
    multiple: bool


def setting(default: Any, help: str, *, check: schema.Check | None = None, choices: tuple[Any, ...] | None = None,
            flag: str | None = None, off: str | None = None, role: str = "setting",
            parse: Callable[[str], Any] | None = None, show: Callable[[Any], str] | None = None,
            metavar: str | None = None, example: Any = MISSING, short: str | None = None, unknown: str | None = None,
            multiple: bool = False) -> Any:
    """A Config field: its one default and everything that is derived from it.

    Args:
        default: the setting's default (the only one: commands and recipes leave it to the Config).
        help: the command option's help (the default is appended).
        check: a check of one value (``schema.expect``); default: the annotation's type, and ``choices``.
        choices: the values offered (a click choice; a recipe's ``one of``).
        flag: the command-line flag (default ``--field-name``); for a bool, the flag that sets True.
        off: a bool's flag that sets False (default ``--no-NAME``; ``""``: none).
        role: ``setting``, ``run`` or ``internal`` (see the module docstring).
        parse: text -> value, for a value typed on a command line (and a recipe string).
        show: value -> text, the inverse of ``parse`` (default ``str``; tuples join with commas).
        metavar: the option's placeholder in ``--help``.
        example: a valid value other than the default (the round-trip test; derived when absent).
        short: a one-letter alias of the flag (``-k``).
        unknown: with ``choices``, what a value is called when it is none of them (``unknown dtype 'f8';
            choose one of ...``); default: ``expected one of ..., got ...``.
        multiple: a tuple given one item per flag (``--prompt A --prompt B``); ``off`` then names the flag for
            none at all.
    """
    if role not in ROLES:
        raise AssertionError(f"unknown role {role!r}")
    meta = Meta(help, check, tuple(choices) if choices is not None else None, flag, off, role, parse, show,
                metavar, example, short, unknown, multiple)
    return dataclasses.field(default=default, metadata={_KEY: meta})


@dataclass(frozen=True)
class Field:
    """One setting of a Config class, as commands and recipes see it."""

    name: str
    default: Any
    meta: Meta
    base: type  # bool, int, float, str, tuple
    item: type | None  # a tuple's item type
    optional: bool  # the annotation admits None

    @property
    def flag(self) -> str:
        return self.meta.flag or "--" + self.name.replace("_", "-")

    @property
    def off(self) -> str | None:
        if self.base is not bool and not self.meta.multiple:
            return None
        if self.meta.off is not None:
            return self.meta.off or None
        return "--no-" + self.flag[2:]

    @functools.cached_property
    def check(self) -> schema.Check:
        """The one check of a value (None passes where the default is None)."""
        return _check_of(self)

    def text(self, value: Any) -> str:
        """``value`` as a command line writes it."""
        if self.meta.show is not None:
            return self.meta.show(value)
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        return str(value)

    def from_text(self, text: str) -> Any:
        """A value typed as text (a command line, a recipe string), before its check."""
        if self.meta.parse is not None:
            return self.meta.parse(text)
        return text


def _check_of(f: Field) -> schema.Check:
    base_check = f.meta.check or _type_check(f)

    def check(value: Any) -> Any:
        if value is None and f.default is None:
            return None
        if value is MISSING:
            raise schema.Bad("required, not given")
        if isinstance(value, str) and f.meta.parse is not None and f.base is not str:
            try:  # a recipe may give "32,256" for a tuple, as the command line does
                value = f.meta.parse(value)
            except InvalidInputError as exc:
                raise schema.Bad(str(exc)) from None
        value = base_check(value)
        if f.meta.choices is not None and value not in f.meta.choices:
            known = ", ".join(map(str, f.meta.choices))
            if f.meta.unknown:
                raise schema.Bad(f"unknown {f.meta.unknown} {schema.show(value)}; choose one of {known}")
            raise schema.Bad(f"expected one of {known}, got {schema.show(value)}")
        if f.base is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # TOML and JSON write 2.0 as 2: the Config holds a float either way
        if f.base is tuple and isinstance(value, list):
            value = tuple(value)  # a recipe's list: the Config holds a tuple (frozen, hashable)
        return value

    return check


def _type_check(f: Field) -> schema.Check:
    if f.base is tuple:
        item = f.item or str
        name = _PLURAL.get(item, item.__name__ + "s")

        def items(v: Any) -> tuple[Any, ...]:
            if not (isinstance(v, (list, tuple)) and (v or f.meta.multiple) and all(_is(item, x) for x in v)):
                raise schema.Bad(f"expected a {'' if f.meta.multiple else 'non-empty '}list of {name}, got "
                                 f"{schema.show(v)}")
            return tuple(v)
        return items
    return schema.expect(lambda v: _is(f.base, v), _TYPE_WORDS.get(f.base, f.base.__name__))


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _is(kind: type, v: Any) -> bool:
    if kind is bool:
        return isinstance(v, bool)
    if kind is int:
        return type(v) is int
    if kind is float:
        return schema.is_number(v)
    return isinstance(v, kind)


@functools.cache
def config_fields(cls: type) -> tuple[Field, ...]:
    """The :func:`setting` fields of a Config class: its own in declaration order, then its base classes'."""
    hints = typing.get_type_hints(cls)
    # a class's own settings first, then those it inherits (a stage's main settings lead its --help and its
    # recipe table's list of keys; dataclasses themselves order the base class's fields first)
    order = list(dict.fromkeys(n for klass in cls.__mro__ for n in vars(klass).get("__annotations__", {})))
    out = []
    for f in sorted(dataclasses.fields(cls), key=lambda f: order.index(f.name)):
        meta = f.metadata.get(_KEY)
        if meta is None:
            continue
        base, item, optional = _unpack(hints[f.name])
        default = f.default if f.default is not MISSING else MISSING
        out.append(Field(f.name, default, meta, base, item, optional))
    return tuple(out)


def _unpack(hint: Any) -> tuple[type, type | None, bool]:
    """``int | None`` -> (int, None, True); ``tuple[int, ...]`` -> (tuple, int, False)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    origin = typing.get_origin(hint)
    if origin is tuple:
        item_args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return tuple, item_args[0] if item_args else None, optional
    return (hint if isinstance(hint, type) else object), None, optional


def fields_of(cls: type, roles: tuple[str, ...] = ("setting",)) -> Iterator[Field]:
    """The fields of ``cls`` in ``roles``."""
    return (f for f in config_fields(cls) if f.meta.role in roles)


class Settings:
    """Base of a frozen dataclass Config: every field checked on creation, then :meth:`problems`.

    All problems are reported in one :class:`InvalidInputError`, ``; ``-separated.
    """

    def __post_init__(self) -> None:
        problems = []
        for f in config_fields(type(self)):
            try:
                value = f.check(getattr(self, f.name))
            except schema.Bad as exc:
                problems.append(f"{f.name}: {exc}")
            else:
                object.__setattr__(self, f.name, value)
        if not problems:
            problems = self.problems()
        if problems:
            raise InvalidInputError("; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong across fields (each field alone is already checked); empty when nothing is."""
        return []


def to_argv(config: Any) -> list[str]:
    """The command-line options that make ``config`` from its defaults (settings and run flags that differ, in field
    order).

    Raises:
        InvalidInputError: a setting whose value no option can express (None where the default is not).
    """
    out: list[str] = []
    base = _baseline(type(config))
    for f in fields_of(type(config), ("setting", "run")):
        value = getattr(config, f.name)
        if value == base.get(f.name, f.default):
            continue
        if f.base is bool or (f.meta.multiple and not value):
            flag = f.flag if value else f.off
            if flag is None:
                raise InvalidInputError(f"{f.name}: no command-line flag sets it to {value}")
            out.append(flag)
        elif f.meta.multiple:
            out += [part for item in value for part in (f.flag, str(item))]
        elif value is None:
            raise InvalidInputError(f"{f.name}: no command-line option sets it to None (its default is "
                                    f"{f.default!r})")
        else:
            out += [f.flag, f.text(value)]
    return out


@functools.cache
def _baseline(cls: type) -> dict[str, Any]:
    """The values of a Config made with no arguments (defaults as resolved on creation), or {} when it needs some."""
    try:
        config = cls()
    except (TypeError, InvalidInputError):
        return {}
    return {f.name: getattr(config, f.name) for f in config_fields(cls)}


def identity(config: Any) -> dict[str, Any]:
    """What a run's output depends on: every setting and internal field (``run`` fields left out)."""
    return {f.name: _plain(getattr(config, f.name)) for f in fields_of(type(config), ("setting", "internal"))}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def recipe_checks(cls: type, exclude: tuple[str, ...] = ()) -> dict[str, schema.Check]:
    """A recipe section's keys (the ``setting`` fields of ``cls`` but ``exclude``) and each key's check."""
    return {f.name: f.check for f in fields_of(cls) if f.name not in exclude}


def build(cls: type, values: Mapping[str, Any], where: str, problems: list[str]) -> Any:
    """``cls(**values)``, or None with its problems appended as ``where: ...`` (a recipe section's name)."""
    missing = [f.name for f in config_fields(cls) if f.default is MISSING and f.name not in values]
    if missing:
        problems.append(f"{where}: {', '.join(missing)}: required key is missing")
        return None
    try:
        return cls(**values)
    except InvalidInputError as exc:
        problems.append(f"{where}: {exc}")
        return None


def example(f: Field) -> Any:
    """A valid value of ``f`` other than its default: its declared example, else one derived from its type."""
    if f.meta.example is not MISSING:
        return f.meta.example
    if f.meta.choices:
        return next(c for c in f.meta.choices if c != f.default)
    if f.base is bool:
        return not f.default
    if f.base is int:
        return (f.default or 0) + 2
    if f.base is float:
        return (f.default or 0.0) + 0.25
    if f.base is tuple:
        return (*(f.default or ()), *(f.default or (1,)))
    if f.base is str:
        return "example"
    raise AssertionError(f"{f.name}: give the setting an example")
