"""Running a recipe: its stages in order, one folder each, skipped when already done, resumable.

:func:`plan` turns a :class:`~supertiny.recipe.Recipe` into :class:`Stage` s, each one
``supertiny`` command (printed before it runs, so a run doubles as commands to copy);
:func:`run` runs them. A stage is skipped when its record (``OUT/.runs/STAGE.json``) holds
the same key — a hash of its command line and of the identity of every input (the content
hashes its manifest lists, or the file's own sha256) — and its output still verifies against
its own manifest.
A stage that was interrupted reruns: a training stage resumes from its last checkpoint
(``--resume``) when it was started with the same key, and starts over (``--overwrite``)
when its settings or inputs changed. Every stage's output appears atomically (the stages
write through :class:`~supertiny.manifest.StageRun`), so a crash or Ctrl-C at any point
leaves finished stages finished and nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RecipeError, UserError
from .manifest import manifest_path, read_manifest, sha256_file, table_hash, verify_artifact
from .recipe import BOOL_FLAGS, Recipe

RUNS = ".runs"  # the stage records, inside the run's folder


@dataclass
class Stage:
    """One step of a run.

    Attributes:
        name: the stage (and its folder's name).
        out: what it writes (a directory artifact, a file with a sidecar manifest, or for ``json`` stages
            the command's JSON report).
        argv: the ``supertiny`` command line without the program.
        inputs: the paths whose content the output depends on (beyond the command line).
        json: the output is the command's stdout (``--json``), written atomically by the pipeline.
        ok_codes: exit codes that count as done (``bench`` exits 1 for a missed budget: measured, not failed).
        overwrite, resume: the command accepts ``--overwrite`` / ``--resume``.
    """

    name: str
    out: Path
    argv: list[str]
    inputs: list[str] = field(default_factory=list)
    json: bool = False
    ok_codes: tuple[int, ...] = (0,)
    overwrite: bool = True
    resume: bool = False

    def shown(self) -> str:
        return " ".join(["supertiny", *self.argv])


def options(table: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """A recipe table as command-line options: ``{"batch_size": 8, "bf16": True}`` -> ``--batch-size 8 --bf16``."""
    out: list[str] = []
    for key, value in table.items():
        if key in skip:
            continue
        if isinstance(value, bool):
            on, off = BOOL_FLAGS.get(key, (f"--{key.replace('_', '-')}", None))
            flag = on if value else off
            out += [flag] if flag else []
        else:
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


@dataclass(frozen=True)
class Layout:
    """Where a run keeps what: the domain teacher, the final model, the bundle's inputs."""

    out: Path
    domain_teacher: str  # the prototype's output, or the recipe's teacher
    teaching_model: str  # what generates the teacher data (a fast GGUF of the domain teacher when asked)
    teacher_for_eval: str  # what the teacher's task score is measured on
    final_model: str  # the last trained (and quantized) model, before export
    primary: Path  # the artifact the bundle is built around (first export format)
    exports: dict[str, Path]


def plan(recipe: Recipe, out: Path) -> tuple[list[Stage], Layout]:
    """The stages ``recipe`` runs into ``out``, in order, and where their results lie."""
    out = Path(out).resolve()
    task, t = recipe.task["name"], recipe.task
    dev = ["--dev", t["dev"]] if "dev" in t else []
    stages: list[Stage] = []
    teacher = recipe.teacher
    if "prototype" in recipe.values:
        proto = out / "prototype"
        stages.append(Stage("prototype", proto, [
            "distill", teacher, "--task", task, "--data", t["train"], "--out", str(proto), "--loss", "sft",
            *dev, *options(recipe.section("prototype"))], [teacher, t["train"]], resume=True))
        teacher = str(proto)
    domain = teacher
    teaching = domain
    data = Path(t["train"])  # without [teach]: distill learns the labelled answers (KD: the teacher's logits on them)
    if "teach" in recipe.values:
        teach = recipe.section("teach")
        quant = teach.pop("quant", "Q8_0")
        if quant != "none" and not (domain.endswith(".gguf") or domain == "default"):
            teaching = str(out / "teacher-gguf" / f"teacher.{quant.lower()}.gguf")
            argv = ["export", "gguf", domain, teaching, *(["--quant", quant] if quant != "F16" else [])]
            stages.append(Stage("teacher-gguf", Path(teaching), argv, [domain], overwrite=False))
        data = out / "teach" / "teacher-data.jsonl"
        stages.append(Stage("teach", data, ["teach", teaching, "--task", task, "--prompts", t["train"], "--out",
                                            str(data), *options(teach)], [teaching, t["train"]]))
    model = str(out / "prune")
    stages.append(Stage("prune", Path(model), ["prune", domain, model, "--calib", str(data),
                                               *options(recipe.section("prune"))], [domain, str(data)]))
    distilled = str(out / "distill")
    stages.append(Stage("distill", Path(distilled), [
        "distill", model, "--task", task, "--data", str(data), "--out", distilled, "--teacher", domain,
        "--cache-dir", str(out / "kd-cache"), *dev, *options(recipe.section("distill"))],
        [model, str(data), domain], resume=True))
    model = distilled
    if "rl" in recipe.values:
        rl = str(out / "rl")
        stages.append(Stage("rl", Path(rl), ["rl", model, "--task", task, "--data", t["rl"], "--out", rl,
                                             "--teacher", domain, *dev, *options(recipe.section("rl"))],
                            [model, t["rl"], domain], resume=True))
        model = rl
    quantized = "quantize" in recipe.values
    if quantized:
        q = str(out / "quantize")
        stages.append(Stage("quantize", Path(q), ["quantize", model, q, "--task", task, "--data", str(data),
                                                  *options(recipe.section("quantize"))], [model, str(data)]))
        model = q
    export = recipe.section("export")
    check = ["--verify-tokens", str(export["verify_tokens"])] if "verify_tokens" in export else []
    exports: dict[str, Path] = {}
    for fmt in export.get("formats", ("gguf",)):
        if fmt == "gguf":
            path = out / "export-gguf" / "model.gguf"
            kind = export.get("gguf_quant", "carry" if quantized else "Q8_0")
            stages.append(Stage("export-gguf", path, ["export", "gguf", model, str(path), "--quant", kind, *check],
                                [model], overwrite=False))
        else:
            path = out / "export-onnx"
            kind = export.get("onnx_quant", "carry" if quantized else "int4")
            stages.append(Stage("export-onnx", path, ["export", "onnx", model, str(path), "--quant", kind, *check],
                                [model]))
        exports[fmt] = path
    primary = next(iter(exports.values()))
    ev = recipe.section("eval")
    eval_opts = ["--task", task, "--data", t["test"], "--json", *options(ev)]
    stages.append(Stage("eval-teacher", out / "eval-teacher" / "report.json", ["eval", teaching, *eval_opts],
                        [teaching, t["test"]], json=True, overwrite=False))
    stages.append(Stage("eval-student", out / "eval-student" / "report.json", ["eval", str(primary), *eval_opts],
                        [str(primary), t["test"]], json=True, overwrite=False))
    bench = recipe.section("bench")
    bench.setdefault("threads", min(_target_threads(recipe.target), os.cpu_count() or 1))
    stages.append(Stage("bench", out / "bench" / "bench.json", [
        "bench", str(primary), "--target", recipe.target, "--json", "--plot", str(out / "bench" / "bench.png"),
        *options(bench)], [str(primary)], json=True, ok_codes=(0, 1), overwrite=False))
    layout = Layout(out=out, domain_teacher=domain, teaching_model=teaching, teacher_for_eval=teaching,
                    final_model=model, primary=primary, exports=exports)
    return stages, layout


def _target_threads(target: str) -> int:
    from .targets import load_target

    return load_target(target).runtime.threads


# -- identity and records -------------------------------------------------------------------------


def identity(path: str) -> str:
    """What a stage input's content is: one hash over the files its manifest lists, else its own sha256."""
    from .manifest import hash_path
    from .models import resolve

    p = resolve(path)[1] if path == "default" else Path(path)
    if manifest_path(p).is_file():
        # the content its manifest lists (not the manifest's bytes: a stage rerun that writes the same
        # files, e.g. deterministic training after an interruption, leaves the later stages done)
        m = read_manifest(p)
        if m is not None:
            return "files:" + table_hash(m.files)
    if not p.exists():
        return "missing"
    return "sha256:" + hash_path(p)


def stage_key(stage: Stage) -> str:
    """The hash a finished stage is recognised by: its command line and its inputs' identities."""
    blob = json.dumps({"argv": stage.argv, "inputs": {p: identity(p) for p in stage.inputs}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _record_path(out: Path, stage: Stage, kind: str = "") -> Path:
    return out / RUNS / f"{stage.name}{kind}.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def is_done(out: Path, stage: Stage, key: str) -> bool:
    """Whether ``stage`` finished with this key and its output is intact."""
    record = _read(_record_path(out, stage))
    if record.get("key") != key or not stage.out.exists():
        return False
    if stage.json:
        return sha256_file(stage.out) == record.get("sha256")
    try:
        return verify_artifact(stage.out).ok and sha256_file(manifest_path(stage.out)) == record.get("sha256")
    except (UserError, OSError):  # an unreadable manifest or file: not done, the stage reruns
        return False


# -- running ----------------------------------------------------------------------------------------


@dataclass
class StageResult:
    name: str
    status: str  # ran | skipped
    seconds: float
    out: Path
    command: str
    exit_code: int = 0
    key: str = ""


def _command_line(stage: Stage, out: Path, key: str) -> list[str]:
    argv = list(stage.argv)
    started = _read(_record_path(out, stage, ".started")).get("key")
    work = Path(f"{stage.out}.work")
    if stage.resume and work.is_dir() and started == key:
        argv.append("--resume")
    elif stage.overwrite and (stage.out.exists() or work.exists()):
        argv.append("--overwrite")  # an earlier run with other settings or inputs: start over
    return argv


def run_stage(stage: Stage, out: Path, say: Callable[[str], None]) -> StageResult:
    """Run one stage unless it is done; record it. Raises :class:`RecipeError` when its command fails."""
    key = stage_key(stage)
    if is_done(out, stage, key):
        seconds = _read(_record_path(out, stage)).get("seconds", 0.0)
        say(f"[{stage.name}] done earlier ({seconds:.0f} s): skipped")
        return StageResult(stage.name, "skipped", seconds, stage.out, stage.shown(), key=key)
    argv = _command_line(stage, out, key)
    _write(_record_path(out, stage, ".started"), {"key": key, "command": stage.shown()})
    say(f"[{stage.name}] $ supertiny {' '.join(argv)}")
    stage.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "supertiny", *argv]
    if stage.json:
        tmp = stage.out.with_name(f".{stage.out.name}.{os.getpid()}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            rc = subprocess.run(cmd, stdout=fh).returncode
        if rc in stage.ok_codes:
            os.replace(tmp, stage.out)
        else:
            tmp.unlink(missing_ok=True)
    else:
        rc = subprocess.run(cmd).returncode
    seconds = round(time.perf_counter() - t0, 1)
    if rc not in stage.ok_codes:
        raise RecipeError(f"stage {stage.name} failed (exit {rc}): fix the cause and rerun the same command; "
                          f"finished stages are kept")
    digest = sha256_file(stage.out if stage.json else manifest_path(stage.out))
    _write(_record_path(out, stage), {"key": key, "sha256": digest, "seconds": seconds, "exit_code": rc,
                                      "command": "supertiny " + " ".join(argv)})
    say(f"[{stage.name}] {seconds:.0f} s")
    return StageResult(stage.name, "ran", seconds, stage.out, stage.shown(), rc, key)


def run(recipe: Recipe, out: Path, say: Callable[[str], None] = print, only_plan: bool = False) -> dict[str, Any]:
    """Run every stage of ``recipe`` into ``out`` and build the bundle (``out/bundle``).

    Returns ``{"stages": [StageResult...], "layout", "bundle": manifest or None, "seconds"}``.
    """
    stages, layout = plan(recipe, out)
    if only_plan:
        return {"stages": stages, "layout": layout, "bundle": None, "seconds": 0.0}
    out = layout.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    for i, stage in enumerate(stages, 1):
        say(f"\n== stage {i}/{len(stages) + 1}: {stage.name}")
        results.append(run_stage(stage, out, say))
    say(f"\n== stage {len(stages) + 1}/{len(stages) + 1}: bundle")
    results.append(_bundle(recipe, stages, layout, [r.key for r in results], say))
    manifest = read_manifest(out / "bundle")
    return {"stages": results, "layout": layout, "bundle": manifest, "seconds": round(time.perf_counter() - t0, 1)}


def _bundle(recipe: Recipe, stages: list[Stage], layout: Layout, keys: list[str],
            say: Callable[[str], None]) -> StageResult:
    """Build the bundle unless the one there was built from the same stages and recipe and verifies."""
    from .bundle import VERSION, build_bundle

    out = layout.out / "bundle"
    key = hashlib.sha256(json.dumps([VERSION, keys, recipe.to_dict()], sort_keys=True).encode()).hexdigest()
    bundle = Stage("bundle", out, [])
    if is_done(layout.out, bundle, key):
        seconds = _read(_record_path(layout.out, bundle)).get("seconds", 0.0)
        say(f"[bundle] done earlier: skipped ({out})")
        return StageResult("bundle", "skipped", seconds, out, "(in process)", key=key)
    t0 = time.perf_counter()
    build_bundle(recipe, stages, layout, out)
    seconds = round(time.perf_counter() - t0, 1)
    _write(_record_path(layout.out, bundle), {"key": key, "sha256": sha256_file(manifest_path(out)),
                                              "seconds": seconds})
    say(f"[bundle] {out} ({seconds:.0f} s)")
    return StageResult("bundle", "ran", seconds, out, "(in process)", key=key)
