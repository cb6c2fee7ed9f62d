"""One manifest for every artifact a stage produces, and the helper stages write it with.

A stage (pruning, GGUF export, ONNX export, ...) records what it made and from what in
a :class:`Manifest`: the stage and its version, the source and its sha256, the
settings, every output file's size and sha256, quality figures, stage details,
timings and notes. It lives inside a directory artifact as ``DIR/supertiny.json`` and
beside a single-file artifact as ``FILE.supertiny.json``; :func:`manifest_path` is
the one place that decides which. :func:`verify_artifact` re-hashes an artifact
against its manifest (``supertiny verify``).

A stage runs inside a :class:`StageRun`, which times its steps, collects notes, and
installs the result atomically through :mod:`supertiny.outdir`::

    with StageRun("export-gguf", 1, out, source=model, info=info, settings=asdict(config),
                  single_file=True) as run:
        raw = run.temp("raw")
        with run.step("write"):
            write(raw)
        manifest = run.install(raw, quality=parity, details=summary)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from supertiny.errors import RecipeError, UserError
from supertiny.outdir import install_dir, remove_stale_staging, staging_dir, staging_file
from supertiny.version import __version__

MANIFEST = "supertiny.json"  # inside a directory artifact
SIDECAR_SUFFIX = ".supertiny.json"  # appended to a single-file artifact's name
SCHEMA = 1
BUNDLE_STAGE = "bundle"  # a deployment bundle's manifest names this stage; its primary artifact: bundle_primary()
BUNDLE_TASK_FILE = "task.toml"  # the task a bundle answers (its prompt, schema and metric), beside the model


class ManifestError(UserError):
    """A manifest that is missing, unreadable or of another schema; the message names the file."""


# The JSON type of each field, checked on reading (facts as data).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "schema": int, "stage": str, "stage_version": int, "supertiny_version": str, "created": str,
    "source": dict, "settings": dict, "files": dict, "quality": dict, "details": dict, "seconds": dict,
    "notes": list,
}


@dataclass(frozen=True)
class Manifest:
    """What a stage made, from what, how, and how well.

    Attributes:
        stage: the stage's name (``prune``, ``export-gguf``, ``export-onnx``).
        stage_version: bumped when the stage's output changes for the same input and settings.
        supertiny_version: the package version that ran it; created: UTC ISO time.
        source: ``{"path", "sha256", "info"}`` with ``info`` the source's ``describe()``.
        settings: the stage's config as a dict.
        files: ``{relative name: {"bytes", "sha256"}}`` for every output file but the manifest.
        quality: the parity check or the pruning quality (``{"skipped": why}`` when not measured).
        details: stage-specific facts (tensor types, operators, what was pruned...).
        seconds: wall time per step; notes: what the reader should know (fallbacks...).
    """

    stage: str
    stage_version: int
    source: dict[str, Any]
    settings: dict[str, Any]
    files: dict[str, dict[str, Any]]
    quality: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    supertiny_version: str = __version__
    created: str = ""
    schema: int = SCHEMA

    @property
    def bytes(self) -> int:
        """Total size of the listed files."""
        return sum(int(f["bytes"]) for f in self.files.values())

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, fields in a fixed order (schema first)."""
        d = dataclasses.asdict(self)
        return {k: d[k] for k in _FIELD_TYPES}

    @classmethod
    def from_dict(cls, data: Any, where: str | os.PathLike[str] = "manifest") -> Manifest:
        """Read the JSON form; unknown keys, a missing field or another schema fail naming ``where``."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise ManifestError(f"{where}: unknown manifest schema {data.get('schema')!r} "
                                f"(this supertiny reads schema {SCHEMA})")
        unknown = sorted(set(data) - set(_FIELD_TYPES))
        if unknown:
            raise ManifestError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_FIELD_TYPES)}")
        missing = [k for k in _FIELD_TYPES if k not in data]
        if missing:
            raise ManifestError(f"{where}: missing key(s) {', '.join(missing)}")
        for key, kind in _FIELD_TYPES.items():
            if not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool)):
                raise ManifestError(f"{where}: {key} must be a JSON {_json_type(kind)}, "
                                    f"got {type(data[key]).__name__}")
        for name, meta in data["files"].items():
            if not (isinstance(meta, dict) and set(meta) == {"bytes", "sha256"}
                    and isinstance(meta["bytes"], int) and isinstance(meta["sha256"], str)):
                raise ManifestError(f"{where}: files[{name!r}] must be {{\"bytes\": int, \"sha256\": str}}")
        return cls(**data)


def _json_type(kind: type | tuple[type, ...]) -> str:
    return {int: "integer", str: "string", dict: "object", list: "array"}.get(kind, str(kind))  # type: ignore[call-overload]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _listing(folder: Path) -> list[Path]:
    """Every file under ``folder`` except its manifest, sorted by relative name."""
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST),
                  key=lambda p: p.relative_to(folder).as_posix())


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative name: {"bytes", "sha256"}}`` for every file under ``folder`` but its manifest."""
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in _listing(folder)}


