"""Make and measure the candidates of a budget-driven search; every result is cached under a work folder.

Each candidate goes through the stages the CLI commands run, called in-process (prune,
distill, quantize, export gguf/onnx; each writes its manifest and installs its output
atomically), then is measured: the runtime benchmark (in a child process, as ``supertiny
bench`` does) at the target's prompt length and concurrency, the task score on
``task_limit`` records, and agreement with the teacher on held-out text.

Work folder layout (``WORK/``)::

    hashes.json               sha256 of the teacher/students/data, keyed by path, size and mtime
    models/<what>-<key>/      pruned, distilled and quantized checkpoints (shared by the candidates
                              of one level)
    artifacts/<name>-<key>    the exported .gguf files and ONNX folders
    kd-cache/                 the teacher's top-k cache, shared by every transfer run
    points/<key>.json         one candidate's measurements
    search.json               the last search's report

Every key is a hash of what the output depends on (the teacher's sha256, the candidate's and
the stages' settings, the measurement settings), so a rerun skips what is done, a Ctrl-C loses
at most the step in progress, and a changed setting makes new files instead of reusing stale ones.
Budget verdicts are recomputed from the stored figures on every run, so a changed target needs
no new measurement when it asks for the same prompt length and concurrency.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, SupertinyError, UserError
from .search import LATENCY, QUANTS, Candidate, SearchConfig, expand, pareto_front, recommend

SEARCH_VERSION = 1
Log = Callable[[str], None]


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, obj: Any) -> None:
    """Write atomically: a Ctrl-C leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


