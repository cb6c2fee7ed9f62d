"""ONNX exports of the default teacher: export time, size, speed and quality per scheme.

One run, side by side, on ``--threads`` threads (default 2):
  - each variant is exported from the same loaded teacher (export + quantization
    seconds, parity check off so the time is the export alone),
  - time to first token for a ``--prompt-tokens`` prompt and decode tokens/s with
    supertiny's engine (median of ``--repeats`` after a warm-up), and a reference
    runtime decoding the same file: optimum's ``ORTModelForCausalLM.generate`` for
    optimum graphs, onnxruntime-genai's own generator for genai graphs,
  - KL(torch||onnx) and top-1 agreement against the PyTorch teacher on ``--tokens``
    corpus tokens,
  - the bandwidth bound: weight bytes a decode step reads divided by the memory
    bandwidth measured here (numpy reads on the same threads), i.e. the tokens/s no
    engine can beat on this machine.
  - ``genai int4``: ``--format genai`` (onnxruntime-genai's model builder; skipped with
    a message when ``supertiny[genai]`` is not installed).

Run:  .venv/bin/python benchmarks/onnx_export.py [--tokens 1024] [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import start

VARIANTS = {  # name -> OnnxExportConfig keyword arguments
    "fp32": {},
    "int8 (weight-only)": {"quant": "int8", "block_size": 32},
    "int8-dynamic": {"quant": "int8-dynamic"},
    "int4 b32": {"quant": "int4", "block_size": 32},
    "int4 b128": {"quant": "int4", "block_size": 128},
    "genai int4 b32": {"format": "genai", "quant": "int4", "block_size": 32},
}


def bandwidth(threads: int, mib: int = 512) -> float:
    """Bytes/s reading a large float32 array, split over ``threads`` threads."""
    import numpy as np

    a = np.ones(mib * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(a, threads)
    best = 0.0
    for _ in range(5):
        ts = [threading.Thread(target=p.sum) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = max(best, a.nbytes / (time.perf_counter() - t0))
    return best


def bytes_per_token(model_file: Path) -> int:
    """Weight bytes one decode step reads: every initializer except embedding tables,
    of which a step gathers one row (a table shared with the output layer counts)."""
    import math

    import onnx

    g = onnx.load(str(model_file), load_external_data=False).graph
    size = {1: 4, 10: 2, 16: 2, 2: 1, 3: 1, 21: 0.5, 22: 0.5, 7: 8, 6: 4}
    inits = {t.name: math.prod(t.dims) * size.get(t.data_type, 4) for t in g.initializer}
    uses: dict[str, set[str]] = {}
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in inits:
                uses.setdefault(name, set()).add(f"{n.op_type}:{i}")
    gathered = {name for name, u in uses.items() if u <= {"Gather:0", "GatherBlockQuantized:0",
                                                           "GatherBlockQuantized:2", "GatherBlockQuantized:3"}}
    # the scales of a quantized table are used only by GatherBlockQuantized as well
    return int(sum(b for name, b in inits.items() if name not in gathered))


def time_engine(engine, prompt: list[int], new: int, repeats: int) -> tuple[float, float]:
    """(median ms to first token, median decode tokens/s) for our loop."""
    engine.generate(prompt, 4)  # warm-up
    ttft, rate = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.generate(prompt, 1)
        ttft.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = engine.generate(prompt, new + 1)
        total = time.perf_counter() - t0
        rate.append(len(out[1:]) / (total - ttft[-1]))
    return statistics.median(ttft) * 1000, statistics.median(rate)


def decode_rate(run, new: int, repeats: int) -> float:
    """Median decode tokens/s of a reference runtime: ``run(n)`` generates n tokens and
    returns seconds; one token's time (the prefill) is subtracted."""
    run(4)  # warm-up
    rates = []
    for _ in range(repeats):
        first = run(1)
        rates.append(new / (run(new + 1) - first))
    return statistics.median(rates)


def time_optimum(folder: Path, prompt: list[int], new: int, threads: int, repeats: int) -> float:
    """Median decode tokens/s of optimum's ORTModelForCausalLM.generate on the same file."""
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    model = ORTModelForCausalLM.from_pretrained(folder, session_options=so, provider="CPUExecutionProvider")
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)

    def run(n: int) -> float:
        t0 = time.perf_counter()
        model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                       pad_token_id=0)
        return time.perf_counter() - t0

    return decode_rate(run, new, repeats)


