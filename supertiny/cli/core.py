"""The ``supertiny`` command group and what its commands share.

User mistakes (:class:`supertiny.errors.UserError`) become one line on stderr and
exit code 2; nothing a user can cause ends in a traceback.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any

import click

from .. import __version__
from ..errors import SupertinyError, UserError
from ..models import DTYPES
from ..runtime.engine import BACKENDS, PROVIDERS

# Choices shared by the commands (the library checks the same tables).
BACKEND_CHOICE = click.Choice(BACKENDS)
PROVIDER_CHOICE = click.Choice(tuple(PROVIDERS))  # the engine also takes its aliases ("directml")
DTYPE_CHOICE = click.Choice(DTYPES)


class _Group(click.Group):
    """Turns supertiny's errors into one line and an exit code at the boundary."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except SupertinyError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="supertiny")
def main() -> None:
    """Turn a large language model into a super-tiny one for the devices people have."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{n:g}{unit}"
        n /= 1000
    raise AssertionError("unreachable")



@contextmanager
def _progress(label: str):
    """A progress callback for the library that draws a bar on stderr."""
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
