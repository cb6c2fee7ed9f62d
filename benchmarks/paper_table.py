"""The paper's table in miniature: domain teacher vs final student vs a MiniLM baseline on factory-tickets.

One run on this machine, side by side, on the same test split and on each hand-written hold-out set:
  - rows: the domain teacher as trained (Hugging Face dir, F32 bytes), the same teacher as
    an F16 GGUF (exported into WORK once, the speed reference), the final student (a
    ``.gguf``/model path, or a bundle folder whose ``supertiny.json`` has ``"stage": "bundle"``
    and ``details.primary`` naming its model file), and all-MiniLM-L6-v2 with heads trained
    on frozen embeddings (``supertiny.baselines.minilm``; asset by the first-tag rule);
  - columns: bytes, parameters, compression vs the teacher's F32 bytes, task score and
    per-field accuracy (``supertiny eval MODEL --task factory-tickets --json``; llama.cpp for
    GGUFs), decode tokens/s and TTFT (``supertiny.runtime.bench.measure``, one config for both GGUFs),
    and for MiniLM its encode latency per ticket (batch 1) instead of decode figures;
  - the issue's target ratios: bytes vs teacher F32 (>= 10x), decode vs teacher F16 GGUF
    (>= 3x), task score vs the teacher (>= 95%), student vs MiniLM on the fields both predict.

Each measurement is cached in WORK/cache/ under the sha256 of the model and its settings, so
a rerun redoes only what changed. Writes WORK/paper_table.json (or --json) and a plot of task
score vs size (WORK/paper_table.png or --plot). Timings on a shared machine are noisy: read
the ratios, measured in one run, before the absolute figures.

Run:  python benchmarks/paper_table.py --teacher DIR --student S.gguf|BUNDLE --work DIR --scores-only
      flock /work/bench.lock python benchmarks/paper_table.py --teacher DIR --student S.gguf|BUNDLE \\
          --work DIR [--limit N] [--threads 2]
(the first, optional, computes the untimed task scores outside the lock; the second reuses them)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "factory_tickets" / "data"
TASK = "factory-tickets"
FIELDS = ("asset", "category", "severity", "line_stopped")
CACHE_VERSION = 1  # bump when what a cached measurement holds changes
MODEL_SUFFIXES = (".safetensors", ".gguf", ".onnx", ".onnx_data", ".data")


def resolve_student(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """The model file to measure and the bundle it came from (None: ``path`` is the model itself).

    A bundle is a folder whose ``supertiny.json`` says ``"stage": "bundle"``; its
    ``details["primary"]`` names the deployable model file inside the folder.
    """
    from supertiny.errors import UserError
    from supertiny.manifest import bundle_primary

    p = Path(path).expanduser()
    if not p.exists():
        raise SystemExit(f"{p}: no such file or folder")
    try:
        model = bundle_primary(p)  # None: not a bundle (a model file, or a stage folder measured as it is)
    except UserError as exc:
        raise SystemExit(str(exc)) from None
    return (p, None) if model is None else (model.resolve(), p)


def model_bytes(path: Path) -> int:
    """Bytes of a model file, or of a folder's weight files (safetensors, GGUF, ONNX and its data)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name.endswith(MODEL_SUFFIXES))


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (supertiny's ``hash_path``)."""
    from supertiny.manifest import hash_path

    return hash_path(path)


def cached(work: Path, kind: str, key: dict[str, Any], compute: Any) -> dict[str, Any]:
    """``compute()`` once per ``key`` (its JSON, hashed) and kind; later runs read WORK/cache/."""
    digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **key}, sort_keys=True).encode()).hexdigest()[:20]
    path = work / "cache" / f"{kind}-{digest}.json"
    if path.is_file():
        out = json.loads(path.read_text())
        out["cached"] = True
        return out
    t0 = time.perf_counter()
    out = compute()
    out["measured_s"] = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, **out}, indent=1))
    tmp.replace(path)
    out["cached"] = False
    return out


def cli(*argv: Any) -> list[str]:
    return [sys.executable, "-m", "supertiny", *map(str, argv)]


