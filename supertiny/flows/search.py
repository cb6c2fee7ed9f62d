"""``supertiny search``: make and measure the candidates of a budget-driven search, through the cached runner.

Each candidate (:mod:`.search_grid`) is made by the same stages the commands run — prune,
distill, trim-vocab, quantize, export gguf/onnx — and measured by the measuring stages: ``bench`` (in a
child process, as ``supertiny bench`` runs it) at the target's prompt length and
concurrency, ``eval`` for the task score on ``task_limit`` records, and ``eval`` again for the
agreement with the teacher on held-out text. Every one of them is an invocation of the one
cached runner (:mod:`.runner`), in this process: keyed by the stage, its settings and its
inputs' content, recorded in ``WORK/.runs``. A rerun skips what is done, a Ctrl-C loses at
most the stage in progress, and a changed setting makes new files instead of reusing stale
ones. Budget verdicts are recomputed from the stored figures on every run, so a changed
target needs no new measurement when it asks for the same prompt length and concurrency.

Work folder layout (``WORK/``)::

    models/<what>-<key>/     pruned, distilled and quantized checkpoints (shared by a level's candidates)
    artifacts/<name>-<key>   the exported .gguf files and ONNX folders
    measures/<name>-<what>-<key>.json   each artifact's bench, task and agreement reports
    kd-cache/                the teacher's top-k cache, shared by every transfer run
    .runs/                   the runner's records (and hashes.json, the inputs' content hashes)
    search.json              the last search's report
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError, SupertinyError, UserError
from supertiny.flows.recipe import holdout_name
from supertiny.flows.runner import Invocation, Runner
from supertiny.flows.search_grid import LATENCY, QUANTS, Candidate, SearchConfig, expand, pareto_front, recommend
from supertiny.models import describe, resolve
from supertiny.outdir import read_json, write_json
from supertiny.runtime.bench.measure import measured_for_budgets, verdicts
from supertiny.stages.registry import get
from supertiny.targets import load_target
from supertiny.tasks import read_task_data, task_for

Log = Callable[[str], None]
MEASURES = ("bench", "task", "agreement")


class _Search:
    """One search's state: the inputs, the runner, the counters of the stages that ran."""

    def __init__(self, teacher: str, task: str, task_data: str, target: str, config: SearchConfig, work: Path,
                 log: Log) -> None:
        self.teacher, self.task, self.task_data, self.target, self.config = teacher, task, task_data, target, config
        self.profile = load_target(target)
        self.work, self.settings = work, config.stage_settings()
        self.runner = Runner(work, isolate=False, say=log)
        self.ran: Counter[str] = Counter()

    def invocation(self, folder: str, label: str, stage: str, inputs: dict[str, Any], **settings: Any) -> Invocation:
        """An invocation of ``stage`` (the search's settings for it, then ``settings``) whose output is named by
        its key, so that other settings or inputs make a new output instead of replacing one."""
        s = get(stage)
        config = s.config(**{**self.settings.get(stage, {}), **settings})
        inputs = {i.name: None if inputs.get(i.name) is None else str(inputs[i.name]) for i in s.inputs}
        key = self.runner.key(Invocation("", s, inputs, self.work, config))[:16]
        suffix = {"export-gguf": ".gguf", "bench": ".json", "eval": ".json"}.get(stage, "")
        out = self.work / folder / f"{label}-{key}{suffix}"
        return Invocation(out.name, s, inputs, out, config)

    def made(self, inv: Invocation, counter: str, say: Log, what: str) -> str:
        """Run a making stage unless done; its output's path."""
        if not self.runner.done(inv.name, inv.out, self.runner.key(inv)):
            say(what)
            self.runner.run(inv)
            self.ran[counter] += 1
        return str(inv.out)

    # -- making -------------------------------------------------------------------------

    def level_model(self, c: Candidate, teacher_layers: int, say: Log) -> str:
        """The (pruned, distilled) checkpoint of ``c``'s level; made once per level."""
        if c.source != "teacher":
            return c.source
        if c.layers == teacher_layers and c.mlp == 1:
            return self.teacher
        prune = self.invocation("models", f"pruned-L{c.layers}-m{c.mlp:g}", "prune", {"model": self.teacher},
                                layers=c.layers if c.layers < teacher_layers else None,
                                mlp=c.mlp if c.mlp < 1 else None, round_to=32 if c.mlp < 1 else 1)
        model = self.made(prune, "prune", say, f"pruning the teacher to {c.layers} layers"
                          + (f", MLP x{c.mlp:g}" if c.mlp < 1 else ""))
        if not c.kd:
            return model
        steps = self.config.kd_steps
        kd = self.invocation("models", f"kd-L{c.layers}-m{c.mlp:g}", "distill",
                             {"student": model, "task": self.task, "data": self.config.distill_data,
                              "teacher": self.teacher}, steps=steps, save_every=max(1, steps // 4),
                             cache_dir=str(self.work / "kd-cache"))
        return self.made(kd, "distill", say, f"knowledge transfer: {steps} steps of logit KD (fkl) from the teacher")

    def trimmed(self, c: Candidate, model: str, say: Log) -> str:
        """``model`` with its vocabulary trimmed as ``c`` says (``full``: as it is); made once per level and size."""
        if c.vocab == "full":
            return model
        inv = self.invocation("models", f"trim-v{c.vocab}", "trim-vocab",
                              {"model": model, "task": self.task if self.config.distill_data else None,
                               "data": self.config.distill_data}, keep=int(c.vocab))
        return self.made(inv, "trim", say, f"trimming the vocabulary (the task's tokens + {c.vocab} most frequent)")

    def artifact(self, c: Candidate, model: str, say: Log) -> str:
        """Quantize (when the quantization is a ``supertiny quantize`` scheme) and export ``model`` as ``c`` says."""
        q = QUANTS[c.quant]
        if q.stage == "quantize":
            inv = self.invocation("models", q.name, "quantize", {"model": model}, **(q.quantize or {}))
            model = self.made(inv, "quantize", say, f"quantizing ({q.name})")
        exporter = q.formats[c.format]
        stage = "export-gguf" if c.format == "gguf" else "export-onnx"
        inv = self.invocation("artifacts", c.name, stage, {"model": model}, quant=exporter)
        return self.made(inv, "export", say, f"exporting {c.format}" + (f" ({exporter})" if exporter else ""))

    # -- measuring ----------------------------------------------------------------------

    def measurements(self, artifact: str, model: str) -> dict[str, Invocation]:
        """The bench, task-score and agreement invocations of one artifact (``model``: what it was made from)."""
        c, b = self.config, self.profile.budget
        name = Path(artifact).name.removesuffix(".gguf")
        bench = {"prompt_lengths": (b.prompt_tokens,), "new_tokens": c.bench_new_tokens, "repeats": c.bench_repeats,
                 "warmup": 1, "concurrency": (b.concurrency,), "requests": c.bench_requests or b.concurrency}
        prompt = task_for(self.task, model).prompt  # the prompt the model was trained with
        out = {"bench": self.invocation("measures", f"{name}-bench", "bench",
                                        {"artifact": artifact, "target": self.target}, **bench),
               "task": self.invocation("measures", f"{name}-task", "eval",
                                       {"model": artifact, "task": self.task, "data": self.task_data},
                                       limit=c.task_limit, prompt=prompt, prompts=())}
        for f in c.holdout:  # text no generator wrote, scored whole
            out[f"holdout:{holdout_name(f)}"] = self.invocation(
                "measures", f"{name}-holdout-{holdout_name(f)}", "eval", {"model": artifact, "task": self.task,
                                                                           "data": f}, prompt=prompt, prompts=())
        if c.agreement_tokens:
            window = min(256, c.agreement_tokens)
            out["agreement"] = self.invocation("measures", f"{name}-agreement", "eval",
                                               {"model": artifact, "teacher": self.teacher},
                                               max_tokens=c.agreement_tokens, window=window, stride=window,
                                               prompts=())
        return out

    def measure(self, invs: dict[str, Invocation], say: Log, rebench: bool) -> dict[str, Any]:
        """Run the measurements not done (``rebench``: the benchmark again), read the point from their reports."""
        fresh = [k for k, inv in invs.items() if not self.runner.done(inv.name, inv.out, self.runner.key(inv))]
        if rebench and "bench" not in fresh:
            say("benchmark again (--rebench; quality figures cached)")
            self.runner.run(invs["bench"], force=True)
            self.ran["bench"] += 1
        elif not fresh:
            say("measured before (cached)")
        for k in fresh:
            say(self._what(k, invs[k]))
            try:
                self.runner.run(invs[k], progress=_every_ten(say) if k == "task" else None)
            except UserError as exc:
                if k != "agreement":
                    raise
                self.ran["measure"] += 1
                return {**self._read(invs, skip=k), "agreement": {"skipped": str(exc)}, "cached": False}
        if fresh:
            self.ran["measure"] += 1
        return {**self._read(invs), "cached": not fresh and not rebench}

    def _what(self, kind: str, inv: Invocation) -> str:
        if kind == "bench":
            c = inv.config
            return (f"benchmark (prompt {c.prompt_lengths[0]}, concurrency {c.concurrency[0]}, repeats {c.repeats}, "
                    f"threads {c.threads or self.profile.runtime.threads})")
        if kind == "task":
            return f"task score on {self.config.task_limit} records"
        if kind.startswith("holdout:"):
            return f"task score on the hold-out set {kind.split(':', 1)[1]}"
        return f"agreement with the teacher on {self.config.agreement_tokens} held-out tokens"

    @staticmethod
    def _read(invs: dict[str, Invocation], skip: str = "") -> dict[str, Any]:
        reports = {k: read_json(inv.out) for k, inv in invs.items() if k != skip}
        point: dict[str, Any] = {"bench": reports["bench"]["results"][0]}
        t = reports["task"]
        point["task"] = {k: t[k] for k in ("task_score", "json_valid", "schema_valid", "fields", "n", "seconds",
                                           "prompt") if k in t}
        point["holdout"] = {k.split(":", 1)[1]: {f: r[f] for f in ("task_score", "fields", "n")}
                            for k, r in reports.items() if k.startswith("holdout:")}
        if "agreement" in reports:
            a = reports["agreement"]
            point["agreement"] = {"tokens": a["score"]["tokens"], "top1_agreement": a["agreement"]["top1_agreement"],
                                  "kl_mean": a["agreement"]["kl_mean"], "perplexity": a["score"]["perplexity"]}
        return point


def _every_ten(say: Log) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        if done < total and done % 10 == 0:  # a line now and then: scoring is the slowest measure
            say(f"task score: {done}/{total} records")
    return progress


def _row(c: Candidate, point: dict[str, Any], profile: Any) -> dict[str, Any]:
    """A candidate's table row: the figures the choice needs, the verdicts recomputed against ``profile``."""
    row: dict[str, Any] = {"name": c.name, "source": c.label or "teacher", "layers": c.layers, "mlp": c.mlp,
                           "kd": c.kd, "vocab": c.vocab, "quant": c.quant, "format": c.format}
    if "error" in point:
        return {**row, "error": point["error"], "meets": False, "verdicts": []}
    b, measured = point["bench"], measured_for_budgets(point["bench"], profile)
    vs = verdicts(b, profile)
    agreement = point.get("agreement") or {}
    return {**row, "artifact": b["artifact"], "size_mb": b["file_size_mb"], "ttft_ms": measured.get("ttft_ms"),
            "decode_tokens_per_s": measured.get("decode_tokens_per_s"),
            "p95_latency_ms": measured.get("p95_latency_ms"), "peak_rss_mb": b["peak_rss_mb"],
            "quality": point["task"]["task_score"], "json_valid": point["task"].get("json_valid"),
            "holdout": {k: v["task_score"] for k, v in point.get("holdout", {}).items()},
            "top1_agreement": agreement.get("top1_agreement"), "kl_mean": agreement.get("kl_mean"),
            "verdicts": vs, "meets": all(v["passed"] is not False for v in vs), "cached": point.get("cached", False)}


def _check(teacher: str, task: str, task_data: str, config: SearchConfig) -> tuple[int, dict[str, tuple[str, int]]]:
    """Everything a user passes, checked before any work; the teacher's depth and the students' (name, depth)."""
    for data in (task_data, *config.holdout):  # a bad line fails now, named FILE:LINE
        read_task_data(data, task_for(task), labelled=True)
    names = [holdout_name(f) for f in config.holdout]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InvalidInputError(f"--holdout: two sets named {', '.join(twice)} (a set is named by its file's stem)")
    if config.distill_data is not None and not Path(config.distill_data).is_file():
        raise InvalidInputError(f"--distill-data {config.distill_data}: no such file")
    resolve(teacher)
    students = {}
    for s in config.students:
        resolve(s)
        students[s] = (Path(s).name.removesuffix(".gguf"), describe(s).layers)
    return describe(teacher).layers, students


def run_search(teacher: str, task: str, task_data: str, target: str, config: SearchConfig,
               work: str | os.PathLike[str], log: Log | None = None, rebench: bool = False) -> dict[str, Any]:
    """Try every candidate of ``config`` (made from ``teacher``), measure it against ``target``, choose.

    Everything a user passes is checked before any work (the target, the task and its data, the
    teacher's depth against ``config.layers``, the students). Returns the report: ``points`` (one
    row per candidate; ``error`` for one that failed), ``front`` and ``recommended``/``closest``
    (names), ``notes`` (skipped pairs), ``ran`` (stages and measurements this call ran, not reused).
    ``rebench``: benchmark the cached candidates again (timings on a busy machine are noisy), keeping their
    task and agreement figures.
    """
    say_all = log or (lambda _m: None)
    start = time.perf_counter()
    profile = load_target(target)
    teacher_layers, students = _check(teacher, task, task_data, config)
    candidates, notes = expand(config, teacher_layers, students)
    work = Path(work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    search = _Search(teacher, task, task_data, target, config, work, say_all)
    for note in notes:
        say_all(f"note: {note}")
    rows = []
    for i, c in enumerate(candidates, 1):
        def say(step: str, i: int = i, c: Candidate = c) -> None:
            say_all(f"[{i}/{len(candidates)}] {c.name}: {step}")

        t0 = time.perf_counter()
        try:
            model = search.trimmed(c, search.level_model(c, teacher_layers, say), say)
            artifact = search.artifact(c, model, say)
            point = search.measure(search.measurements(artifact, model), say, rebench)
            if not point["cached"]:
                say(f"done in {time.perf_counter() - t0:.0f} s: task score {point['task']['task_score']:.3f}")
        except SupertinyError as exc:  # one broken candidate does not end the search; a rerun retries it
            point = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"failed: {exc}")
        rows.append(_row(c, point, profile))
    front = pareto_front(rows, config.objectives)
    for i, row in enumerate(rows):
        row["on_front"] = i in front
    best, closest = recommend(rows, LATENCY[config.latency])
    report = {"teacher": str(teacher), "task": task, "task_data": str(task_data), "target": profile.name,
              "budgets": profile.budget.limits(), "latency": config.latency, "objectives": config.objectives,
              "stage_settings": search.settings, "config": asdict(config), "notes": notes, "points": rows,
              "front": [rows[i]["name"] for i in front],
              "recommended": rows[best]["name"] if best is not None else None,
              "closest": rows[closest]["name"] if closest is not None else None,
              "ran": {k: search.ran[k] for k in ("prune", "distill", "trim", "quantize", "export", "measure",
                                                 "bench")},
              "work": str(work), "seconds": round(time.perf_counter() - start, 1)}
    write_json(work / "search.json", report)
    return report
