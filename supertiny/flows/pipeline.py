"""Running a recipe: its stages in order, one folder each, skipped when already done, resumable.

:func:`plan` turns a :class:`~supertiny.flows.recipe.Recipe` into stage invocations
(:class:`~supertiny.flows.runner.Invocation`: a declared stage, its inputs, its output and
its Config built from the recipe's table) wired one to the next; :func:`run` runs them through
the cached runner (:mod:`supertiny.flows.runner`), each as its ``supertiny`` command in a child
process (printed before it runs, so a run doubles as commands to copy), then builds the bundle.
A stage is skipped when its record holds the same key and its output still verifies; an
interrupted training stage resumes from its last checkpoint when started with the same key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny.backends import threads_for
from supertiny.flows.bundle import VERSION, build_bundle
from supertiny.flows.recipe import EXPORT_STAGES, SECTIONS, Recipe, export_values
from supertiny.flows.runner import Invocation, Result, Runner
from supertiny.manifest import read_manifest
from supertiny.stages.registry import get
from supertiny.targets import load_target


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


def _invoke(name: str, stage: str, inputs: dict[str, Any], out: Path, table: dict[str, Any],
            **fixed: Any) -> Invocation:
    """An invocation of ``stage`` whose Config is the recipe's ``table`` (already checked) plus ``fixed``."""
    s = get(stage)
    config = s.config(**{**table, **fixed})
    return Invocation(name, s, {i.name: (None if inputs.get(i.name) is None else str(inputs[i.name]))
                                for i in s.inputs}, out, config)


def _own(recipe: Recipe, name: str, key: str) -> Any:
    """The value of one of the pipeline's own keys of table ``name`` (its default when the recipe leaves it out)."""
    return recipe.section(name).get(key, SECTIONS[name].own[key][1])


def _section(recipe: Recipe, name: str) -> dict[str, Any]:
    """A table's settings (the pipeline's own keys left out)."""
    return {k: v for k, v in recipe.section(name).items() if k not in SECTIONS[name].own}


def plan(recipe: Recipe, out: Path) -> tuple[list[Invocation], Layout]:
    """The invocations ``recipe`` runs into ``out``, in order, and where their results lie."""
    out = Path(out).resolve()
    t = recipe.task
    task = {"task": t["name"], "dev": t.get("dev")}
    stages: list[Invocation] = []
    teacher = recipe.teacher
    train = sft = t["train"]
    if "augment" in recipe.values:  # the train split and variants of its records: what the models learn from
        train = str(out / "augment" / "train.jsonl")
        stages.append(_invoke("augment", "augment", {"task": t["name"], "data": t["train"]}, Path(train),
                              _section(recipe, "augment")))
        if _own(recipe, "augment", "prototype"):
            sft = train
    if "prototype" in recipe.values:
        proto = out / "prototype"
        stages.append(_invoke("prototype", "distill", {"student": teacher, "data": sft, **task}, proto,
                              _section(recipe, "prototype"), **SECTIONS["prototype"].fixed))
        teacher = str(proto)
    domain = teaching = teacher
    data = train  # without [teach]: distill learns the labelled answers (KD: the teacher's logits on them)
    teaches = "teach" in recipe.values
    # the domain teacher as a fast GGUF: what teach answers with, and what the teacher's task score is measured on
    quant = _own(recipe, "teach", "quant") if teaches else (_own(recipe, "eval", "teacher_quant") or "none")
    if quant != "none" and not (domain.endswith(".gguf") or domain == "default"):
        teaching = str(out / "teacher-gguf" / f"teacher.{quant.lower()}.gguf")
        stages.append(_invoke("teacher-gguf", "export-gguf", {"model": domain}, Path(teaching), {},
                              **({"quant": quant} if quant != "F16" else {})))
    if teaches:
        data = str(out / "teach" / "teacher-data.jsonl")
        stages.append(_invoke("teach", "teach", {"teacher": teaching, "task": t["name"], "prompts": train},
                              Path(data), _section(recipe, "teach")))
    model = str(out / "prune")
    stages.append(_invoke("prune", "prune", {"model": domain, "calib": data}, Path(model), _section(recipe, "prune")))
    trim = "trim_vocab" in recipe.values
    early = trim and _own(recipe, "trim_vocab", "before_distill")
    if early:  # KD then trains the smaller output layer
        model = _trim(recipe, out, model, data, task, stages)
    distilled = str(out / "distill")
    stages.append(_invoke("distill", "distill", {"student": model, "data": data, "teacher": domain, **task},
                          Path(distilled), _section(recipe, "distill"), cache_dir=str(out / "kd-cache")))
    model = distilled
    if "rl" in recipe.values:
        stages.append(_invoke("rl", "rl", {"student": model, "data": t["rl"], "teacher": domain, **task},
                              out / "rl", _section(recipe, "rl")))
        model = str(out / "rl")
    if trim and not early:
        model = _trim(recipe, out, model, data, task, stages)
    quantized = "quantize" in recipe.values
    if quantized:
        stages.append(_invoke("quantize", "quantize", {"model": model, "task": t["name"], "data": data},
                              out / "quantize", _section(recipe, "quantize")))
        model = str(out / "quantize")
    exports = _exports(recipe, out, model, quantized, stages)
    primary = next(iter(exports.values()))
    ev = _section(recipe, "eval")
    # The bundle answers held to the task's schema (the default for a task-trained model); the teacher is
    # measured the same way, so the ratio compares the models, not two ways of decoding.
    ev.setdefault("constrained", True)
    # the test split, then each hold-out set (text no generator wrote), both models on each
    for suffix, scored_on in [("", t["test"]), *((f"-{name}", f) for name, f in recipe.holdout().items())]:
        for who, model_of in (("teacher", teaching), ("student", primary)):
            name = f"eval-{who}{suffix}"
            stages.append(_invoke(name, "eval", {"model": model_of, "task": t["name"], "data": scored_on},
                                  out / name / "report.json", ev))
    bench = _section(recipe, "bench")
    bench.setdefault("threads", threads_for(load_target(recipe.target).runtime.threads, cap=True))
    stages.append(_invoke("bench", "bench", {"artifact": primary, "target": recipe.target},
                          out / "bench" / "bench.json", bench))
    layout = Layout(out=out, domain_teacher=domain, teaching_model=teaching, teacher_for_eval=teaching,
                    final_model=model, primary=primary, exports=exports)
    return stages, layout


