"""Device target profiles: what a device is, how to run a model on it, and the budget it must meet.

A target is a small TOML file; the shipped ones (``factory-pc``, ``laptop``, ``rpi5``,
``jetson-orin-nano``) sit next to this module and say in comments why each number was chosen.
Users add or override profiles by name in the directories listed in ``$SUPERTINY_TARGETS``
(``os.pathsep``-separated), then ``$XDG_CONFIG_HOME/supertiny/targets`` (``~/.config/...``),
searched in that order before the shipped ones. Every key is validated and unknown keys are
rejected, so a typo in a profile is an error, never a silently ignored limit.

>>> t = load_target(SHIPPED_DIR / "rpi5.toml")
>>> t.name, t.device.arch, t.runtime.formats[0]
('rpi5', 'arm64', 'gguf')
>>> [v.status for v in check(t, {"ttft_ms": 100.0})][:2]
['pass', 'not measured']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from supertiny import schema
from supertiny.backends import PROVIDERS as ENGINE_PROVIDERS
from supertiny.errors import TargetError

SCHEMA_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent
ENV_VAR = "SUPERTINY_TARGETS"
ARCHS = ("x86_64", "arm64")
GPUS = ("none", "cuda", "dml")
FORMATS = ("gguf", "onnx", "hf")
PROVIDERS = tuple(ENGINE_PROVIDERS)  # what runtime.provider may name: the engine's table


@dataclass(frozen=True)
class Budget:
    """One limit a target may set. ``direction`` "max": measured <= limit passes; "min": measured >= limit.

    ``conditions`` is a template over the target's budget keys saying how the value is measured.
    Memory and sizes are MiB (2**20 bytes), as ``top`` and ``ls -lh`` count them.
    """

    key: str
    unit: str
    direction: str
    label: str
    short: str
    conditions: str

    @property
    def op(self) -> str:
        """``'<='`` or ``'>='``: how a passing measurement compares with the limit."""
        return "<=" if self.direction == "max" else ">="


BUDGETS: tuple[Budget, ...] = (
    Budget("ttft_ms", "ms", "max", "time to first token", "ttft", "median, {prompt_tokens}-token prompt"),
    Budget("decode_tokens_per_s", "tok/s", "min", "decode speed", "decode", "median, one request"),
    Budget("p95_latency_ms", "ms", "max", "p95 request latency", "p95",
           "{concurrency} concurrent, {prompt_tokens}-token prompt, {max_tokens} new tokens"),
    Budget("peak_rss_mb", "MiB", "max", "peak resident memory", "rss", "serving process"),
    Budget("file_size_mb", "MiB", "max", "artifact size", "size", "on disk"),
)
_LIMITS = {b.key: b for b in BUDGETS}


@dataclass(frozen=True)
class DeviceSpec:
    """The hardware: ``cores`` counts physical cores, ``memory_gb`` the RAM the OS sees."""

    arch: str
    cores: int
    memory_gb: float
    isa: tuple[str, ...] = ()
    gpu: str = "none"
    gpu_memory_gb: float = 0

    def summary(self) -> str:
        """One line: ``'x86_64, 4 cores, 8 GB, avx2, no GPU'``."""
        parts = [self.arch, f"{self.cores} cores", f"{self.memory_gb:g} GB", "+".join(self.isa)]
        gpu_memory = f" {self.gpu_memory_gb:g} GB" if self.gpu_memory_gb else ""
        parts.append("no GPU" if self.gpu == "none" else f"{self.gpu} GPU{gpu_memory}")
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class RuntimeSpec:
    """How to run on the device; ``formats`` and ``quant_types`` are preferences, best first."""

    threads: int
    context: int
    formats: tuple[str, ...]
    quant_types: tuple[str, ...] = ()
    gpu_layers: int = 0
    provider: str = "cpu"


@dataclass(frozen=True)
class BudgetSpec:
    """The limits (None: not set) and the conditions the speed limits are measured under."""

    prompt_tokens: int = 256
    ttft_ms: float | None = None
    decode_tokens_per_s: float | None = None
    concurrency: int = 1
    max_tokens: int = 64
    p95_latency_ms: float | None = None
    peak_rss_mb: float | None = None
    file_size_mb: float | None = None

    def limits(self) -> dict[str, float]:
        """The limits that are set, in :data:`BUDGETS` order."""
        return {b.key: getattr(self, b.key) for b in BUDGETS if getattr(self, b.key) is not None}


@dataclass(frozen=True)
class Target:
    """A validated device profile; ``source`` is the file (or label) it came from."""

    name: str
    description: str
    device: DeviceSpec
    runtime: RuntimeSpec
    budget: BudgetSpec
    source: Path

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain data: the TOML schema with defaults filled in, plus ``source``."""
        return {"schema_version": SCHEMA_VERSION, "name": self.name, "description": self.description,
                "device": _plain(self.device), "runtime": _plain(self.runtime),
                "budget": {k: v for k, v in _plain(self.budget).items() if v is not None},
                "source": str(self.source)}