def hash_path(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, or of a directory: one hash over its files' relative names and hashes.

    A directory's manifest (``supertiny.json``) is left out, so the hash names the
    content a later stage reads; it equals what the manifest's ``files`` table implies.

    Example::

        hash_path("student/") == hash_path("copy-of-student/")  # same files, same names
    """
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    return table_hash(file_table(p))


def table_hash(files: dict[str, dict[str, Any]]) -> str:
    """One sha256 over a manifest's ``files`` table (names and hashes): the content it describes."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]['sha256']}\n".encode())
    return h.hexdigest()


def manifest_path(artifact: str | os.PathLike[str]) -> Path:
    """Where ``artifact``'s manifest lives: ``DIR/supertiny.json`` or ``FILE.supertiny.json``."""
    p = Path(artifact).expanduser()
    return p / MANIFEST if p.is_dir() else p.with_name(p.name + SIDECAR_SUFFIX)


def _artifact_of(path: Path) -> Path:
    """The artifact a path names: itself, or the artifact of a manifest passed directly."""
    if path.is_file() and path.name == MANIFEST:
        return path.parent
    if path.is_file() and path.name.endswith(SIDECAR_SUFFIX):
        return path.with_name(path.name[: -len(SIDECAR_SUFFIX)])
    return path


def read_manifest(artifact: str | os.PathLike[str]) -> Manifest | None:
    """The manifest of ``artifact``, or ``None`` if it has none.

    Raises:
        ManifestError: the manifest exists but is not valid JSON or not a schema-1 manifest.
    """
    path = manifest_path(artifact)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({str(exc).splitlines()[0]})") from None
    return Manifest.from_dict(data, path)


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Write ``manifest`` as indented JSON to ``path`` (a staged path: callers rename it into place)."""
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Verification:
    """The result of :func:`verify_artifact`: files that differ, are missing or are not listed."""

    artifact: Path
    manifest: Manifest
    mismatched: list[str]
    missing: list[str]
    unlisted: list[str]

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.unlisted)

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": str(self.artifact), "ok": self.ok, "stage": self.manifest.stage,
                "files": len(self.manifest.files), "bytes": self.manifest.bytes, "mismatched": self.mismatched,
                "missing": self.missing, "unlisted": self.unlisted}


def verify_artifact(path: str | os.PathLike[str]) -> Verification:
    """Re-hash every file ``path``'s manifest lists (``path`` may also name the manifest itself).

    A file whose size or sha256 differs is *mismatched*; a listed file that is gone is
    *missing*; a file in a directory artifact that the manifest does not list is
    *unlisted*.

    Raises:
        ManifestError: ``path`` does not exist, has no manifest, or its manifest is invalid.
    """
    artifact = _artifact_of(Path(path).expanduser())
    if not artifact.exists() and not manifest_path(artifact).is_file():
        raise ManifestError(f"no such file or directory: {artifact}")
    manifest = read_manifest(artifact)
    if manifest is None:
        raise ManifestError(f"{artifact} has no manifest ({manifest_path(artifact).name}); only artifacts "
                            "written by a supertiny stage can be verified")
    base = artifact if artifact.is_dir() else artifact.parent
    mismatched, missing = [], []
    for name, meta in manifest.files.items():
        f = base / name
        if not f.is_file():
            missing.append(name)
        elif f.stat().st_size != meta["bytes"] or sha256_file(f) != meta["sha256"]:
            mismatched.append(name)
    unlisted = []
    if artifact.is_dir():
        unlisted = [n for n in (p.relative_to(base).as_posix() for p in _listing(base)) if n not in manifest.files]
    return Verification(artifact, manifest, mismatched, missing, unlisted)


class StageRun:
    """What a stage shares: step timings, notes, the manifest, an atomic install.

    Entering removes stale staging files of earlier runs for the same output whose
    process is gone (:func:`supertiny.outdir.remove_stale_staging`); leaving removes
    this run's staging files, so a stage that fails leaves nothing behind.

    Args:
        stage, version: the stage's name and version, recorded in the manifest.
        out: the artifact to produce (a directory, or a file with ``single_file``).
        source: the path the stage read (a file or folder, resolved by the caller), or a server URL (not
            hashed); info: its ``describe()`` dict.
        settings: the stage's config as a dict.
        carried: details the source's manifest passes on to every artifact made from it (the task prompt a
            fine-tuned model expects); a stage's own details of the same key win.
    """

    def __init__(self, stage: str, version: int, out: Path, source: str | os.PathLike[str], info: dict[str, Any],
                 settings: dict[str, Any], single_file: bool = False, carried: dict[str, Any] | None = None):
        self.stage, self.version, self.out, self.single_file = stage, version, Path(out), single_file
        # A server (an OpenAI-compatible URL, e.g. teach's teacher) is recorded as is: there is no file to hash.
        self.source_url = str(source) if str(source).startswith(("http://", "https://")) else None
        self.source_path = None if self.source_url else Path(source).resolve()  # absolute: it may travel
        self.info, self.settings, self.carried = info, settings, dict(carried or {})
        self.seconds: dict[str, float] = {}
        self.notes: list[str] = []
        self._temps: list[Path] = []
        self._dir: Path | None = None
        self._clock = time.perf_counter()

    def __enter__(self) -> StageRun:
        remove_stale_staging(self.out)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self._temps:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a named step (a repeated name adds up)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._add(name, t0)

    def lap(self, name: str) -> None:
        """Record the time since the run was created (or the last step or lap ended) as ``name``.

        For work that runs before the stage enters ``with run:`` (loading the source).
        """
        self._add(name, self._clock)

    def _add(self, name: str, since: float) -> None:
        self._clock = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + self._clock - since

    def note(self, text: str) -> None:
        """Record something the reader of the manifest should know."""
        self.notes.append(text)

    @property
    def dir(self) -> Path:
        """The hidden folder a directory artifact is built in (not created: writers create it)."""
        if self.single_file:
            raise AssertionError("a single-file stage builds in temp() files, not a folder")
        if self._dir is None:
            self._dir = staging_dir(self.out)
        return self._dir

    def temp(self, tag: str) -> Path:
        """A staging file beside the output (removed on leaving unless installed)."""
        p = staging_file(self.out, tag)
        self._temps.append(p)
        return p

    def install(self, file: Path | None = None, *, quality: dict[str, Any] | None = None,
                details: dict[str, Any] | None = None) -> Manifest:
        """Hash the outputs, write the manifest and move everything into place.

        A directory stage passes nothing (its folder is :attr:`dir`); a single-file
        stage passes the finished staging file. Returns the manifest as written.
        """
        with self.step("hash"):
            if self.source_path is None:
                source = {"path": self.source_url, "sha256": None, "info": self.info}
            else:
                source = {"path": str(self.source_path), "sha256": hash_path(self.source_path), "info": self.info}
            if self.single_file:
                assert file is not None
                files = {self.out.name: {"bytes": file.stat().st_size, "sha256": sha256_file(file)}}
            else:
                files = file_table(self.dir)
        details = {**self.carried, **(details or {})}
        manifest = Manifest(
            stage=self.stage, stage_version=self.version, source=source, settings=self.settings, files=files,
            quality=quality or {}, details=details, notes=list(self.notes),
            seconds={k: round(v, 2) for k, v in self.seconds.items()},
            created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        # What is returned is what a reader gets back (tuples become lists and so on).
        manifest = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
        if self.single_file:
            assert file is not None
            staged = self.temp("manifest")
            write_manifest(manifest, staged)
            # Two renames, each atomic: in between, verify reports the pair as mismatched,
            # never a half-written file.
            os.replace(file, self.out)
            os.replace(staged, manifest_path(self.out))
        else:
            write_manifest(manifest, self.dir / MANIFEST)
            install_dir(self.dir, self.out)
        return manifest


def bundle_primary(path: Path) -> Path | None:
    """The primary artifact inside a bundle directory, or None when ``path`` is not a bundle."""
    m = path / MANIFEST
    if not (path.is_dir() and m.is_file()):
        return None
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("stage") != BUNDLE_STAGE:
        return None
    primary = (data.get("details") or {}).get("primary")
    if not (isinstance(primary, str) and primary and not Path(primary).is_absolute()
            and ".." not in Path(primary).parts and (path / primary).exists()):
        raise RecipeError(f"{m}: details.primary: {primary!r} is not a file inside the bundle")
    return path / primary