def time_genai(folder: Path, prompt: list[int], new: int, threads: int, repeats: int) -> float:
    """Median decode tokens/s of onnxruntime-genai's generator on the same graph."""
    import json

    import onnxruntime_genai as og

    # genai reads its thread count from genai_config.json: run a linked copy with ours,
    # leaving the export (and its manifest hashes) untouched
    view = Path(tempfile.mkdtemp(prefix="supertiny-genai-view-"))
    for f in folder.iterdir():
        if f.name != "genai_config.json":
            (view / f.name).symlink_to(f.resolve())
    cfg = json.loads((folder / "genai_config.json").read_text())
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts["intra_op_num_threads"], opts["inter_op_num_threads"] = threads, 1
    (view / "genai_config.json").write_text(json.dumps(cfg))
    model = og.Model(og.Config(str(view)))

    def run(n: int) -> float:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + n, min_length=len(prompt) + n, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)
        for _ in range(n):
            gen.generate_next_token()
        return time.perf_counter() - t0

    rate = decode_rate(run, new, repeats)
    shutil.rmtree(view, ignore_errors=True)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024, help="corpus tokens scored for KL/top-1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args, work = start(ap, "supertiny-onnx-bench-", keep_help="folder to keep the exports in")

    from supertiny import evaluate as ev
    from supertiny.models import load_model
    from supertiny.runtime.engines.onnxrt import OnnxEngine
    from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx

    bw = bandwidth(args.threads)
    print(f"memory bandwidth ({args.threads} threads, numpy reads): {bw / 1e9:.1f} GB/s", file=sys.stderr)

    lm = load_model("default")
    ids = ev.tokenize_text(lm.tokenizer, ev.read_text(ev.default_corpus_path()))
    scored = ids[: args.tokens]
    prompt = ids[args.tokens : args.tokens + args.prompt_tokens]
    reference = ev.torch_logits(lm.model)
    rows = []
    for name, kw in VARIANTS.items():
        genai = kw.get("format") == "genai"
        if genai and importlib.util.find_spec("onnxruntime_genai") is None:
            print(f"[{name}] skipped: pip install 'supertiny[genai]'", file=sys.stderr)
            continue
        print(f"[{name}] exporting", file=sys.stderr)
        out = work / "".join(c if c.isalnum() else "-" for c in name)
        report = export_onnx("default", out, OnnxExportConfig(verify=False, overwrite=True, **kw))
        secs = sum(v for k, v in report.seconds.items() if k not in ("load", "hash"))
        engine = OnnxEngine(out, threads=args.threads)
        print(f"[{name}] KL on {len(scored)} tokens, speed", file=sys.stderr)
        a = ev.agreement(reference, engine.logits, scored, window=min(512, len(scored)), stride=256)
        ttft, rate = time_engine(engine, prompt, args.new_tokens, args.repeats)
        del engine
        timer = time_genai if genai else time_optimum
        ref = timer(out, prompt, args.new_tokens, args.threads, args.repeats)
        rows.append((name, secs, report.bytes, ttft, rate, ref, bytes_per_token(out / "model.onnx"),
                     a.kl_mean, a.top1_agreement))

    print(f"\nSmolLM2-135M-Instruct (default teacher), {args.threads} threads, prompt {len(prompt)} tokens, "
          f"{args.new_tokens} decoded, median of {args.repeats}; bandwidth {bw / 1e9:.1f} GB/s\n")
    head = ("variant", "export s", "size MB", "TTFT ms", "decode tok/s", "reference tok/s", "ours/reference",
            "MB read/token", "bound tok/s", "% of bound", "KL vs torch", "top-1")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, secs, size, ttft, rate, ref, read, kl, top1 in rows:
        bound = bw / read
        print(f"| {name} | {secs:.1f} | {size / 1e6:.0f} | {ttft:.0f} | {rate:.1f} | {ref:.1f} | {rate / ref:.2f}x | "
              f"{read / 1e6:.0f} | {bound:.0f} | {100 * rate / bound:.0f}% | {kl:.4f} | {top1:.3f} |")
    print("\nreference: optimum's ORTModelForCausalLM.generate (optimum graphs), onnxruntime-genai's generator "
          "(genai graph)")


if __name__ == "__main__":
    main()
