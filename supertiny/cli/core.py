"""The ``supertiny`` command group and what its commands share.

User mistakes (:class:`supertiny.errors.UserError`) become one line on stderr and
exit code 2; nothing a user can cause ends in a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
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


def _stack(decorators: list[Any]) -> Any:
    """One decorator applying ``decorators`` as if written one above the other (first = top)."""

    def apply(f: Any) -> Any:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def task_prompt_option(default_help: str) -> Any:
    """``--task-prompt auto|full|brief`` (see :mod:`supertiny.tasks.prompts`)."""
    return click.option("--task-prompt", type=click.Choice(("auto", "full", "brief")), default="auto",
                        show_default=True, help=f"The task's system prompt: full (every definition) or brief (one "
                        f"line and the schema, for models fine-tuned on the task). auto: {default_help}.")


def training_head(data_help: str, teacher_help: str) -> Any:
    """The options a training stage (distill, rl) starts with: STUDENT, --task, --data, --out, --teacher."""
    return _stack([
        click.argument("student"),
        click.option("--task", required=True, help="A shipped task's name (factory-tickets) or a task .toml file."),
        click.option("--data", required=True, type=click.Path(dir_okay=False), help=data_help),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                     help="The student to write."),
        click.option("--teacher", default=None, help=teacher_help),
        task_prompt_option("the one STUDENT was trained with, else brief when the task has one"),
    ])


def training_tail(save_every: int, extra: Sequence[Any] = ()) -> Any:
    """The options a training stage ends with (``extra`` go after --dev-limit): checkpoints, dev data, resume."""
    return _stack([
        click.option("--bf16/--no-bf16", default=False, show_default=True,
                     help="bfloat16 autocast (weights stay float32)."),
        click.option("--save-every", default=save_every, show_default=True,
                     help="Checkpoint every N steps (0: never)."),
        click.option("--eval-every", default=0, show_default=True, help="Evaluate every N steps (0: at the end only)."),
        click.option("--dev", type=click.Path(dir_okay=False), default=None, help="Labelled task data for evaluation."),
        click.option("--dev-limit", default=10, show_default=True,
                     help="Dev records scored (greedy generation: slow)."),
        *extra,
        click.option("--seed", default=0, show_default=True),
        click.option("--resume", is_flag=True,
                     help="Continue the unfinished run from its last checkpoint in OUT.work/."),
        click.option("--overwrite", is_flag=True, help="Replace OUT and start over."),
        click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON."),
    ])


def run_training(call: Callable[..., Any], label: str, phases: bool, as_json: bool,
                 lines: Callable[[Any], list[str]]) -> None:
    """Run ``call(log=..., progress=...)`` with progress bars on stderr (labelled ``label``; with ``phases`` a new
    bar per phase, named by the first word of the last log message), then print its manifest."""
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
                bar.update(key=(phase[0], total), fn=stack.enter_context(_progress(phase[0])))
            bar["fn"](done, total)

        manifest = call(log=log, progress=update)
    if manifest is None:  # another process of a data-parallel run: the main one reports
        return
    click.echo(json.dumps(manifest.to_dict(), indent=2) if as_json else "\n".join(lines(manifest)))


def dev_line(q: dict[str, Any]) -> list[str]:
    """The dev-score line of a training stage's summary (none without dev figures)."""
    if "task_score" not in q:
        return []
    return [f"dev task_score {q['task_score']:.3f} on {q['n']} records (json valid {q['json_valid']:.2f})"]
