"""What every benchmark does before it measures: parse its arguments, stay offline, quiet
transformers' warnings, and make its work folder.

Benchmarks run as scripts (``python benchmarks/x.py``), which puts this folder first on
``sys.path``, so they import this module as ``from _common import start``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def start(ap: argparse.ArgumentParser, prefix: str, keep_help: str) -> tuple[argparse.Namespace, Path]:
    """Parse the command line and prepare a run; call before importing supertiny.

    Args:
        ap: the benchmark's parser; ``--keep DIR`` is added last (``keep_help`` is its help).
        prefix: the name of the temporary work folder used without ``--keep``.

    Returns:
        The parsed arguments and the work folder (``--keep``, created when missing, or a new
        temporary folder). Hugging Face offline mode is on and transformers logs errors only.
    """
    ap.add_argument("--keep", default=None, help=keep_help)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: it reads this once
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    work = Path(args.keep or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return args, work


def teacher_hf_copy(work: Path) -> Path:
    """The default teacher as a float32 Hugging Face directory in ``work`` (made once, then reused).

    llama.cpp's converter and supertiny's streamed export read such a directory; the copy is
    ``load_model("default")`` saved with ``save_pretrained`` (safetensors).
    """
    from supertiny.models import load_model

    hf_dir = work / "teacher-hf-f32"
    if not hf_dir.exists():
        lm = load_model("default")
        lm.model.save_pretrained(hf_dir, safe_serialization=True)
        lm.tokenizer.save_pretrained(hf_dir)
    return hf_dir


def cpu_seconds(pid: int | None = None, thread: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of process ``pid`` (Linux ``/proc``); with
    ``thread``, of that one thread of ``pid`` (the main thread's id is the pid)."""
    if pid is None:
        import resource

        use = resource.getrusage(resource.RUSAGE_SELF)
        return use.ru_utime + use.ru_stime
    with open(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