def teacher_gguf(teacher: Path, teacher_sha: str, work: Path, threads: int) -> Path:
    """The teacher as an F16 GGUF in WORK, exported once (redone when the teacher's hash changes)."""
    out = work / "teacher-f16.gguf"
    sidecar = out.with_name(out.name + ".supertiny.json")
    if out.is_file() and sidecar.is_file():
        source = json.loads(sidecar.read_text()).get("source", {})
        if source.get("sha256") == teacher_sha:
            return out
    print(f"exporting {teacher} to {out} (F16) ...", file=sys.stderr)
    subprocess.run(cli("export", "gguf", teacher, out, "--dtype", "f16", "--threads", threads), check=True,
                   stdout=subprocess.DEVNULL)
    return out


def task_eval(model: Path, data: Path, limit: int | None, threads: int, backend: str = "auto") -> dict[str, Any]:
    """``supertiny eval MODEL --task factory-tickets --data DATA --json`` (predictions dropped)."""
    argv = cli("eval", model, "--task", TASK, "--data", data, "--threads", threads, "--backend", backend, "--json")
    if limit:
        argv += ["--limit", str(limit)]
    proc = subprocess.run(argv, check=True, capture_output=True, text=True)
    report = json.loads(proc.stdout)
    return {k: report[k] for k in ("task_score", "fields", "n", "json_valid", "schema_valid", "seconds", "prompt")} \
        | {"parameters": report["model"].get("parameters")}


def speed(model: Path, config: Any) -> dict[str, Any]:
    """Median decode tokens/s and TTFT at the configured prompt length (``supertiny.runtime.bench.measure``)."""
    from supertiny.runtime.bench.measure import bench

    result = bench([str(model)], config)["results"][0]
    row = result["prompts"][0]
    return {"decode_tokens_per_s": row["decode_tokens_per_s_p50"], "ttft_ms": row["ttft_ms_p50"],
            "prompt_tokens": row["prompt_tokens"], "new_tokens": row["new_tokens"], "runs": row["runs"],
            "load_s": result["load_s"], "peak_rss_mb": result["peak_rss_mb"], "backend": result["backend"]}


def minilm_row(data: Path, limit: int | None, threads: int) -> dict[str, Any]:
    """Train the MiniLM heads on train/dev, score them on ``data`` with the task metric."""
    from supertiny.baselines.minilm import MiniLM, TaskBaseline
    from supertiny.tasks import load_task, read_task_data

    task = load_task(TASK)
    train, dev = (read_task_data(DATA / f"{s}.jsonl", task, labelled=True) for s in ("train", "dev"))
    test = read_task_data(data, task, labelled=True)[:limit]
    encoder = MiniLM(threads=threads)
    base = TaskBaseline.train(task, train, dev, encoder)
    evaluation, per_ticket = base.evaluate(test)
    return {**evaluation.score.to_dict(), "parameters": encoder.parameters, "bytes": encoder.file_bytes,
            "encode_ms_per_ticket": per_ticket * 1000, "predicted_fields": base.predicted_fields,
            "rules": sorted(base.rules), "heads": {k: h.chosen for k, h in base.heads.items()},
            "train_seconds": base.seconds}


def holdout_rows(sets: list[Path], scored: dict[str, tuple[str, Path, str]], work: Path, args: Any,
                 say: Any) -> dict[str, dict[str, Any]]:
    """Each hold-out set (text no generator wrote) scored by the models of ``scored`` (key -> (label, path, sha))
    and, unless left out, the MiniLM baseline (trained once per set's cache entry on the same train/dev)."""
    out: dict[str, dict[str, Any]] = {}
    for data in sets:
        key = {"data": content_hash(data), "limit": None}
        rows: dict[str, Any] = {}
        for name, (label, path, sha) in scored.items():
            say(f"scoring {label} on {data.name}")
            rows[name] = {"name": label, **cached(work, "eval", {"model": sha, **key, "backend": "auto"},
                                                   lambda p=path, d=data: task_eval(p, d, None, args.threads))}
        if not args.no_baseline:
            from supertiny.baselines.minilm import minilm_dir

            say(f"MiniLM baseline on {data.name}")
            mkey = {"model": content_hash(minilm_dir() / "model.safetensors"), **key,
                    "train": content_hash(DATA / "train.jsonl"), "dev": content_hash(DATA / "dev.jsonl")}
            rows["minilm"] = {"name": "MiniLM-L6 + heads (asset: rule)",
                              **cached(work, "minilm", {**mkey, "threads": args.threads},
                                       lambda d=data: minilm_row(d, None, args.threads))}
        out[data.name.split(".")[0]] = rows
    return out