def _trim(recipe: Recipe, out: Path, model: str, data: str, task: dict[str, Any], stages: list[Invocation]) -> str:
    """Append trim-vocab of ``model``: the tokens the task's data needs (and the most frequent); returns its output."""
    stages.append(_invoke("trim-vocab", "trim-vocab", {"model": model, "data": data, **task}, out / "trim-vocab",
                          _section(recipe, "trim_vocab")))
    return str(out / "trim-vocab")


def _exports(recipe: Recipe, out: Path, model: str, quantized: bool, stages: list[Invocation]) -> dict[str, Path]:
    """One export per format of [export] (a quantized model's codes carried unless told otherwise)."""
    table = recipe.section("export")
    exports: dict[str, Path] = {}
    for fmt in _own(recipe, "export", "formats"):
        settings = export_values(table, fmt)
        if fmt == "gguf":
            path = out / "export-gguf" / "model.gguf"
            settings.setdefault("quant", "carry" if quantized else "Q8_0")
        else:
            path = out / "export-onnx"
            settings.setdefault("quant", "carry" if quantized else "int4")
        stages.append(_invoke(EXPORT_STAGES[fmt], EXPORT_STAGES[fmt], {"model": model}, path, settings))
        exports[fmt] = path
    return exports


def run(recipe: Recipe, out: Path, say: Callable[[str], None] = print, only_plan: bool = False) -> dict[str, Any]:
    """Run every stage of ``recipe`` into ``out`` and build the bundle (``out/bundle``).

    Returns ``{"stages": [Result...], "layout", "bundle": manifest or None, "seconds"}`` (with ``only_plan``:
    the invocations, nothing run).
    """
    stages, layout = plan(recipe, out)
    if only_plan:
        return {"stages": stages, "layout": layout, "bundle": None, "seconds": 0.0}
    layout.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(layout.out, isolate=True, say=say)
    t0 = time.perf_counter()
    results: list[Result] = []
    for i, inv in enumerate(stages, 1):
        say(f"\n== stage {i}/{len(stages) + 1}: {inv.name}")
        results.append(runner.run(inv))
    say(f"\n== stage {len(stages) + 1}/{len(stages) + 1}: bundle")
    bundle = layout.out / "bundle"
    results.append(runner.step("bundle", bundle, [VERSION, [r.key for r in results], recipe.to_dict()],
                               lambda: build_bundle(recipe, stages, layout, bundle)))
    return {"stages": results, "layout": layout, "bundle": read_manifest(bundle),
            "seconds": round(time.perf_counter() - t0, 1)}
