"""Which prompt a model is run with on a task: the full instruction, or the brief prompt it was trained on.

A task's full prompt carries every definition a model needs to do the task zero-shot
(for factory-tickets ~650 tokens). A model *fine-tuned* on the task has learnt those
definitions; it is trained and then run with the task's brief prompt (one line and
the schema, ~100 tokens), which makes each example several times cheaper to train on,
to cache teacher logits for and to serve. The style a model was trained with is
recorded in its manifest (``details.task_prompt = {"task": ..., "prompt": ...}``) and
carried along by every later stage (prune, export, quantize), so ``auto`` finds it:

- ``auto`` for a model whose manifest records training on this task: that prompt;
- ``auto`` for a training stage (distill, rl) on any other model: brief when the task has one;
- ``auto`` otherwise (eval or teach with an untrained model, a server URL): full.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from supertiny.errors import UserError
from supertiny.manifest import read_manifest
from supertiny.tasks.spec import PROMPTS, Task, load_task

PROMPT_CHOICES = ("auto", *PROMPTS)
RECORD_KEY = "task_prompt"  # the key in a manifest's details


def recorded_prompt(model: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The ``{"task", "prompt"}`` record of the model's manifest, or None (no model, a URL, ``default``, no manifest
    or no record)."""
    if model is None or str(model).startswith(("http://", "https://")):
        return None
    with contextlib.suppress(UserError, OSError, ValueError):
        path = Path(model).expanduser()
        manifest = read_manifest(path) if path.exists() else None  # "default" ships without a manifest
        record = manifest.details.get(RECORD_KEY) if manifest else None
        if isinstance(record, dict) and record.get("prompt") in PROMPTS and isinstance(record.get("task"), str):
            return {"task": record["task"], "prompt": record["prompt"]}
    return None


def trained_on(model: str | os.PathLike[str] | None, task: Task) -> bool:
    """Whether ``model``'s manifest says it was trained on ``task`` (what makes decoding constrained by default)."""
    record = recorded_prompt(model)
    return record is not None and record["task"] == task.name


def task_for(task: str | os.PathLike[str] | Task, model: str | os.PathLike[str] | None = None,
             prompt: str = "auto", training: bool = False) -> Task:
    """The task with the prompt ``model`` should be run (or, with ``training``, trained) with.

    >>> task_for("factory-tickets").prompt, task_for("factory-tickets", training=True).prompt
    ('full', 'brief')
    """
    spec = task if isinstance(task, Task) else load_task(task)
    if prompt not in PROMPT_CHOICES:
        raise UserError(f"unknown prompt {prompt!r}; expected one of: {', '.join(PROMPT_CHOICES)}")
    if prompt != "auto":
        return spec.with_prompt(prompt)
    record = recorded_prompt(model)
    if record and record["task"] == spec.name and (record["prompt"] == "full" or spec.brief):
        return spec.with_prompt(record["prompt"])
    return spec.with_prompt("brief" if training and spec.brief else "full")


def prompt_record(task: Task) -> dict[str, str]:
    """What a training stage writes into its manifest's details under :data:`RECORD_KEY`."""
    return {"task": task.name, "prompt": task.prompt}