@dataclass(frozen=True)
class Verdict:
    """One limit checked against a measurement; ``passed`` is None when it was not measured."""

    key: str
    label: str
    limit: float
    measured: float | None
    unit: str
    passed: bool | None
    direction: str
    conditions: str

    @property
    def status(self) -> str:
        """``'pass'``, ``'fail'`` or ``'not measured'``."""
        return "not measured" if self.passed is None else "pass" if self.passed else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


@dataclass(frozen=True)
class TargetProblem:
    """A profile file (or search directory) that could not be used while listing."""

    path: Path
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "message": self.message}


def _plain(spec: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}


# -- validation: one check per key (facts as data in _TOP and _SECTIONS; see supertiny.schema) --

# type(v) is int: a TOML integer, and neither a float nor a bool (True == 1) counts as one
_positive_int = schema.expect(lambda v: type(v) is int and v > 0, "a positive integer")
_positive = schema.expect(lambda v: schema.is_number(v) and v > 0, "a positive number")
_non_negative = schema.expect(lambda v: schema.is_number(v) and v >= 0, "a number >= 0")
_gpu_layers = schema.expect(lambda v: type(v) is int and v >= -1, "an integer >= -1 (-1: all layers, 0: none)")


def _strings(choices: tuple[str, ...] = (), non_empty: bool = False) -> Callable[[Any], tuple[str, ...]]:
    what = f"a list of {' | '.join(choices)}" if choices else "a list of non-empty strings"

    def check(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
            raise schema.Bad(f"expected {what}, got {schema.show(v)}")
        if choices and (bad := [s for s in v if s not in choices]):
            raise schema.Bad(f"expected {what}, got {bad[0]!r} in {schema.show(v)}")
        if len(set(v)) != len(v):
            raise schema.Bad(f"expected no repeated entries, got {schema.show(v)}")
        if non_empty and not v:
            raise schema.Bad(f"expected at least one entry ({' | '.join(choices)}), got []")
        return tuple(v)
    return check


_TOP: dict[str, Callable[[Any], Any]] = {
    "schema_version": schema.version(SCHEMA_VERSION), "name": schema.NAME, "description": schema.TEXT,
    "device": schema.TABLE, "runtime": schema.TABLE, "budget": schema.TABLE,
}
_SECTIONS: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    "device": (DeviceSpec, {"arch": schema.one_of(*ARCHS), "cores": _positive_int, "memory_gb": _positive,
                            "isa": _strings(), "gpu": schema.one_of(*GPUS), "gpu_memory_gb": _non_negative}),
    "runtime": (RuntimeSpec, {"threads": _positive_int, "context": _positive_int,
                              "formats": _strings(FORMATS, non_empty=True), "quant_types": _strings(),
                              "gpu_layers": _gpu_layers, "provider": schema.one_of(*PROVIDERS)}),
    "budget": (BudgetSpec, {"prompt_tokens": _positive_int, "ttft_ms": _positive, "decode_tokens_per_s": _positive,
                            "concurrency": _positive_int, "max_tokens": _positive_int, "p95_latency_ms": _positive,
                            "peak_rss_mb": _positive, "file_size_mb": _positive}),
}


