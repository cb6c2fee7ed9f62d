"""What the stages share when they run: the :class:`~supertiny.manifest.StageRun` of a model source, and
the output checks.

:func:`model_run` resolves the model a stage reads (``default``, a bundle's primary artifact),
describes it and passes on the task prompt its manifest records (a model fine-tuned on a
task is run with that task's brief prompt by every later stage: :mod:`supertiny.tasks.prompts`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from supertiny.manifest import StageRun
from supertiny.models import describe, resolve
from supertiny.settings import identity
from supertiny.tasks.prompts import RECORD_KEY, recorded_prompt


def model_run(name: str, version: int, out: Path, model: str | os.PathLike[str], settings: dict[str, Any],
              single_file: bool = False, info: dict[str, Any] | None = None) -> StageRun:
    """A :class:`StageRun` of stage ``name`` whose source is the model ``model`` (see the module docstring).

    ``info``: the source's description when the stage already has it (default: :func:`describe`).
    """
    path = resolve(model)[1]
    record = recorded_prompt(path)
    return StageRun(name, version, out, source=path, info=describe(model).to_dict() if info is None else info,
                    settings=settings, single_file=single_file, carried={RECORD_KEY: record} if record else None)


def settings(config: Any, **inputs: Any) -> dict[str, Any]:
    """A manifest's ``settings``: the config's identity (run flags left out), then the inputs as absolute paths
    (a URL or a shipped name as it is)."""
    def shown(v: Any) -> Any:
        if v is None or str(v).startswith(("http://", "https://")) or not Path(str(v)).exists():
            return None if v is None else str(v)
        return str(Path(str(v)).absolute())

    return {**identity(config), **{k: shown(v) for k, v in inputs.items()}}
