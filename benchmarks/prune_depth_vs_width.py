"""Depth vs width pruning of the default teacher at a matched parameter count.

One run, side by side, on ``--threads`` threads (default 2):
  - ``depth``: half the decoder layers dropped (block influence);
  - ``width``: query heads 9 -> 6, MLP 1536 -> 768, hidden 576 -> 512 — about the same
    parameters removed as ``depth``, widths that stay multiples of 256 where llama.cpp's
    K-quants want them;
  - for the teacher and both students: parameters, perplexity / KL / top-1 against the
    teacher right after pruning (held-out corpus tokens, no training), then for GGUF
    Q8_0 in llama.cpp and ONNX int4 (genai graph) in supertiny's onnxruntime engine:
    time to first token at prompts of 32/256/1024 tokens and decode tokens/s (median
    of ``--repeats``).

The paper's claim under test: depth pruning serves long prompts better, width pruning
keeps matrix products efficient. The table says which wins here; nothing is assumed.

Run:  .venv/bin/python benchmarks/prune_depth_vs_width.py [--keep DIR] [--no-onnx]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from dataclasses import asdict

from _common import start

PROMPTS = (32, 256, 1024)
STUDENTS = {
    "depth": {"drop_layers": 0.5},
    "width": {"heads": 6, "mlp": 768, "hidden": 512},
}


def fresh(engine) -> None:
    """No prompt cache carried over from the last call (llama.cpp reuses a shared prefix)."""
    if hasattr(engine, "reset"):
        engine.reset()


def ttft(engine, prompt: list[int], repeats: int) -> float:
    """Median ms from the prompt to the first generated token."""
    times = []
    for _ in range(repeats):
        fresh(engine)
        t0 = time.perf_counter()
        next(iter(engine.stream(prompt, 1, stop_ids=[])))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def decode_rate(engine, prompt: list[int], new: int, repeats: int) -> float:
    """Median tokens/s after the first token."""
    rates = []
    for _ in range(repeats):
        fresh(engine)
        first = None
        n = 0
        for _tok in engine.stream(prompt, new + 1, stop_ids=[]):
            n += 1
            if first is None:
                first = time.perf_counter()
        rates.append((n - 1) / (time.perf_counter() - first))
    return statistics.median(rates)


def speed(engine, ids: list[int], new: int, repeats: int) -> dict[str, float]:
    engine.generate(ids[:16], 4, stop_ids=[])  # warm-up
    row = {f"ttft{n}": ttft(engine, ids[:n], repeats) for n in PROMPTS}
    row["decode"] = decode_rate(engine, ids[:32], new, repeats)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-onnx", action="store_true", help="GGUF only")
    args, work = start(ap, "supertiny-prune-bench-", keep_help="folder to keep the students and artifacts in")

    from supertiny import evaluate as ev
    from supertiny.manifest import read_manifest
    from supertiny.models import load_model
    from supertiny.runtime.engines.llamacpp import LlamaCppEngine
    from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf
    from supertiny.stages.prune import PruneConfig, prune

    teacher = load_model("default")
    ids = ev.tokenize_text(teacher.tokenizer, ev.read_text(ev.default_corpus_path()))[-1100:]
    onnx = not args.no_onnx and importlib.util.find_spec("onnxruntime_genai") is not None
    rows = {"teacher": {"params": teacher.model.num_parameters(), "ppl": float("nan"), "kl": 0.0, "top1": 1.0}}
    sources = {"teacher": "default"}
    for name, kw in STUDENTS.items():
        report = read_manifest(work / name) if (work / name).is_dir() else None
        if report is None or report.settings != asdict(PruneConfig(overwrite=True, **kw)):
            print(f"[{name}] pruning", file=sys.stderr)
            report = prune("default", work / name, PruneConfig(overwrite=True, **kw))
        # else: the same student from a --keep folder
        q = report.quality
        rows[name] = {"params": report.details["parameters"]["after"], "ppl": q["student_perplexity"],
                      "kl": q["kl_mean"], "top1": q["top1_agreement"]}
        rows["teacher"]["ppl"] = q["teacher_perplexity"]
        sources[name] = str(work / name)
    for name, src in sources.items():
        print(f"[{name}] GGUF Q8_0", file=sys.stderr)
        gguf = work / f"{name}-q8_0.gguf"
        export_gguf(src, gguf, GGUFExportConfig(dtype="f16", quant="Q8_0", verify=False, threads=args.threads))
        engine = LlamaCppEngine(gguf, n_ctx=max(PROMPTS) + args.new_tokens + 8, n_threads=args.threads)
        rows[name]["gguf"] = speed(engine, ids, args.new_tokens, args.repeats)
        del engine
        if onnx:
            from supertiny.runtime.engines.onnxrt import OnnxEngine
            from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx

            print(f"[{name}] ONNX int4 (genai graph)", file=sys.stderr)
            out = work / f"{name}-onnx-int4"
            export_onnx(src, out, OnnxExportConfig(format="genai", quant="int4", verify=False, overwrite=True))
            rows[name]["onnx"] = speed(OnnxEngine(out, threads=args.threads), ids, args.new_tokens, args.repeats)

    print(f"\nSmolLM2-135M-Instruct pruned without training, {args.threads} threads, median of {args.repeats}; "
          f"quality on held-out corpus tokens vs the teacher\n")
    head = ["model", "params M", "perplexity", "KL", "top-1"]
    runtimes = ["gguf"] + (["onnx"] if onnx else [])
    label = {"gguf": "Q8_0", "onnx": "ONNX int4"}
    for rt in runtimes:
        head += [f"{label[rt]} TTFT@{n} ms" for n in PROMPTS] + [f"{label[rt]} decode tok/s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    base = rows["teacher"]
    for name, r in rows.items():
        cells = [name, f"{r['params'] / 1e6:.1f}", f"{r['ppl']:.1f}", f"{r['kl']:.2f}", f"{r['top1']:.2f}"]
        for rt in runtimes:
            s, b = r[rt], base[rt]
            cells += [f"{s[f'ttft{n}']:.0f} ({b[f'ttft{n}'] / s[f'ttft{n}']:.2f}x)" for n in PROMPTS]
            cells.append(f"{s['decode']:.1f} ({s['decode'] / b['decode']:.2f}x)")
        print("| " + " | ".join(cells) + " |")
    print("\n(x): speed-up over the teacher in the same runtime")


if __name__ == "__main__":
    main()