def parse_target(data: Mapping[str, Any], source: str | os.PathLike[str]) -> Target:
    """Validate a profile given as a dict (parsed TOML) and build a :class:`Target`.

    Args:
        data: the TOML document as a dict.
        source: the file (or a label) it came from; it starts every error message.

    Returns:
        The frozen :class:`Target`. Raises :class:`TargetError` listing every problem found.

    >>> t = parse_target({"schema_version": 1, "name": "demo",
    ...                   "device": {"arch": "arm64", "cores": 4, "memory_gb": 4},
    ...                   "runtime": {"threads": 4, "context": 1024, "formats": ["gguf"]},
    ...                   "budget": {"ttft_ms": 2000}}, "demo.toml")
    >>> t.budget.prompt_tokens, t.budget.limits()
    (256, {'ttft_ms': 2000})
    >>> parse_target({"schema_version": 2, "nam": "x"}, "x.toml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    supertiny.errors.TargetError: x.toml: top level: unknown key 'nam' (did you mean 'name'? known: ...); ...
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise TargetError(f"{source}: expected a table of keys, got {schema.show(data)}")
    top = schema.check_keys(dict(data), _TOP, {"schema_version", "name", "device", "runtime", "budget"}, "", problems)
    specs: dict[str, dict[str, Any]] = {}
    for key, (cls, checks) in _SECTIONS.items():
        if key in top:
            required = {f.name for f in fields(cls) if f.default is MISSING}
            specs[key] = schema.check_keys(top[key], checks, required, key, problems)
    if "budget" in top and not any(k in top["budget"] for k in _LIMITS):
        problems.append(f"budget: expected at least one limit ({', '.join(_LIMITS)}), got none")
    schema.raise_problems(problems, source, TargetError)
    device, runtime, budget = (cls(**specs[key]) for key, (cls, _) in _SECTIONS.items())
    schema.raise_problems(_consistency(device, runtime, budget), source, TargetError)
    return Target(name=top["name"], description=top.get("description", ""), device=device, runtime=runtime,
                  budget=budget, source=Path(source))


def _consistency(device: DeviceSpec, runtime: RuntimeSpec, budget: BudgetSpec) -> list[str]:
    """Rules across sections, checked once each key is valid on its own."""
    problems = []
    if runtime.provider not in ("cpu", device.gpu):
        problems.append(f"runtime.provider: {runtime.provider!r} needs device.gpu = {runtime.provider!r}, "
                        f"got {device.gpu!r}")
    if runtime.gpu_layers and device.gpu == "none":
        problems.append(f"runtime.gpu_layers: offloading needs a GPU (0 without one), got {runtime.gpu_layers} "
                        f"with device.gpu = 'none'")
    if budget.prompt_tokens + budget.max_tokens > runtime.context:
        problems.append(f"budget: a latency request (prompt_tokens + max_tokens = "
                        f"{budget.prompt_tokens + budget.max_tokens}) must fit runtime.context = {runtime.context}")
    if budget.peak_rss_mb is not None and budget.peak_rss_mb > device.memory_gb * 1024:
        problems.append(f"budget.peak_rss_mb: expected at most device.memory_gb = {device.memory_gb:g} GB "
                        f"({device.memory_gb * 1024:g} MiB), got {budget.peak_rss_mb:g}")
    return problems


# -- finding profiles --

def _env_dirs() -> list[Path]:
    return [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]


def target_dirs() -> list[Path]:
    """The directories searched for ``NAME.toml``, first match wins: ``$SUPERTINY_TARGETS``, user, shipped."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [*_env_dirs(), Path(config) / "supertiny" / "targets", SHIPPED_DIR]


