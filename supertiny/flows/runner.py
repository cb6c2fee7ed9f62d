"""The one cached runner: a stage invocation keyed, run unless done, and recorded — for ``supertiny run`` and
``supertiny search`` alike.

An :class:`Invocation` is a declared stage (:mod:`supertiny.stages.registry`) with its inputs,
its output and its Config. Its **key** is one hash of the stage and its version, the Config's
identity (:func:`supertiny.settings.identity`: every setting, run flags left out) and the
*content* of every input (:class:`Identities`: the files a manifest lists, or a file's sha256;
a task or target name by its profile's bytes). A run is **done** when its record
(``FOLDER/.runs/NAME.json``) holds the same key and its output still verifies against its
manifest; then it is skipped.

Otherwise it runs — in this process, or (``isolate``) as the equivalent ``supertiny …``
command in a child process, the line printed first, so a run doubles as commands to copy —
with ``--resume`` when a resumable stage was started with the same key and left its work
folder, ``--overwrite`` when an earlier output or work folder of other settings is in the way.
Every stage installs its output atomically, so a crash or Ctrl-C at any point leaves finished
runs finished and nothing half-written; a rerun redoes only what was running.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny.errors import RecipeError, UserError
from supertiny.manifest import hash_path, manifest_path, read_manifest, sha256_file, table_hash, verify_artifact
from supertiny.models import resolve
from supertiny.outdir import read_json, write_json
from supertiny.settings import identity
from supertiny.stages.registry import Stage
from supertiny.targets import load_target
from supertiny.tasks import load_task

RUNS = ".runs"  # the records, inside the folder a runner keeps them in
Say = Callable[[str], None]


@dataclass(frozen=True)
class Invocation:
    """One run of a stage: ``name`` (its record's name, unique in the folder), the stage, its inputs, output and
    Config."""

    name: str
    stage: Stage
    inputs: dict[str, str | None]
    out: Path
    config: Any

    @property
    def argv(self) -> list[str]:
        """The ``supertiny`` command line (without the program) that runs it."""
        return self.stage.argv(self.inputs, self.out, self.config)

    def shown(self) -> str:
        return " ".join(["supertiny", *self.argv])

    @property
    def ok_codes(self) -> tuple[int, ...]:
        return self.stage.ok_codes

    @property
    def work(self) -> Path:
        """Where a resumable stage keeps its checkpoints until it installs ``out``."""
        return Path(f"{self.out}.work")


@dataclass
class Result:
    """What the runner did with an invocation (or an in-process step such as the bundle)."""

    name: str
    status: str  # ran | skipped
    seconds: float
    out: Path
    command: str
    exit_code: int = 0
    key: str = ""


class Identities:
    """What an input's content is, remembered by (path, size, mtime) in ``FOLDER/.runs/hashes.json`` so that a rerun
    does not read gigabytes again."""

    def __init__(self, folder: Path):
        self.file = folder / RUNS / "hashes.json"
        self.known: dict[str, Any] = read_json(self.file)

    def of(self, value: str | None, kind: str) -> str:
        """The identity of an input of ``kind`` (see :class:`supertiny.stages.registry.Input`)."""
        if value is None:
            return "none"
        if str(value).startswith(("http://", "https://")):
            return "url:" + str(value)
        if kind in ("task", "target") and not Path(value).exists():
            return f"{kind}:{value}:" + sha256_file(_profile_path(kind, value))  # a shipped one, by its bytes
        if kind in ("model", "model-or-url"):
            path = resolve(value)[1] if value == "default" else Path(value)
        else:
            path = Path(value)
        if manifest_path(path).is_file():
            # the content its manifest lists (not the manifest's bytes: a stage rerun that writes the same
            # files, e.g. deterministic training after an interruption, leaves the later stages done)
            m = read_manifest(path)
            if m is not None:
                return "files:" + table_hash(m.files)
        if not path.exists():
            return "missing"
        return "sha256:" + self._hash(path)

    def _hash(self, path: Path) -> str:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        stamp = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        seen = self.known.get(str(path.resolve()))
        if seen and seen["stamp"] == stamp:
            return seen["sha256"]
        digest = hash_path(path)
        self.known[str(path.resolve())] = {"stamp": stamp, "sha256": digest}
        write_json(self.file, self.known)
        return digest


def run_child(argv: list[str]) -> int:
    """Run a stage's command and wait for it; it never outlives the runner. On Linux the child gets SIGTERM
    when the runner dies, however it dies (SIGKILL included: a parent-death signal); an exception in the
    runner while it waits (Ctrl-C, the SIGTERM handler of ``supertiny run``) stops the child and waits for
    it before going on. Otherwise a rerun could find the old child still writing the stage's folder."""
    proc = subprocess.Popen(argv, preexec_fn=_die_with_parent() if sys.platform == "linux" else None)
    try:
        return proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def _die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` asking Linux to send SIGTERM to the child when this process ends (``prctl``'s
    ``PR_SET_PDEATHSIG``); libc is looked up here, before the fork, so the child only makes the call."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the runner died before the call: nobody would send the signal
            os._exit(1)

    return preexec


def _profile_path(kind: str, name: str) -> Path:
    return Path((load_task if kind == "task" else load_target)(name).source)


class Runner:
    """Runs invocations with their records in ``folder/.runs`` (see the module docstring).

    Args:
        folder: where the records live (a run's ``--out``, a search's ``--work``).
        isolate: run each stage as its ``supertiny`` command in a child process (else in this one).
        say: receives the progress lines (the command before it runs, done/skipped).
    """

    def __init__(self, folder: Path, isolate: bool = True, say: Say = print):
        self.folder, self.isolate, self.say = Path(folder), isolate, say
        self.ids = Identities(self.folder)

    def key(self, inv: Invocation) -> str:
        """The hash an invocation's finished run is recognised by (see the module docstring)."""
        kinds = {i.name: i.kind for i in inv.stage.inputs}
        blob = {"stage": inv.stage.name, "version": inv.stage.version, "settings": identity(inv.config),
                "inputs": {k: self.ids.of(v, kinds[k]) for k, v in inv.inputs.items()}}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()

    def _record(self, name: str, kind: str = "") -> Path:
        return self.folder / RUNS / f"{name}{kind}.json"

    def done(self, name: str, out: Path, key: str) -> bool:
        """Whether the run ``name`` finished with this key and its output is intact."""
        record = read_json(self._record(name))
        if record.get("key") != key or not out.exists():
            return False
        try:
            return verify_artifact(out).ok and sha256_file(manifest_path(out)) == record.get("sha256")
        except (UserError, OSError):  # an unreadable manifest or file: not done, it reruns
            return False

    def run(self, inv: Invocation, force: bool = False, progress: Callable[[int, int], None] | None = None
            ) -> Result:
        """Run ``inv`` unless it is done (``force``: run it all the same); record it. ``progress``: the stage's
        (done, total) calls, in this process.

        Raises:
            RecipeError: its command failed (in a child process: its own error was printed above).
        """
        key = self.key(inv)
        if not force and self.done(inv.name, inv.out, key):
            seconds = read_json(self._record(inv.name)).get("seconds", 0.0)
            self.say(f"[{inv.name}] done earlier ({seconds:.0f} s): skipped")
            return Result(inv.name, "skipped", seconds, inv.out, inv.shown(), key=key)
        resume = inv.stage.resumable and inv.work.is_dir() and \
            read_json(self._record(inv.name, ".started")).get("key") == key
        overwrite = inv.stage.overwrites and not resume and (inv.out.exists() or inv.work.exists())
        write_json(self._record(inv.name, ".started"), {"key": key, "command": inv.shown()})
        inv.out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        flags = {**({"resume": True} if resume else {}), **({"overwrite": True} if overwrite else {})}
        inv = dataclasses.replace(inv, config=dataclasses.replace(inv.config, **flags))
        rc = self._child(inv) if self.isolate else self._here(inv, progress)
        seconds = round(time.perf_counter() - t0, 1)
        write_json(self._record(inv.name), {"stage": inv.stage.name, "key": key, "command": inv.shown(),
                                            "sha256": sha256_file(manifest_path(inv.out)), "seconds": seconds,
                                            "exit_code": rc})
        self.say(f"[{inv.name}] {seconds:.0f} s")
        return Result(inv.name, "ran", seconds, inv.out, inv.shown(), rc, key)

    def _child(self, inv: Invocation) -> int:
        self.say(f"[{inv.name}] $ {inv.shown()}")
        rc = run_child([sys.executable, "-m", "supertiny", *inv.argv])
        if rc not in inv.ok_codes:
            raise RecipeError(f"stage {inv.name} failed (exit {rc}): fix the cause and rerun the same command; "
                              f"finished stages are kept")
        return rc

    def _here(self, inv: Invocation, progress: Callable[[int, int], None] | None) -> int:
        inv.stage.call(inv.inputs, inv.out, inv.config, lambda m: self.say(f"[{inv.name}] {m}"), progress)
        return 0

    def step(self, name: str, out: Path, blob: Any, make: Callable[[], Any]) -> Result:
        """An in-process step that is not a declared stage (the bundle): ``make()`` writes ``out`` with its
        manifest unless the record of ``name`` holds the hash of ``blob`` and ``out`` verifies."""
        key = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()
        if self.done(name, out, key):
            seconds = read_json(self._record(name)).get("seconds", 0.0)
            self.say(f"[{name}] done earlier: skipped ({out})")
            return Result(name, "skipped", seconds, out, "(in process)", key=key)
        t0 = time.perf_counter()
        make()
        seconds = round(time.perf_counter() - t0, 1)
        write_json(self._record(name), {"stage": name, "key": key, "command": "(in process)",
                                        "sha256": sha256_file(manifest_path(out)), "seconds": seconds, "exit_code": 0})
        self.say(f"[{name}] {out} ({seconds:.0f} s)")
        return Result(name, "ran", seconds, out, "(in process)", key=key)