class _Identities:
    """sha256 of models and data files, remembered by (path, size, mtime) so a rerun does not re-read gigabytes."""

    def __init__(self, work: Path) -> None:
        self.file = work / "hashes.json"
        self.known: dict[str, Any] = json.loads(self.file.read_text()) if self.file.is_file() else {}

    def of(self, what: str | os.PathLike[str]) -> str:
        from .manifest import hash_path
        from .models import resolve

        path = Path(what).expanduser()
        if not path.exists():
            path = resolve(what)[1]
        path = path.resolve()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        stamp = _key([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
        seen = self.known.get(str(path))
        if seen and seen["stamp"] == stamp:
            return seen["sha256"]
        digest = hash_path(path)
        self.known[str(path)] = {"stamp": stamp, "sha256": digest}
        _write_json(self.file, self.known)
        return digest


def _done(out: Path) -> bool:
    """An output a stage installed (its manifest is written with it, atomically)."""
    from .manifest import manifest_path

    return out.exists() and manifest_path(out).is_file()


class _Search:
    """One search's state: the inputs, the work folder, the counters of stages that ran."""

    def __init__(self, teacher: str, task: str, task_data: str, profile: Any, config: SearchConfig, work: Path,
                 log: Log) -> None:
        self.teacher, self.task, self.task_data, self.profile, self.config = teacher, task, task_data, profile, config
        self.work, self.log = work, log
        self.ids = _Identities(work)
        self.ran: Counter[str] = Counter()

    # -- making -------------------------------------------------------------------------

    def level_model(self, c: Candidate, teacher_layers: int, say: Log) -> tuple[str, str]:
        """The (pruned, distilled) checkpoint of ``c``'s level and its identity; made once per level."""
        from .compress.prune import PruneConfig

        if c.source != "teacher":
            return c.source, self.ids.of(c.source)
        teacher_id = self.ids.of(self.teacher)
        if c.layers == teacher_layers and c.mlp == 1:
            return self.teacher, teacher_id
        cfg = PruneConfig(layers=c.layers if c.layers < teacher_layers else None, mlp=c.mlp if c.mlp < 1 else None,
                          round_to=32 if c.mlp < 1 else 1, calib_tokens=self.config.prune_calib_tokens,
                          eval_tokens=256)
        mid = _key({"from": teacher_id, "prune": asdict(cfg)})
        out = self.work / "models" / f"pruned-L{c.layers}-m{c.mlp:g}-{mid}"
        if not _done(out):
            from .compress.prune import prune

            say(f"pruning the teacher to {c.layers} layers" + (f", MLP x{c.mlp:g}" if c.mlp < 1 else ""))
            out.parent.mkdir(parents=True, exist_ok=True)
            prune(self.teacher, out, cfg)
            self.ran["prune"] += 1
        if not c.kd:
            return str(out), mid
        from .compress.distill import DistillConfig, distill, work_dir

        steps = self.config.kd_steps
        dcfg = DistillConfig(loss="fkl", steps=steps, save_every=max(1, steps // 4), seed=0)
        kid = _key({"from": mid, "kd": asdict(dcfg), "data": self.ids.of(self.config.distill_data),
                    "task": self._task_id(), "teacher": teacher_id})
        kd_out = self.work / "models" / f"kd-L{c.layers}-m{c.mlp:g}-{kid}"
        if not _done(kd_out):
            say(f"knowledge transfer: {steps} steps of logit KD (fkl) from the teacher")
            distill(str(out), kd_out, self.task, self.config.distill_data, dcfg, teacher=self.teacher,
                    resume=work_dir(kd_out).is_dir(), cache_dir=str(self.work / "kd-cache"))
            self.ran["distill"] += 1
        return str(kd_out), kid

    def artifact(self, c: Candidate, model: str, mid: str, say: Log) -> str:
        """Quantize (when the quantization is a ``supertiny quantize`` scheme) and export ``model`` as ``c`` says."""
        q = QUANTS[c.quant]
        if q.stage == "quantize":
            from .compress.quantize import scheme_from_name
            from .compress.quantize_run import QuantizeConfig, quantize

            options = dict(q.scheme or {})
            qcfg = QuantizeConfig(scheme=scheme_from_name(options.pop("name"), **options), eval_tokens=256)
            qid = _key({"from": mid, "quantize": qcfg.settings()})
            qout = self.work / "models" / f"{q.name}-{qid}"
            if not _done(qout):
                say(f"quantizing ({q.name})")
                qout.parent.mkdir(parents=True, exist_ok=True)
                quantize(model, qout, qcfg)
                self.ran["quantize"] += 1
            model, mid = str(qout), qid
        exporter = q.formats[c.format]
        if c.format == "gguf":
            from .export.gguf import GGUFExportConfig, export_gguf

            gcfg = GGUFExportConfig(quant=exporter, verify_tokens=self.config.verify_tokens)
            out = self.work / "artifacts" / f"{c.name}-{_key({'from': mid, 'gguf': asdict(gcfg)})}.gguf"
            call: Callable[[], Any] = lambda: export_gguf(model, out, gcfg)  # noqa: E731
        else:
            from .export.onnx import OnnxExportConfig, export_onnx

            ocfg = OnnxExportConfig(quant=exporter, verify_tokens=self.config.verify_tokens)
            out = self.work / "artifacts" / f"{c.name}-{_key({'from': mid, 'onnx': asdict(ocfg)})}"
            call = lambda: export_onnx(model, out, ocfg)  # noqa: E731
        if not _done(out):
            say(f"exporting {c.format}" + (f" ({exporter})" if exporter else ""))
            out.parent.mkdir(parents=True, exist_ok=True)
            call()
            self.ran["export"] += 1
        return str(out)

    # -- measuring ----------------------------------------------------------------------

    def bench_config(self) -> Any:
        from .runtime.bench import BenchConfig

        b = self.profile.budget
        return BenchConfig(prompt_lengths=(b.prompt_tokens,), new_tokens=self.config.bench_new_tokens,
                           repeats=self.config.bench_repeats, warmup=1, concurrency=(b.concurrency,),
                           requests=self.config.bench_requests or b.concurrency).for_target(self.profile)

    def bench(self, artifact: str) -> dict[str, Any]:
        """The runtime benchmark of one artifact, in a child process (its own peak memory)."""
        from .runtime.bench import bench

        return bench([artifact], self.bench_config())["results"][0]

    def measure(self, artifact: str, prompt: str, say: Log) -> dict[str, Any]:
        """The benchmark, the task score and the agreement with the teacher of one artifact."""
        from .eval_run import EvalConfig, evaluate_model, evaluate_task_model

        say("benchmark (" + ", ".join(f"{k} {v}" for k, v in self.measure_settings()["bench_shape"].items()) + ")")
        result = self.bench(artifact)
        say(f"task score on {self.config.task_limit} records")
        def progress(done: int, total: int) -> None:
            if done < total and done % 10 == 0:  # a line now and then: scoring is the slowest measure
                say(f"task score: {done}/{total} records")

        t = evaluate_task_model(artifact, self.task, self.task_data, EvalConfig(prompts=()),
                                limit=self.config.task_limit, prompt=prompt, progress=progress).to_dict()
        task = {k: t[k] for k in ("task_score", "json_valid", "schema_valid", "fields", "n", "seconds", "prompt")
                if k in t}
        agreement: dict[str, Any] | None = None
        n = self.config.agreement_tokens
        if n:
            say(f"agreement with the teacher on {n} held-out tokens")
            window = min(256, n)
            try:
                r = evaluate_model(artifact, EvalConfig(max_tokens=n, window=window, stride=window, prompts=()),
                                   teacher=self.teacher)
                assert r.agreement is not None
                agreement = {"tokens": r.score.tokens, "top1_agreement": r.agreement.top1_agreement,
                             "kl_mean": r.agreement.kl_mean, "perplexity": r.score.perplexity}
            except UserError as exc:  # e.g. another vocabulary: the point stays useful without it
                agreement = {"skipped": str(exc)}
        return {"bench": result, "task": task, "agreement": agreement}

    def _task_id(self) -> str:
        return self.ids.of(self.task) if Path(self.task).is_file() else self.task

    def measure_settings(self) -> dict[str, Any]:
        bc = self.bench_config()
        return {"bench": asdict(bc), "task": self._task_id(), "task_data": self.ids.of(self.task_data),
                "task_limit": self.config.task_limit, "agreement_tokens": self.config.agreement_tokens,
                "bench_shape": {"prompt": bc.prompt_lengths[0], "concurrency": bc.concurrency[0],
                                "repeats": bc.repeats, "threads": bc.threads}}


def _row(c: Candidate, point: dict[str, Any], profile: Any) -> dict[str, Any]:
    """A candidate's table row: the figures the choice needs, the verdicts recomputed against ``profile``."""
    from .runtime.bench import measured_for_budgets, verdicts

    row: dict[str, Any] = {"name": c.name, "source": c.label or "teacher", "layers": c.layers, "mlp": c.mlp,
                           "kd": c.kd, "quant": c.quant, "format": c.format}
    if "error" in point:
        return {**row, "error": point["error"], "meets": False, "verdicts": []}
    b, measured = point["bench"], measured_for_budgets(point["bench"], profile)
    vs = verdicts(b, profile)
    agreement = point.get("agreement") or {}
    return {**row, "artifact": b["artifact"], "size_mb": b["file_size_mb"], "ttft_ms": measured.get("ttft_ms"),
            "decode_tokens_per_s": measured.get("decode_tokens_per_s"),
            "p95_latency_ms": measured.get("p95_latency_ms"), "peak_rss_mb": b["peak_rss_mb"],
            "quality": point["task"]["task_score"], "json_valid": point["task"].get("json_valid"),
            "top1_agreement": agreement.get("top1_agreement"), "kl_mean": agreement.get("kl_mean"),
            "verdicts": vs, "meets": all(v["passed"] is not False for v in vs), "cached": point.get("cached", False)}


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
    from .models import describe, resolve
    from .targets import load_target
    from .tasks import read_task_data, task_for

    say_all = log or (lambda _m: None)
    start = time.perf_counter()
    profile = load_target(target)
    spec = task_for(task)
    read_task_data(task_data, spec, labelled=True)  # a bad line fails now, named FILE:LINE
    if config.distill_data is not None and not Path(config.distill_data).is_file():
        raise InvalidInputError(f"--distill-data {config.distill_data}: no such file")
    resolve(teacher)
    teacher_layers = describe(teacher).layers
    students = {}
    for s in config.students:
        resolve(s)
        students[s] = (Path(s).name.removesuffix(".gguf"), describe(s).layers)
    candidates, notes = expand(config, teacher_layers, students)
    work = Path(work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    search = _Search(teacher, task, task_data, profile, config, work, say_all)
    settings = search.measure_settings()
    teacher_id = search.ids.of(teacher)
    for note in notes:
        say_all(f"note: {note}")
    rows = []
    for i, c in enumerate(candidates, 1):
        def say(step: str, i: int = i, c: Candidate = c) -> None:
            say_all(f"[{i}/{len(candidates)}] {c.name}: {step}")

        source = "teacher" if c.source == "teacher" else search.ids.of(c.source)
        identity = {"version": SEARCH_VERSION, "teacher": teacher_id, "measure": settings,
                    "candidate": {**asdict(c), "source": source, "label": None},
                    "stages": {"prune_calib_tokens": config.prune_calib_tokens, "kd_steps": config.kd_steps,
                               "distill_data": search.ids.of(config.distill_data) if config.kd_steps else None,
                               "verify_tokens": config.verify_tokens}}
        path = work / "points" / f"{_key(identity)}.json"
        if path.is_file() and rebench and "bench" in (point := json.loads(path.read_text())):
            # timings are the noisy figures (a busy machine): measure them again, keep the quality figures
            say("benchmark again (--rebench; quality figures cached)")
            point["bench"] = search.bench(point["bench"]["artifact"])
            search.ran["bench"] += 1
            _write_json(path, point)
        elif path.is_file():
            point = {**json.loads(path.read_text()), "cached": True}
            say("measured before (cached)")
        else:
            t0 = time.perf_counter()
            try:
                model, mid = search.level_model(c, teacher_layers, say)
                prompt = task_for(task, model).prompt  # the prompt the model was trained with: exports lose it
                artifact = search.artifact(c, model, mid, say)
                point = {"candidate": asdict(c), "identity": identity, "model": model,
                         **search.measure(artifact, prompt, say)}
                point["seconds"] = round(time.perf_counter() - t0, 1)
                search.ran["measure"] += 1
                _write_json(path, point)
                say(f"done in {point['seconds']:.0f} s: task score {point['task']['task_score']:.3f}")
            except SupertinyError as exc:  # one broken candidate does not end the search; a rerun retries it
                point = {"error": f"{type(exc).__name__}: {exc}"}
                say(f"failed: {exc}")
        rows.append(_row(c, point, profile))
    front = pareto_front(rows, config.objectives)
    for i, row in enumerate(rows):
        row["on_front"] = i in front
    best, closest = recommend(rows, LATENCY[config.latency])
    report = {"teacher": str(teacher), "teacher_sha256": teacher_id, "task": task, "task_data": str(task_data),
              "target": profile.name, "budgets": profile.budget.limits(), "latency": config.latency,
              "objectives": config.objectives, "settings": {k: v for k, v in settings.items() if k != "bench"},
              "config": asdict(config), "notes": notes, "points": rows, "front": [rows[i]["name"] for i in front],
              "recommended": rows[best]["name"] if best is not None else None,
              "closest": rows[closest]["name"] if closest is not None else None,
              "ran": {k: search.ran[k] for k in ("prune", "distill", "quantize", "export", "measure", "bench")},
              "work": str(work), "seconds": round(time.perf_counter() - start, 1)}
    _write_json(work / "search.json", report)
    return report