def holdout_table(sets: dict[str, dict[str, Any]], test: dict[str, dict[str, Any]]) -> str:
    """Task score and fields per model: the test split, then each hold-out set, side by side."""
    head = ["set", "n", "model", "task score", *FIELDS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for set_name, rows in {"test split": test, **sets}.items():
        for r in rows.values():
            if r.get("task_score") is None:
                continue
            fields = r.get("fields") or {}
            lines.append("| " + " | ".join([set_name, str(r.get("n")), r["name"], fmt(r["task_score"]),
                                            *(fmt(fields.get(f)) for f in FIELDS)]) + " |")
    return "\n".join(lines)


def versus_minilm(rows: dict[str, Any]) -> dict[str, Any] | None:
    """The hold-out target: the student's task score >= MiniLM's + 0.05, and >= MiniLM's on every field."""
    if "minilm" not in rows:
        return None
    s, b = rows["student"], rows["minilm"]
    behind = [f for f in FIELDS if s["fields"][f] < b["fields"][f]]
    return {"student": s["task_score"], "minilm": b["task_score"], "margin": s["task_score"] - b["task_score"],
            "fields_behind": behind, "met": s["task_score"] >= b["task_score"] + 0.05 and not behind}


def fmt(x: Any, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of ``rows``."""
    head = ["model", "MB", "params (M)", "x smaller vs F32", "task score", *FIELDS, "decode tok/s", "TTFT ms",
            "encode ms/ticket"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        fields = r.get("fields") or {}
        lines.append("| " + " | ".join([
            r["name"], fmt(r["bytes"] / 1e6, ".1f"), fmt(r["parameters"] and r["parameters"] / 1e6, ".1f"),
            fmt(r["compression"], ".1f"), fmt(r.get("task_score")), *(fmt(fields.get(f)) for f in FIELDS),
            fmt(r.get("decode_tokens_per_s"), ".1f"), fmt(r.get("ttft_ms"), ".0f"),
            fmt(r.get("encode_ms_per_ticket"), ".1f")]) + " |")
    return "\n".join(lines)


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's target ratios of the student against the teacher and the MiniLM baseline."""
    t32, t16, s, b = rows["teacher-f32"], rows["teacher-f16"], rows["student"], rows.get("minilm")
    ref = t32 if t32.get("task_score") is not None else t16
    decode = s.get("decode_tokens_per_s"), t16.get("decode_tokens_per_s")
    out: dict[str, Any] = {
        "bytes_vs_teacher_f32": {"value": t32["bytes"] / s["bytes"], "target": 10.0},
        "decode_vs_teacher_f16_gguf": {"value": decode[0] / decode[1] if None not in decode else None,
                                       "target": 3.0},
        "score_vs_teacher": {"value": s["task_score"] / ref["task_score"], "target": 0.95,
                             "teacher_row": ref["name"]},
    }
    for r in out.values():
        r["met"] = None if r["value"] is None else r["value"] >= r["target"]  # None: not measured (--scores-only)
    if b is not None:
        both = [f for f in FIELDS if f in b["predicted_fields"]]
        student = sum(s["fields"][f] for f in both) / len(both)
        base = sum(b["fields"][f] for f in both) / len(both)
        out["student_vs_minilm"] = {"fields": both, "student": student, "minilm": base,
                                    "per_field": {f: [s["fields"][f], b["fields"][f]] for f in both},
                                    "met": student > base}
    return out


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Task score vs size (MB, log scale), one labelled point per scored row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        if r.get("task_score") is None:
            continue
        ax.scatter(r["bytes"] / 1e6, r["task_score"], s=60)
        ax.annotate(r["name"], (r["bytes"] / 1e6, r["task_score"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    ax.set_xscale("log")
    sizes = [r["bytes"] / 1e6 for r in rows if r.get("task_score") is not None]
    if sizes:  # room on the right for the labels
        ax.set_xlim(min(sizes) / 1.5, max(sizes) * 4)
    ax.set_xlabel("model bytes (MB, log scale)")
    ax.set_ylabel("factory-tickets task score")
    ax.set_title("teacher vs student vs MiniLM baseline (same test split)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="The domain teacher, a Hugging Face directory (F32).")
    ap.add_argument("--student", required=True, help="The final student: a model file (.gguf) or a bundle folder.")
    ap.add_argument("--work", required=True, help="Work folder: the teacher's F16 GGUF and the cache.")
    ap.add_argument("--data", default=str(DATA / "test.jsonl"), help="Labelled test split.")
    ap.add_argument("--limit", type=int, default=None, help="Score only the first N test records.")
    ap.add_argument("--holdout", action="append", default=None, metavar="FILE",
                    help="A hand-written labelled set scored beside --data by the teacher (F16 GGUF), the student "
                    "and MiniLM (repeatable; default: the example's handwritten.jsonl and handwritten_dev.jsonl; "
                    "'none': no hold-out set).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128, help="Prompt length of the TTFT/decode runs.")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--score-f32", action="store_true", help="Also score the F32 teacher (torch; slow).")
    ap.add_argument("--no-baseline", action="store_true", help="Leave the MiniLM row out.")
    ap.add_argument("--scores-only", action="store_true",
                    help="Only the task scores (cached for the next run): nothing timed, so no lock needed.")
    ap.add_argument("--json", default=None, help="Write the results here (default WORK/paper_table.json).")
    ap.add_argument("--plot", default=None, help="Write the plot here (default WORK/paper_table.png).")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from supertiny.runtime.bench.measure import BenchConfig

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = Path(args.teacher)
    student, bundle = resolve_student(args.student)
    data = Path(args.data)
    t0 = time.perf_counter()
    teacher_sha = content_hash(teacher)
    t16 = teacher_gguf(teacher, teacher_sha, work, args.threads)
    data_key = {"data": content_hash(data), "limit": args.limit}
    config = BenchConfig(prompt_lengths=(args.prompt_tokens,), new_tokens=args.new_tokens, repeats=args.repeats,
                         warmup=1, concurrency=(1,), requests=1, threads=args.threads)
    bench_key = {"bench": {"prompt": args.prompt_tokens, "new": args.new_tokens, "repeats": args.repeats,
                           "threads": args.threads}}

    def say(what: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {what}", file=sys.stderr, flush=True)

    rows: dict[str, dict[str, Any]] = {}
    f32_bytes = model_bytes(teacher)
    for name, label, path in (("teacher-f32", "domain teacher (HF, F32)", teacher),
                              ("teacher-f16", "domain teacher (GGUF F16)", t16),
                              ("student", f"student ({student.name})", student)):
        sha = teacher_sha if path == teacher else content_hash(path)
        row: dict[str, Any] = {"name": label, "path": str(path), "sha256": sha, "bytes": model_bytes(path)}
        if name != "teacher-f32" or args.score_f32:
            say(f"scoring {label}")
            row |= cached(work, "eval", {"model": sha, **data_key, "backend": "auto"},
                          lambda p=path: task_eval(p, data, args.limit, args.threads))
        if name != "teacher-f32" and not args.scores_only:
            say(f"timing {label}")
            row |= {"speed": cached(work, "bench", {"model": sha, **bench_key}, lambda p=path: speed(p, config))}
            row |= {k: row["speed"][k] for k in ("decode_tokens_per_s", "ttft_ms")}
        if row.get("parameters") is None:
            from supertiny.models import describe

            row["parameters"] = describe(path).parameters
        row["compression"] = f32_bytes / row["bytes"]
        rows[name] = row
    if bundle is not None:
        rows["student"]["bundle"] = str(bundle)
    if not args.no_baseline and not args.scores_only:  # its encode latency is timed with its score
        from supertiny.baselines.minilm import minilm_dir

        say("training and scoring the MiniLM baseline")
        mdir = minilm_dir()
        key = {"model": content_hash(mdir / "model.safetensors"), **data_key,
               "train": content_hash(DATA / "train.jsonl"), "dev": content_hash(DATA / "dev.jsonl")}
        b = cached(work, "minilm", {**key, "threads": args.threads},
                   lambda: minilm_row(data, args.limit, args.threads))
        rows["minilm"] = {"name": "MiniLM-L6 + heads (asset: rule)", **b, "compression": f32_bytes / b["bytes"]}
    ordered = list(rows.values())
    sets = [] if args.holdout == ["none"] else [Path(h) for h in args.holdout or
                                                 (DATA / "handwritten.jsonl", DATA / "handwritten_dev.jsonl")]
    scored = {k: (rows[k]["name"], Path(rows[k]["path"]), rows[k]["sha256"]) for k in ("teacher-f16", "student")}
    held = holdout_rows(sets, scored, work, args, say)
    result = {"task": TASK, "data": str(data), "n": rows["student"].get("n"), "threads": args.threads,
              "bench_config": bench_key["bench"], "rows": ordered, "ratios": ratios(rows),
              "holdout": {k: {"rows": v, "student_vs_minilm": versus_minilm(v)} for k, v in held.items()},
              "wall_s": time.perf_counter() - t0, "machine": {"cores": os.cpu_count(), "platform": sys.platform}}
    out_json = Path(args.json) if args.json else work / "paper_table.json"
    out_png = Path(args.plot) if args.plot else work / "paper_table.png"
    out_json.write_text(json.dumps(result, indent=1))
    plot(ordered, out_png)

    print(f"\n{TASK}, {result['n']} test tickets ({data.name}), {args.threads} threads, this machine; "
          f"decode/TTFT: {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, median of {args.repeats}")
    print(table(ordered))
    r = result["ratios"]
    verdict = {True: "met", False: "NOT met", None: "not measured (--scores-only)"}
    print(f"\nbytes vs teacher F32:       {fmt(r['bytes_vs_teacher_f32']['value'], '.1f')} x (target >= 10x) "
          f"{verdict[r['bytes_vs_teacher_f32']['met']]}")
    print(f"decode vs teacher F16 GGUF: {fmt(r['decode_vs_teacher_f16_gguf']['value'], '.2f')} x (target >= 3x) "
          f"{verdict[r['decode_vs_teacher_f16_gguf']['met']]}")
    print(f"score vs teacher:           {fmt(r['score_vs_teacher']['value'], '.1%')} of "
          f"{r['score_vs_teacher']['teacher_row']} (target >= 95%) {verdict[r['score_vs_teacher']['met']]}")
    if "student_vs_minilm" in r:
        m = r["student_vs_minilm"]
        per = ", ".join(f"{f} {a:.3f} vs {b:.3f}" for f, (a, b) in m["per_field"].items())
        print(f"student vs MiniLM ({len(m['fields'])} fields): {m['student']:.3f} vs {m['minilm']:.3f} "
              f"{'above' if m['met'] else 'NOT above'} ({per})")
    if held:
        print("\nhold-out sets (hand-written; the teacher as its F16 GGUF), beside the test split:")
        print(holdout_table(held, {k: rows[k] for k in ("teacher-f16", "student", "minilm") if k in rows}))
        for name, h in result["holdout"].items():
            v = h["student_vs_minilm"]
            if v is not None:
                print(f"{name}: student {v['student']:.3f} vs MiniLM {v['minilm']:.3f} ({v['margin']:+.3f}; target "
                      f">= +0.05 and no field behind) {'met' if v['met'] else 'NOT met'}"
                      + (f"; behind on {', '.join(v['fields_behind'])}" if v["fields_behind"] else ""))
    cached_rows = [x["name"] for x in ordered if x.get("cached")]
    print(f"\nwall {result['wall_s']:.0f}s; from cache: {', '.join(cached_rows) or 'nothing'}; "
          f"wrote {out_json} and {out_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
