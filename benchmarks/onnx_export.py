"""ONNX exports of the default teacher: export time, size, speed and quality per scheme.

One run, side by side, on ``--threads`` threads (default 2):
  - each variant is exported from the same loaded teacher (export + quantization
    seconds, parity check off so the time is the export alone),
  - time to first token for a ``--prompt-tokens`` prompt and decode tokens/s with
    supertiny's engine (median of ``--repeats`` after a warm-up), and optimum's
    ``ORTModelForCausalLM.generate`` decoding the same file,
  - KL(torch||onnx) and top-1 agreement against the PyTorch teacher on ``--tokens``
    corpus tokens,
  - the bandwidth bound: weight bytes a decode step reads divided by the memory
    bandwidth measured here (numpy reads on the same threads), i.e. the tokens/s no
    engine can beat on this machine.
  - ``genai-int4``: onnxruntime-genai's model builder, when ``--genai-builder DIR``
    points at an onnxruntime-genai install whose builder imports (see the note in the
    README: 0.15.2 works with our transformers pin, 0.18.0 does not), and the
    onnxruntime-genai runtime is importable.

Run:  .venv/bin/python benchmarks/onnx_export.py [--tokens 1024] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VARIANTS = {  # name -> OnnxExportConfig keyword arguments
    "fp32": {},
    "int8 (weight-only)": {"quant": "int8", "block_size": 32},
    "int8-dynamic": {"quant": "int8-dynamic"},
    "int4 b32": {"quant": "int4", "block_size": 32},
    "int4 b128": {"quant": "int4", "block_size": 128},
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

    run(4)
    rates = []
    for _ in range(repeats):
        first = run(1)
        rates.append(new / (run(new + 1) - first))
    return statistics.median(rates)


GENAI = """
import sys, time, statistics
import onnxruntime_genai as og
folder, threads, new, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prompt = [int(x) for x in sys.argv[5].split(",")]
config = og.Config(folder)
model = og.Model(config)
def run(n):
    p = og.GeneratorParams(model)
    p.set_search_options(max_length=len(prompt) + n, min_length=len(prompt) + n, do_sample=False)
    g = og.Generator(model, p)
    t0 = time.perf_counter()
    g.append_tokens(prompt)
    g.generate_next_token()
    first = time.perf_counter() - t0
    for _ in range(n - 1):
        g.generate_next_token()
    return first, time.perf_counter() - t0
run(4)
ttft, rate = [], []
for _ in range(repeats):
    first, total = run(new + 1)
    ttft.append(first); rate.append(new / (total - first))
print(statistics.median(ttft) * 1000, statistics.median(rate))
"""


def genai_variant(hf_dir: Path, out: Path, builder: str, threads: int, prompt: list[int], new: int,
                  repeats: int) -> dict | None:
    env = {**os.environ, "PYTHONPATH": builder}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(hf_dir), "-i",
                           str(hf_dir), "-o", str(out), "-p", "int4", "-e", "cpu", "-c", str(out) + ".cache"],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"genai builder failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    # the genai config sets its own thread count; ask for ours
    import json

    cfg_path = out / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts["intra_op_num_threads"], opts["inter_op_num_threads"] = threads, 1
    cfg_path.write_text(json.dumps(cfg, indent=2))
    run = subprocess.run([sys.executable, "-c", GENAI, str(out), str(threads), str(new), str(repeats),
                          ",".join(map(str, prompt))], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        print(f"genai runtime failed: {run.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    ttft, rate = map(float, run.stdout.split()[-2:])
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return {"export_s": seconds, "bytes": size, "ttft_ms": ttft, "decode": rate,
            "read": bytes_per_token(out / "model.onnx")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024, help="corpus tokens scored for KL/top-1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--genai-builder", default=None,
                    help="folder holding an onnxruntime-genai whose model builder imports (e.g. pip install "
                         "--target DIR onnxruntime-genai==0.15.2)")
    ap.add_argument("--keep", default=None, help="folder to keep the exports in")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from transformers.utils import logging as hf_logging

    from supertiny import evaluate as ev
    from supertiny.export.onnx import OnnxExportConfig, export_onnx
    from supertiny.models import load_model
    from supertiny.runtime.onnxrt import OnnxEngine

    hf_logging.set_verbosity_error()
    work = Path(args.keep or tempfile.mkdtemp(prefix="supertiny-onnx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bw = bandwidth(args.threads)
    print(f"memory bandwidth ({args.threads} threads, numpy reads): {bw / 1e9:.1f} GB/s", file=sys.stderr)

    lm = load_model("default")
    ids = ev.tokenize_text(lm.tokenizer, ev.read_text(ev.default_corpus_path()))
    scored = ids[: args.tokens]
    prompt = ids[args.tokens : args.tokens + args.prompt_tokens]
    reference = ev.torch_logits(lm.model)
    rows = []
    for name, kw in VARIANTS.items():
        print(f"[{name}] exporting", file=sys.stderr)
        out = work / "".join(c if c.isalnum() else "-" for c in name)
        report = export_onnx("default", out, OnnxExportConfig(verify=False, overwrite=True, **kw))
        secs = sum(v for k, v in report["seconds"].items() if k != "load")
        engine = OnnxEngine(out, threads=args.threads)
        print(f"[{name}] KL on {len(scored)} tokens, speed", file=sys.stderr)
        a = ev.agreement(reference, engine.logits, scored, window=min(512, len(scored)), stride=256)
        ttft, rate = time_engine(engine, prompt, args.new_tokens, args.repeats)
        del engine
        opt = time_optimum(out, prompt, args.new_tokens, args.threads, args.repeats)
        rows.append((name, secs, report["artifact"]["bytes"], ttft, rate, opt, bytes_per_token(out / "model.onnx"),
                     a.kl_mean, a.top1_agreement))
    if args.genai_builder:
        print("[genai-int4] building", file=sys.stderr)
        hf_dir = work / "hf-source"
        if not hf_dir.is_dir():
            lm.model.save_pretrained(hf_dir)
            lm.tokenizer.save_pretrained(hf_dir)
        g = genai_variant(hf_dir, work / "genai-int4", args.genai_builder, args.threads, prompt, args.new_tokens,
                          args.repeats)
        if g:  # optimum cannot load the genai graph; its logits are not wired to the KL measure yet
            rows.append(("genai-int4", g["export_s"], g["bytes"], g["ttft_ms"], g["decode"], float("nan"), g["read"],
                         float("nan"), float("nan")))

    print(f"\nSmolLM2-135M-Instruct (default teacher), {args.threads} threads, prompt {len(prompt)} tokens, "
          f"{args.new_tokens} decoded, median of {args.repeats}; bandwidth {bw / 1e9:.1f} GB/s\n")
    head = ("variant", "export s", "size MB", "TTFT ms", "decode tok/s", "optimum tok/s", "ours/optimum",
            "MB read/token", "bound tok/s", "% of bound", "KL vs torch", "top-1")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, secs, size, ttft, rate, opt, read, kl, top1 in rows:
        bound = bw / read
        def f(x: float, spec: str, suffix: str = "") -> str:
            return "n/a" if x != x else f"{x:{spec}}{suffix}"  # NaN: not measured for this row

        print(f"| {name} | {secs:.1f} | {size / 1e6:.0f} | {ttft:.0f} | {rate:.1f} | {f(opt, '.1f')} | "
              f"{f(rate / opt, '.2f', 'x')} | {read / 1e6:.0f} | {bound:.0f} | {100 * rate / bound:.0f}% | "
              f"{f(kl, '.4f')} | {f(top1, '.3f')} |")


if __name__ == "__main__":
    main()