def _read(path: Path, in_dir: bool) -> Target:
    target = parse_target(schema.read_toml(path, TargetError), path)
    if in_dir:  # the file's stem is the name it is looked up by, so the two must agree
        schema.check_file_name(path, target.name, TargetError)
    return target


def _candidates(problems: list[TargetProblem]) -> dict[str, Path]:
    """Each profile name in the search path with the file that wins; missing $SUPERTINY_TARGETS dirs are problems."""
    env_dirs = _env_dirs()
    found: dict[str, Path] = {}
    for d in target_dirs():
        if not d.is_dir():
            if d in env_dirs:
                problems.append(TargetProblem(d, f"{d}: {ENV_VAR} names a directory that does not exist"))
            continue
        for path in sorted(d.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def load_target(name_or_path: str | os.PathLike[str]) -> Target:
    """Load a profile by name (searched in :func:`target_dirs`) or from a ``.toml`` path.

    Args:
        name_or_path: ``'rpi5'``, or a path (anything ending in ``.toml`` or containing a separator).

    Returns:
        The validated :class:`Target`. Raises :class:`TargetError` for an unknown name (listing the
        available ones), an unreadable or unparseable file, or an invalid profile.

    >>> load_target("factory-pc").name
    'factory-pc'
    """
    text = os.fspath(name_or_path)
    if schema.is_path(name_or_path):
        return _read(Path(text), in_dir=False)
    for d in target_dirs():
        if (d / f"{text}.toml").is_file():
            return _read(d / f"{text}.toml", in_dir=True)
    available = ", ".join(sorted(_candidates([]))) or "none"
    raise TargetError(f"unknown target {text!r}; available: {available} (or pass a path to a .toml file)")


def scan_targets() -> tuple[list[Target], list[TargetProblem]]:
    """Every profile in the search path, by name, and the files that could not be used.

    An invalid user file is reported in the second list and hides a shipped profile of the
    same name, as :func:`load_target` would fail on it too; it never hides the other profiles.
    """
    problems: list[TargetProblem] = []
    targets = []
    for path in _candidates(problems).values():
        try:
            targets.append(_read(path, in_dir=True))
        except TargetError as exc:
            problems.append(TargetProblem(path, str(exc)))
    return sorted(targets, key=lambda t: t.name), problems


def list_targets() -> list[Target]:
    """The valid profiles, sorted by name; :func:`scan_targets` also returns the invalid files.

    >>> "rpi5" in [t.name for t in list_targets()]
    True
    """
    return scan_targets()[0]


def check(target: Target, measured: Mapping[str, float | None]) -> list[Verdict]:
    """Compare measurements (keys of :data:`BUDGETS`) with the target's limits, one verdict per set limit.

    A limit with no measurement gets ``passed=None`` ("not measured"); equality with the limit passes.

    >>> t = load_target(SHIPPED_DIR / "factory-pc.toml")
    >>> [(v.key, v.status) for v in check(t, {"ttft_ms": t.budget.ttft_ms, "decode_tokens_per_s": 1})][:3]
    [('ttft_ms', 'pass'), ('decode_tokens_per_s', 'fail'), ('p95_latency_ms', 'not measured')]
    """
    for key, value in measured.items():
        if key not in _LIMITS:
            raise TargetError(f"unknown measurement {key!r} (known: {', '.join(_LIMITS)})")
        if value is not None and not schema.is_number(value):
            raise TargetError(f"measurement {key}: expected a finite number, got {schema.show(value)}")
    conditions = asdict(target.budget)
    verdicts = []
    for key, limit in target.budget.limits().items():
        b, value = _LIMITS[key], measured.get(key)
        passed = None if value is None else value <= limit if b.direction == "max" else value >= limit
        verdicts.append(Verdict(key=key, label=b.label, limit=limit, measured=value, unit=b.unit, passed=passed,
                                direction=b.direction, conditions=b.conditions.format(**conditions)))
    return verdicts
