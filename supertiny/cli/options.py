"""Click parameters derived from the declarations: a Config's settings (:mod:`supertiny.settings`) become
options, a stage's inputs (:mod:`supertiny.stages.registry`) arguments and options.

Every option says ``default=None``: what the user does not give, the Config fills, so a default
lives in one place; ``[default: ...]`` in ``--help`` is read from the field. A value that a
setting parses itself (a width, a comma list) is parsed by the setting, its mistakes one line
and exit 2 like every other user error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import MISSING
from typing import Any

import click

from supertiny.cli.core import quiet_transformers
from supertiny.settings import Field, fields_of
from supertiny.stages.registry import Stage

ROLES = ("setting", "run")  # what a command offers (internal settings stay with the Config)
_OFF = "__off"  # the parameter name suffix of a repeatable setting's "none at all" flag


def _help(f: Field) -> str:
    if "[default:" in f.meta.help or f.default is None or f.default is MISSING:
        return f.meta.help
    if f.base is bool:
        shown = f.flag[2:] if f.default else (f.off or "")[2:]
        return f"{f.meta.help} [default: {shown}]" if shown else f.meta.help
    return f"{f.meta.help} [default: {f.text(f.default) if f.default != () else 'none'}]"


def _option(f: Field) -> Callable[[Any], Any]:
    """The click option(s) of one setting (a repeatable setting with an ``off`` flag gets two)."""
    decls = [f.flag, *([f.meta.short] if f.meta.short else [])]
    required = f.default is MISSING
    kw: dict[str, Any] = {"help": _help(f), "default": None, "required": required}
    if f.meta.metavar:
        kw["metavar"] = f.meta.metavar
    if f.base is bool:
        if f.off:
            return click.option(f"{f.flag}/{f.off}", f.name, **kw)
        return click.option(*decls, f.name, is_flag=True, flag_value=True, **kw)
    if f.meta.multiple:
        many = click.option(*decls, f.name, multiple=True, help=kw["help"])
        if not f.off:
            return many
        none = click.option(f.off, f.name + _OFF, is_flag=True, help=f"No {f.name.replace('_', ' ')} at all.")
        return lambda fn: many(none(fn))
    if f.meta.choices is not None:
        kw["type"] = click.Choice([str(c) for c in f.meta.choices])
    elif f.meta.parse is None:
        kw["type"] = {int: click.INT, float: click.FLOAT}.get(f.base, click.STRING)
    return click.option(*decls, f.name, **kw)


def config_options(cls: type, skip: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """A decorator adding an option per setting of ``cls`` (``setting`` and ``run`` roles), in declaration order."""
    options = [_option(f) for f in fields_of(cls, ROLES) if f.name not in skip]

    def apply(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def config_from(cls: type, params: dict[str, Any], **fixed: Any) -> Any:
    """Take ``cls``'s settings out of a command's ``params`` and build the Config (a setting not given: left to
    the Config; ``fixed``: values the command sets itself)."""
    values: dict[str, Any] = {}
    for f in fields_of(cls, ROLES):
        value = params.pop(f.name, None)
        if f.meta.multiple:
            value = tuple(value or ()) or (() if params.pop(f.name + _OFF, False) else None)
        elif isinstance(value, str) and f.base is not str:
            value = f.from_text(value) if f.meta.parse else f.base(value)  # a choice of numbers comes as text
        if value is not None:
            values[f.name] = value
    return cls(**{**values, **fixed})


def input_params(stage: Stage, out_help: str, out_required: bool = True) -> Callable[[Any], Any]:
    """A decorator adding the stage's inputs (arguments, then OUT, then options) to a command (``out_required``
    False: a command that prints its result and writes OUT only when asked)."""
    metavar = "OUT_DIR" if stage.output == "dir" else "OUT"
    path = click.Path(file_okay=stage.output == "file", dir_okay=stage.output == "dir")
    params = [click.argument(i.name, required=i.required) for i in stage.inputs if i.argument]
    if stage.out_option is None:
        params.append(click.argument("out", metavar=metavar, type=path))
    else:
        params.append(click.option(stage.out_option, "out", required=out_required, type=path, help=out_help))
    for i in stage.inputs:
        if not i.argument:
            kind = click.Path(dir_okay=False) if i.kind == "file" else click.STRING
            params.append(click.option(i.option, i.name, required=i.required, type=kind, default=None, help=i.help))

    def apply(fn: Any) -> Any:
        for p in reversed(params):
            fn = p(fn)
        return fn

    return apply


def inputs_from(stage: Stage, params: dict[str, Any]) -> dict[str, Any]:
    """Take the stage's inputs out of a command's ``params``."""
    return {i.name: params.pop(i.name, None) for i in stage.inputs}


def progress_bar(label: str) -> Any:
    """A context manager yielding a ``(done, total)`` callback that draws a bar on stderr."""
    @contextmanager
    def bar() -> Any:
        state: dict[str, Any] = {}

        def update(done: int, total: int) -> None:
            if "bar" not in state:
                state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr)
                state["bar"].__enter__()
            state["bar"].update(done - state.get("done", 0))
            state["done"] = done

        try:
            yield update
        finally:
            if "bar" in state:
                state["bar"].__exit__(None, None, None)

    return bar()


def run_printed(call: Callable[..., Any], label: str, as_json: bool, lines: Callable[[Any], list[str]],
                phases: bool = False) -> Any:
    """Run ``call(log=..., progress=...)``: its log lines and progress bars on stderr (``label``; with ``phases`` a
    new bar per phase, named by the first word of the last log line), then print its manifest as JSON or as
    ``lines(manifest)``. Returns the manifest (None on the other processes of a data-parallel run)."""
    phase = [label]

    def log(message: str) -> None:
        click.echo(message, err=True)
        if phases:
            phase[0] = message.split(" ", 1)[0]  # "teacher ..." or "training ...": the next bar's label

    with ExitStack() as stack:
        bar: dict[str, Any] = {}

        def update(done: int, total: int) -> None:
            if bar.get("key") != (phase[0], total):  # a new phase gets its own bar
                stack.close()
                bar.update(key=(phase[0], total), fn=stack.enter_context(progress_bar(phase[0])))
            bar["fn"](done, total)

        manifest = call(log=log, progress=update)
    if manifest is not None:
        click.echo(json.dumps(manifest.to_dict(), indent=2) if as_json else "\n".join(lines(manifest)))
    return manifest


def stage_command(group: click.Group, stage: Stage, name: str, help: str, lines: Callable[[Any, str], list[str]],
                  out_help: str = "Where to write the output.", label: str | None = None, phases: bool = False,
                  fixed: Mapping[str, Any] | None = None) -> click.Command:
    """Register on ``group`` the command ``name`` that runs ``stage``: its inputs, its settings and ``--json``; it
    prints the manifest (``lines(manifest, OUT)``, or JSON)."""

    @group.command(name, help=help)
    @input_params(stage, out_help)
    @config_options(stage.config, skip=tuple(fixed or ()))
    @click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
    def command(as_json: bool, **params: Any) -> None:
        inputs, out = inputs_from(stage, params), params.pop("out")
        config = config_from(stage.config, params, **(fixed or {}))
        quiet_transformers()
        run_printed(lambda log, progress: stage.call(inputs, out, config, log, progress), label or stage.name,
                    as_json, lambda m: lines(m, out), phases)

    return command
