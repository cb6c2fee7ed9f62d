"""The stage registry: every stage declared once, by name (Olive's passes, in our style).

A stage is a function of artifacts::

    @stage("prune", version=1, config=PruneConfig, inputs=(MODEL,), output="dir", command=("prune",))
    def run(inputs, out, config, log, progress) -> Manifest: ...

``inputs`` maps each declared :class:`Input` to a path (a model, a data file), a task name or
a URL; ``out`` is the artifact to write (a folder, or a file with a sidecar manifest), always
through :class:`~supertiny.manifest.StageRun` so it appears only when complete; ``config`` is
the stage's frozen Config (:mod:`supertiny.settings`), the one holder of its defaults and checks.

From the declaration, ``supertiny.cli`` makes the command's arguments and options, the
recipe (:mod:`supertiny.flows.recipe`) checks its section, and the one cached runner
(:mod:`supertiny.flows.runner`) keys, runs (in this process, or as the equivalent
``supertiny …`` command in a child process) and records it — for ``supertiny run`` and
``supertiny search`` alike.

Stage modules register on import; :func:`get` imports the ones listed in :data:`STAGE_MODULES`
(no package walking: an import error is loud) and names the known stages for an unknown one.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError
from supertiny.manifest import Manifest
from supertiny.settings import fields_of, to_argv

Log = Callable[[str], None]
Progress = Callable[[int, int], None]
INPUT_KINDS = ("model", "file", "task", "target", "model-or-url")

# The modules that declare stages, imported by get()/stages() (each registers itself).
STAGE_MODULES = (
    "supertiny.stages.augment",
    "supertiny.stages.prune.stage",
    "supertiny.stages.quantize.stage",
    "supertiny.stages.transfer.teach",
    "supertiny.stages.transfer.distill",
    "supertiny.stages.transfer.rl",
    "supertiny.stages.trim.stage",
    "supertiny.stages.export.gguf",
    "supertiny.stages.export.onnx",
    "supertiny.stages.eval",
    "supertiny.stages.bench",
)


@dataclass(frozen=True)
class Input:
    """One input of a stage.

    Attributes:
        name: its key in ``inputs`` (and the command's parameter name).
        help: what it is (the command's help).
        kind: ``model`` (HF dir, .gguf, ONNX export, bundle or ``default``), ``file``, ``task`` (a
            shipped task's name or a task .toml), ``target`` (a target's name or a profile .toml) or
            ``model-or-url`` (a model, or an OpenAI-compatible server); a cached run is keyed by the
            content of files, models, task and target files.
        required: the stage cannot run without it.
        argument: a positional argument of the command (else an option ``--name``).
        flag: the option's flag when it is not ``--name``.
    """

    name: str
    help: str
    kind: str = "file"
    required: bool = True
    argument: bool = False
    flag: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise AssertionError(f"unknown input kind {self.kind!r}")

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Stage:
    """A declared stage (see the module docstring).

    Attributes:
        name, version: recorded in the manifest; the version changes when the output changes for the same
            inputs and settings.
        config: the Config class; inputs: the :class:`Input` s; output: ``dir`` or ``file``.
        run: ``run(inputs, out, config, log, progress) -> Manifest``.
        command: the ``supertiny`` command words (``("export", "gguf")``).
        out_option: how the command takes OUT: ``None`` (a positional argument after the input arguments)
            or an option (``--out``).
        ok_codes: the command's exit codes that mean done (``bench`` exits 1 when a budget is missed).
    """

    name: str
    version: int
    config: type
    inputs: tuple[Input, ...]
    output: str
    run: Callable[..., Manifest]
    command: tuple[str, ...]
    out_option: str | None = None
    ok_codes: tuple[int, ...] = (0,)

    def call(self, inputs: Mapping[str, Any], out: str | os.PathLike[str], config: Any, log: Log | None = None,
             progress: Progress | None = None, **extra: Any) -> Manifest:
        """Check ``inputs`` against the declaration, then run the stage (``extra``: what a library caller passes
        beyond the declaration, e.g. a training stage's Trainer callbacks)."""
        known = {i.name for i in self.inputs}
        unknown = sorted(set(inputs) - known)
        if unknown:
            raise InvalidInputError(f"{self.name}: unknown input(s) {', '.join(unknown)}; known: {', '.join(known)}")
        missing = [i.name for i in self.inputs if i.required and inputs.get(i.name) is None]
        if missing:
            raise InvalidInputError(f"{self.name}: missing input(s) {', '.join(missing)}")
        if not isinstance(config, self.config):
            raise AssertionError(f"{self.name} takes a {self.config.__name__}, got {type(config).__name__}")
        full = {i.name: (None if inputs.get(i.name) is None else str(inputs[i.name])) for i in self.inputs}
        return self.run(full, Path(out).expanduser(), config, log or (lambda _m: None), progress, **extra)

    def argv(self, inputs: Mapping[str, Any], out: str | os.PathLike[str], config: Any) -> list[str]:
        """The ``supertiny`` command line (without the program) that runs this stage as :meth:`call` would."""
        argv = [*self.command, *(str(inputs[i.name]) for i in self.inputs if i.argument)]
        argv += [str(out)] if self.out_option is None else [self.out_option, str(out)]
        for i in self.inputs:
            if not i.argument and inputs.get(i.name) is not None:
                argv += [i.option, str(inputs[i.name])]
        return argv + to_argv(config)

    @property
    def resumable(self) -> bool:
        """Whether the Config has a ``resume`` run flag (a training stage that continues from checkpoints)."""
        return any(f.name == "resume" for f in fields_of(self.config, ("run",)))

    @property
    def overwrites(self) -> bool:
        """Whether the Config has an ``overwrite`` run flag (else the stage replaces its output by itself)."""
        return any(f.name == "overwrite" for f in fields_of(self.config, ("run",)))


STAGES: dict[str, Stage] = {}


def stage(name: str, *, version: int, config: type, inputs: tuple[Input, ...], output: str,
          command: tuple[str, ...], out_option: str | None = None, ok_codes: tuple[int, ...] = (0,)
          ) -> Callable[[Callable[..., Manifest]], Callable[..., Manifest]]:
    """Declare the decorated ``run`` function as the stage ``name`` (see :class:`Stage`)."""
    if output not in ("dir", "file"):
        raise AssertionError(f"{name}: output is 'dir' or 'file', got {output!r}")

    def register(run: Callable[..., Manifest]) -> Callable[..., Manifest]:
        if name in STAGES and STAGES[name].run is not run:
            raise AssertionError(f"stage {name!r} is declared twice")
        STAGES[name] = Stage(name, version, config, inputs, output, run, command, out_option, ok_codes)
        return run

    return register


def _load() -> None:
    for module in STAGE_MODULES:
        importlib.import_module(module)


def get(name: str) -> Stage:
    """The stage called ``name``; an unknown name lists the known ones."""
    _load()
    if name not in STAGES:
        raise InvalidInputError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    return STAGES[name]


def stages() -> dict[str, Stage]:
    """Every declared stage, by name."""
    _load()
    return dict(STAGES)
