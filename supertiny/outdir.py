"""Output folders that appear only when complete: check first, build aside, swap in.

Every stage that writes a directory (ONNX export, pruning, ...) builds it in a hidden
``.NAME.partial-PID`` next to the target and moves it into place only once it passed
its checks, so a failure never leaves a folder that looks finished.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import InvalidInputError


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, a non-empty folder (unless ``overwrite``) or has no parent."""
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"the output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(f"the output folder {out} is not empty; choose a new one or pass --overwrite")
    if not out.parent.is_dir():
        raise InvalidInputError(f"the output's parent folder {out.parent} does not exist")


def staging_dir(out: Path) -> Path:
    """A fresh hidden folder next to ``out`` to build it in."""
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    return stage


def install_dir(stage: Path, out: Path) -> None:
    """Move the finished ``stage`` to ``out`` (an existing folder is replaced only now)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out)
