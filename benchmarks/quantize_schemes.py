"""Quantization schemes × methods × formats: size, quality and speed, side by side.

For the default teacher and one pruned student, in one run:
  - GGUF, llama.cpp on both sides: the F16 export (the reference), llama.cpp's own Q8_0,
    Q4_0, Q4_0 / IQ4_NL / Q4_K_M with an importance matrix, and supertiny's schemes
    (``supertiny quantize``) carried into the file (Q4_0/Q4_1/Q8_0 blocks of their codes);
  - ONNX, onnxruntime on both sides: the float32 export (the reference), onnxruntime's
    own int4 (round to nearest), and supertiny's schemes carried into MatMulNBits;
  - FP8 (E4M3, weights and activations): simulated in torch (no FP8 kernel on a CPU),
    against the float torch model.
Quality is scored on held-out text that is neither the calibration text (the bundled
corpus: the calibrated methods and the importance matrices read its first
``--calib-tokens`` tokens) nor the bundled corpus: the Python language reference
topics that ship with CPython (``pydoc_data.topics``). Speed: decode tokens/s and TTFT
of a 256-token prompt, 2 threads, median of 2 runs after a warm-up.

Run:  .venv/bin/python benchmarks/quantize_schemes.py [--tokens 4096] [--calib-tokens 4096]
          [--student DIR | --student-layers 24] [--quick] [--asymmetric] [--only W1,W2] [--build-only] [--keep DIR]
It prints one table per model and writes quantize_schemes.png (KL to the reference vs
size) and quantize_schemes.json into the work folder; ``--replot`` redraws the PNG from
that JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import start, teacher_hf_copy

THREADS = 2


def heldout_text(work: Path) -> Path:
    """The Python language reference topics bundled with CPython, written once to ``work``."""
    from pydoc_data.topics import topics

    path = work / "heldout-pydoc-topics.txt"
    if not path.exists():
        path.write_text("\n\n".join(topics[k] for k in sorted(topics)), encoding="utf-8")
    return path


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(src: Path, work: Path, calib_tokens: int, quick: bool, asymmetric: bool) -> list[dict[str, Any]]:
    """Every artifact of one model (made once; reused from ``work`` on a rerun)."""
    from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf
    from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx
    from supertiny.stages.quantize.apply import FP8, W4A16, W8A8
    from supertiny.stages.quantize.stage import QuantizeConfig, quantize

    rows: list[dict[str, Any]] = []

    def ours(name: str, scheme: Any) -> Path:
        q = work / f"q-{name}"
        if not q.exists():
            say(f"quantize {name}")
            quantize(str(src), q, QuantizeConfig.for_scheme(scheme, calib_tokens=calib_tokens, eval_tokens=16))
        return q

    def gguf(label: str, family: str, source: Path, **kw: Any) -> None:
        out = work / f"{label.replace(' ', '_').replace('+', '-')}.gguf"
        if not out.exists():
            say(f"export {label}")
            export_gguf(str(source), out, GGUFExportConfig(verify=False, **kw))
        rows.append({"label": label, "format": "gguf", "family": family, "path": out, "bytes": out.stat().st_size})

    def onnx(label: str, family: str, source: Path, **kw: Any) -> None:
        out = work / f"onnx-{label.replace(' ', '_').replace('+', '-')}"
        if not out.exists():
            say(f"export ONNX {label}")
            export_onnx(str(source), out, OnnxExportConfig(verify=False, **kw))
        size = sum(p.stat().st_size for p in out.glob("model.onnx*"))
        rows.append({"label": label, "format": "onnx", "family": family, "path": out, "bytes": size})

    imx = {"imatrix_tokens": calib_tokens}
    gguf("F16", "reference", src)
    gguf("llama.cpp Q8_0", "llama.cpp", src, quant="Q8_0")
    gguf("llama.cpp Q4_0", "llama.cpp", src, quant="Q4_0")
    gguf("llama.cpp Q4_0+imx", "llama.cpp", src, quant="Q4_0", **imx)
    gguf("llama.cpp IQ4_NL+imx", "llama.cpp", src, quant="IQ4_NL", **imx)
    gguf("llama.cpp Q4_K_M+imx", "llama.cpp", src, quant="Q4_K_M", **imx)
    best = W4A16(group=32, symmetric=True, method="gptq", head_bits=8)
    schemes = [("w8a8", W8A8()), ("w4-rtn", W4A16(group=32, symmetric=True)),
               ("w4-gptq", W4A16(group=32, symmetric=True, method="gptq")),
               ("w4-awq", W4A16(group=32, symmetric=True, method="awq")),
               ("w4-gptq-h8", best), ("w4-awq-h8", W4A16(group=32, symmetric=True, method="awq", head_bits=8)),
               # int8 where it saves most KL per byte, within a 92 MB file (~2 MB of it vocabulary and norms)
               ("w4-gptq-90mb", W4A16(group=32, symmetric=True, method="gptq", max_mb=90.0)),
               ("w4-awq-90mb", W4A16(group=32, symmetric=True, method="awq", max_mb=90.0))]
    if asymmetric:  # Q4_1 blocks: 5 bits/weight, past a 92 MB file for the teacher with an 8-bit head
        schemes.append(("w4-gptq-asym-h8", W4A16(group=32, method="gptq", head_bits=8)))
    if quick:
        schemes = [schemes[0], schemes[1], schemes[4]]
    for name, scheme in schemes:
        gguf(f"ours {name}", "supertiny", ours(name, scheme))
    onnx("float32", "reference", src)
    onnx("onnxruntime int4", "onnxruntime", src, quant="int4")
    onnx("ours w4-gptq-h8", "supertiny", ours("w4-gptq-h8", best))
    onnx("ours w8a8", "supertiny", ours("w8a8", W8A8()))
    rows.append({"label": "ours fp8 (simulated)", "format": "torch", "family": "supertiny",
                 "scheme": FP8(granularity="channel")})
    return rows


def measure(rows: list[dict[str, Any]], src: Path, work: Path, ids: list[int], held: Path) -> None:
    """Quality (vs the same format's reference) and speed of every row, in place."""
    from supertiny import evaluate as ev
    from supertiny.runtime.bench.measure import BenchConfig, bench_artifact
    from supertiny.runtime.engines.llamacpp import LlamaCppEngine
    from supertiny.runtime.engines.onnxrt import OnnxEngine
    from supertiny.stages.quantize.stage import QuantizeConfig, quantize

    engines = {"gguf": lambda p: LlamaCppEngine(p, n_ctx=512, n_threads=THREADS, logits_all=True),
               "onnx": lambda p: OnnxEngine(p, threads=THREADS)}
    refs = {r["format"]: engines[r["format"]](r["path"]) for r in rows if r["family"] == "reference"}
    speed = BenchConfig(prompt_lengths=(256,), new_tokens=32, repeats=2, warmup=1, concurrency=(1,), requests=1,
                        threads=THREADS)
    for r in rows:
        say(f"score {r['format']} {r['label']}")
        if r["format"] == "torch":  # the stage's own report: activation quantization included
            q = work / "q-fp8"
            if not q.exists():
                quantize(str(src), q, QuantizeConfig.for_scheme(r["scheme"], eval_tokens=len(ids)), eval_text=str(held))
            m = json.loads((q / "supertiny.json").read_text())
            qual = m["quality"]
            r.update(bytes=m["details"]["size_equivalent_bytes"], ratio=qual["perplexity_ratio"], kl=qual["kl_mean"],
                     top1=qual["top1_agreement"], ppl=qual["perplexity"])
            r.pop("scheme")
            continue
        engine = engines[r["format"]](r["path"])
        a = ev.agreement(refs[r["format"]].logits, engine.logits, ids, window=512, stride=256)
        del engine
        r.update(ppl=a.student.perplexity, ratio=a.student.perplexity / a.teacher.perplexity, kl=a.kl_mean,
                 top1=a.top1_agreement)
        b = bench_artifact(str(r["path"]), speed)["prompts"][0]
        r.update(decode=b["decode_tokens_per_s_p50"], ttft=b["ttft_ms_p50"])


def table(title: str, rows: list[dict[str, Any]], params: int) -> None:
    print(f"\n{title}\n")
    print("| artifact | format | size MB | bits/weight | ppl | ppl ratio | KL | top-1 | decode tok/s | TTFT@256 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = (f"{r['decode']:.1f} | {r['ttft']:.0f}" if "decode" in r else "n/a (simulated) | n/a")
        print(f"| {r['label']} | {r['format']} | {r['bytes'] / 1e6:.1f} | {r['bytes'] * 8 / params:.2f} | "
              f"{r['ppl']:.3f} | {r['ratio']:.3f}x | {r['kl']:.4f} | {r['top1']:.1%} | {speed} |")


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is missing (pip install 'supertiny[plot]')")
        return
    colors = {"reference": "black", "llama.cpp": "tab:blue", "onnxruntime": "tab:orange", "supertiny": "tab:green"}
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items(), strict=True):
        for r in rows:
            if r["family"] == "reference":
                continue
            marker = {"gguf": "o", "onnx": "s", "torch": "^"}[r["format"]]
            ax.scatter(r["bytes"] / 1e6, r["kl"], c=colors[r["family"]], marker=marker)
            ax.annotate(r["label"].replace("llama.cpp ", "").replace("ours ", ""), (r["bytes"] / 1e6, r["kl"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        # KL to the same format's reference: unlike a perplexity ratio it stays meaningful for a student
        # specialised to a task, whose perplexity on general held-out text is huge and noisy
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("file size (MB)")
        ax.set_ylabel("mean KL(reference || quantized), nats (held-out text)")
        for fam, c in colors.items():
            if fam != "reference":
                ax.scatter([], [], c=c, label=fam)
        ax.legend(fontsize=8, title="o GGUF  s ONNX  ^ simulated", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096, help="held-out tokens scored")
    ap.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens (bundled corpus)")
    ap.add_argument("--student", default=None, help="a pruned (and distilled) student directory; default: the "
                    "teacher depth-pruned to --student-layers layers")
    ap.add_argument("--student-layers", type=int, default=24)
    ap.add_argument("--no-student", action="store_true")
    ap.add_argument("--quick", action="store_true", help="three of supertiny's schemes instead of six")
    ap.add_argument("--asymmetric", action="store_true", help="add W4A16 GPTQ with zero points (GGUF Q4_1)")
    ap.add_argument("--only", default=None, help="measure only the rows whose label contains one of these "
                    "comma-separated words (and the references)")
    ap.add_argument("--build-only", action="store_true", help="make the artifacts (into --keep) and stop; a second "
                    "run measures them, e.g. on a quiet machine")
    ap.add_argument("--replot", action="store_true", help="redraw the PNG from --keep's quantize_schemes.json")
    args, work = start(ap, "supertiny-quant-", keep_help="folder to keep (and reuse) the artifacts in")
    if args.replot:
        plot(json.loads((work / "quantize_schemes.json").read_text()), work / "quantize_schemes.png")
        return

    from supertiny import evaluate as ev
    from supertiny.models import load_model
    from supertiny.stages.prune import PruneConfig, prune

    held = heldout_text(work)
    models = {"default teacher (SmolLM2-135M)": teacher_hf_copy(work)}
    if not args.no_student:
        student = Path(args.student) if args.student else work / f"student-{args.student_layers}l"
        if not student.exists():
            say(f"pruning the teacher to {args.student_layers} layers")
            prune("default", student, PruneConfig(layers=args.student_layers))
        models[f"pruned student ({student.name})"] = student
    results = {}
    for title, src in models.items():
        sub = work / f"runs-{src.name}"
        sub.mkdir(exist_ok=True)
        lm = load_model(str(src))
        ids = ev.tokenize_text(lm.tokenizer, held.read_text(encoding="utf-8"))[:args.tokens]
        params = sum(p.numel() for p in lm.model.parameters())
        del lm
        rows = build(src, sub, args.calib_tokens, args.quick, args.asymmetric)
        if args.only:  # the references, and the rows named
            rows = [r for r in rows if r["family"] == "reference" or any(k in r["label"] for k in args.only.split(","))]
        if args.build_only:
            continue
        measure(rows, src, sub, ids, held)
        results[title] = rows
        table(f"{title}: {params / 1e6:.1f}M parameters; quality on {len(ids)} held-out tokens ({held.name}) vs the "
              f"same format's reference; {THREADS} threads", rows, params)
    if args.build_only:
        print(f"artifacts built in {work}; run again without --build-only to measure")
        return
    plot(results, work / "quantize_schemes.png")
    (work / "quantize_schemes.json").write_text(json.dumps(
        {k: [{**r, "path": str(r.get("path", ""))} for r in v] for k, v in results.items()}, indent=1))
    print(f"artifacts in {work}")


if __name__ == "__main__":
    main()
