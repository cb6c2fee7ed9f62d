"""Where ``supertiny teach`` keeps its results: one line per prompt, and the progress of a run.

:class:`PromptResult` is a prompt's outcome and its output line (the contract ``supertiny
distill`` reads, see :mod:`.teach`). While a run is going, each finished prompt is appended to
``OUT.partial`` (:class:`ProgressFile`: a header with the settings that decide the results, then
``{"index": i, ...output line}`` a line, flushed and fsynced). A rerun reads it back
(:func:`read_progress`) and, when ``OUT`` is already finished with the same settings, takes its
lines as done too (:func:`read_finished`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError
from supertiny.manifest import ManifestError, read_manifest

STAGE, STAGE_VERSION = "teach", 1
PROGRESS_SUFFIX = ".partial"
PROGRESS_FORMAT = 1

# The settings a prompt's result depends on: a rerun resumes only when they are equal.
RESUME_KEYS = ("teacher", "model_name", "task", "task_sha256", "prompt", "samples", "temperature", "top_p",
               "max_new_tokens", "seed", "greedy_first", "judge", "judge_model_name", "judge_threshold", "constrained",
               "vote")


@dataclass
class PromptResult:
    """One prompt's outcome; :meth:`line` is its output line."""

    index: int
    input: str
    response: str | None
    accepted: bool
    score: float
    scores: list[float]
    label: dict[str, Any] | None = None
    judge: list[dict[str, Any] | None] | None = None
    gold: str | None = None  # the label's canonical answer, kept in place of a rejected prompt's (--fill-from-labels)
    agreement: dict[str, float] | None = None  # --vote: each field's majority share of the K samples

    def line(self) -> dict[str, Any]:
        response = self.response if self.gold is None else self.gold
        out: dict[str, Any] = {"input": self.input, "response": response, "accepted": self.accepted,
                               "score": self.score, "samples": len(self.scores), "scores": self.scores}
        if self.gold is not None:
            out["from"] = "label"
        if self.label is not None:
            out["label"] = self.label
        if self.judge is not None:
            out["judge"] = self.judge
        if self.agreement is not None:
            out["agreement"] = self.agreement
        return out

    @classmethod
    def from_line(cls, index: int, obj: dict[str, Any]) -> PromptResult:
        from_label = obj.get("from") == "label"  # the teacher's own answer was rejected: none is kept
        return cls(index, obj["input"], None if from_label else obj["response"], obj["accepted"], obj["score"],
                   obj["scores"], obj.get("label"), obj.get("judge"), agreement=obj.get("agreement"))

    def filled(self, gold: str | None) -> PromptResult:
        """This result with ``gold`` kept as its response when the teacher had none accepted (else as it is)."""
        return dataclasses.replace(self, gold=gold if self.response is None else None)


def progress_path(out: str | os.PathLike[str]) -> Path:
    """Where finished prompts of an unfinished run are kept: ``OUT.partial``."""
    out = Path(out)
    return out.with_name(out.name + PROGRESS_SUFFIX)


def diff_settings(old: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in RESUME_KEYS if old.get(k) != new.get(k))


def read_progress(path: Path, key: dict[str, Any]) -> dict[int, PromptResult]:
    """Finished prompts in a progress file; a last line cut by a kill is dropped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("teach_progress") != PROGRESS_FORMAT:
        raise InvalidInputError(f"{path}: not a supertiny teach progress file; remove it or pass --overwrite")
    if header.get("key") != key:
        raise InvalidInputError(f"{path} holds an unfinished run with other settings "
                                f"({diff_settings(header['key'], key)}); rerun with the same settings to resume it, "
                                "or pass --overwrite to start over")
    done = {}
    for number, text in enumerate(lines[1:], 2):
        try:
            obj = json.loads(text)
            done[obj["index"]] = PromptResult.from_line(obj["index"], obj)
        except (ValueError, KeyError, TypeError):
            if number == len(lines):  # written when the run was killed: that prompt runs again
                break
            raise InvalidInputError(f"{path}:{number}: not a progress line; remove the file or pass "
                                    "--overwrite") from None
    return done


def read_finished(out: Path, key: dict[str, Any], overwrite: bool) -> dict[int, PromptResult]:
    """Prompts of an earlier finished output with the same settings (line j is prompt j)."""

    if not out.exists() or overwrite:
        return {}
    if not out.is_file():
        raise InvalidInputError(f"the output {out} exists and is not a file")
    try:
        manifest = read_manifest(out)
    except ManifestError:
        manifest = None
    old = {k: manifest.settings.get(k) for k in RESUME_KEYS} if manifest and manifest.stage == STAGE else None
    if old != key:
        why = f"with other settings ({diff_settings(old, key)})" if old else "and was not written by supertiny teach"
        raise InvalidInputError(f"the output {out} exists {why}; pass --overwrite to replace it")
    done = {}
    for j, text in enumerate(out.read_text(encoding="utf-8").splitlines()):
        done[j] = PromptResult.from_line(j, json.loads(text))
    return done


class ProgressFile:
    """Appends finished prompts, one flushed and fsynced line each, from any thread."""

    def __init__(self, path: Path, key: dict[str, Any], fresh: bool):
        self.path = path
        self._lock = threading.Lock()
        self._fh = path.open("w" if fresh else "a", encoding="utf-8")
        if fresh:
            self._write({"teach_progress": PROGRESS_FORMAT, "key": key})

    def _write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def add(self, result: PromptResult) -> None:
        with self._lock:
            self._write({"index": result.index, **result.line()})

    def close(self) -> None:
        self._fh.close()
