"""The ``supertiny`` command group and what its commands share.

User mistakes (:class:`supertiny.errors.UserError`) become one line on stderr and
exit code 2; nothing a user can cause ends in a traceback.
"""

from __future__ import annotations

import os
from typing import Any

import click

from supertiny.errors import SupertinyError, UserError
from supertiny.version import __version__


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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a hub
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def quiet_transformers() -> None:
    """Keep transformers' advisory logging off the terminal (the commands print their own lines)."""
    from transformers.utils import logging as hf_logging  # transformers: heavy, loaded by a command that needs it

    hf_logging.set_verbosity_error()


def human(n: float, unit: str = "") -> str:
    """``1234567`` as ``1.2M`` (``unit`` appended)."""
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{n:g}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def dev_line(q: dict[str, Any]) -> list[str]:
    """The dev-score line of a training stage's summary (none without dev figures)."""
    if "task_score" not in q:
        return []
    return [f"dev task_score {q['task_score']:.3f} on {q['n']} records (json valid {q['json_valid']:.2f})"]
