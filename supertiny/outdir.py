"""Output folders and files that appear only when complete: check first, build aside, swap in.

Every stage that writes a directory (ONNX export, pruning, ...) builds it in a hidden
``.NAME.partial-PID`` next to the target and moves it into place only once it passed
its checks, so a failure never leaves a folder that looks finished. A single-file
artifact (GGUF) is built in hidden ``.NAME.PID.TAG.partial`` files beside it and renamed
into place. A stage killed with ``kill -9`` cannot clean up after itself: the next run
for the same output removes the staging files whose process is gone. :func:`write_json` is the
one atomic write of a JSON file (records, caches, reports).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, a non-empty folder (unless ``overwrite``) or has no parent."""
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"the output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InvalidInputError(f"the output folder {out} is not empty; choose a new one or pass --overwrite")
    if not out.parent.is_dir():
        raise InvalidInputError(f"the output's parent folder {out.parent} does not exist")


def check_output_file(out: Path) -> None:
    """Refuse a file output that is a folder or whose parent folder does not exist (checked before any work)."""
    if out.is_dir():
        raise InvalidInputError(f"the output {out} is a directory")
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


def staging_file(out: Path, tag: str) -> Path:
    """A hidden file beside ``out`` for one stage of building it (``tag`` names the stage)."""
    return out.parent / f".{out.name}.{os.getpid()}.{tag}.partial"


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts as alive)."""
    if os.name == "nt":  # os.kill(pid, 0) sends CTRL_C_EVENT there: never guess, keep the files
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove staging files and folders of ``out`` left by processes that are gone.

    Matches ``.NAME.partial-PID`` folders (and their ``-SUFFIX`` siblings, such as the
    genai builder's ``-hf`` input), ``.NAME.PID.TAG.partial`` files and
    ``.NAME.old-PID`` folders of :func:`install_dir`. A live process's files are kept
    (its PID answers ``os.kill(pid, 0)``); an ``.old`` folder is kept while ``out`` is
    missing, since it is then the only copy of the previous output.

    Returns:
        The paths removed.
    """
    name = re.escape(out.name)
    pattern = re.compile(rf"^\.{name}\.(?:(?P<kind>partial|old)-(?P<pid>\d+)(?:-[\w.-]+)?"
                         rf"|(?P<fpid>\d+)\.[\w-]+\.partial)$")
    removed = []
    for p in sorted(out.parent.iterdir()) if out.parent.is_dir() else []:
        m = pattern.match(p.name)
        if not m:
            continue
        pid = int(m["pid"] or m["fpid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if m["kind"] == "old" and not out.exists():
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (a hidden file beside it, then a rename): a crash
    leaves the old file or the new one, never half of one. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_file(path, "json")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when it is missing or unreadable (a record to recompute, not an
    error)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
