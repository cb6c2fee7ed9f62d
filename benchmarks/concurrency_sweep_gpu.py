"""The concurrency sweep on a CUDA GPU: bf16 vs FP8 vs int8 weights, decode tokens/s at 1..256 streams.

The paper's setting, reduced to what decides it: a decode step of ``B`` streams multiplies
a ``[B, hidden]`` activation by every weight matrix of the model once. At small ``B`` the
step reads the weights (memory-bound, so fewer bytes per weight win); at large ``B`` it
is compute-bound (so the faster arithmetic wins: FP8 tensor cores on Hopper/Ada).
This script times exactly those matmuls for the default teacher's shapes (or a
Hugging Face config's) with CUDA graphs off and events around each step:

* ``bf16``: ``x @ W.T`` in bfloat16;
* ``fp8``: ``torch._scaled_mm`` with per-tensor scales, e4m3 weights and activations
  (needs compute capability >= 8.9);
* ``int8-w8a16``: int8 weights dequantized to bf16 inside the step (weight-only, the
  W8A16 analogue; a real kernel fuses this, so it is a lower bound).

Attention and the KV cache are left out on purpose: they are the same for every weight
format. Run where ``torch.cuda.is_available()``; elsewhere it exits with one line.

Run:  python benchmarks/concurrency_sweep_gpu.py [--levels 1,2,4,8,16,64,256] [--config DIR]
"""

from __future__ import annotations

import argparse
import sys

# SmolLM2-135M (the default teacher): hidden 576, MLP 1536, 9 query / 3 KV heads of 64, 30 layers
TEACHER = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
           "head_dim": 64, "num_hidden_layers": 30}


def matrices(cfg: dict) -> list[tuple[int, int]]:
    """(out, in) of every linear layer in one decoder block: q, k, v, o, gate, up, down."""
    h, m, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg.get("head_dim") or (
        cfg["hidden_size"] // cfg["num_attention_heads"])
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    return [(q, h), (kv, h), (kv, h), (h, q), (m, h), (m, h), (h, m)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,2,4,8,16,64,256")
    ap.add_argument("--config", default=None, help="a Hugging Face model directory (its config.json); default "
                    "the default teacher's shapes")
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("concurrency_sweep_gpu: no CUDA device here (torch.cuda.is_available() is False)")
    cfg = TEACHER
    if args.config:
        import json
        from pathlib import Path

        cfg = {**TEACHER, **json.loads((Path(args.config) / "config.json").read_text())}
    layers = cfg["num_hidden_layers"]
    shapes = matrices(cfg) * layers
    dev = torch.device("cuda")
    fp8 = torch.cuda.get_device_capability() >= (8, 9) and hasattr(torch, "float8_e4m3fn")
    gen = torch.Generator(device=dev).manual_seed(0)
    bf16 = [torch.randn(o, i, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02 for o, i in shapes]
    formats = {"bf16": bf16}
    scales = [w.abs().max().float() / 448 for w in bf16]  # e4m3's largest normal is 448
    if fp8:
        formats["fp8"] = [(w.float() / s).to(torch.float8_e4m3fn) for w, s in zip(bf16, scales, strict=True)]
    i8_scales = [w.abs().amax(dim=1, keepdim=True).float() / 127 for w in bf16]
    formats["int8-w8a16"] = [(w.float() / s).round().to(torch.int8) for w, s in zip(bf16, i8_scales, strict=True)]

    def step(name: str, x: torch.Tensor) -> None:
        for k, w in enumerate(formats[name]):
            a = x[:, : w.shape[1]]  # every matmul sees a fresh [B, in] activation of its width
            if name == "bf16":
                a @ w.T
            elif name == "fp8":
                xs = a.abs().max().float().clamp(min=1e-12) / 448
                torch._scaled_mm((a.float() / xs).to(torch.float8_e4m3fn), w.T, scale_a=xs, scale_b=scales[k],
                                 out_dtype=torch.bfloat16)
            else:
                a @ (w.to(torch.bfloat16) * i8_scales[k].to(torch.bfloat16)).T

    widest = max(i for _, i in shapes)
    print(f"{torch.cuda.get_device_name()}: {layers} layers x {len(matrices(cfg))} matrices, "
          f"{sum(o * i for o, i in shapes) / 1e6:.0f}M weights; decode tokens/s of the linear layers"
          + ("" if fp8 else " (no fp8: needs compute capability >= 8.9)"))
    levels = [int(v) for v in args.levels.split(",")]
    print("| streams | " + " | ".join(formats) + " |\n|---|" + "---|" * len(formats))
    for b in levels:
        # fp8 GEMMs want dimensions that are multiples of 16: pad the batch like a real server does
        x = torch.randn(max(16, -(-b // 16) * 16) if fp8 else b, widest, device=dev, dtype=torch.bfloat16,
                        generator=gen)
        row = []
        for name in formats:
            for _ in range(3):
                step(name, x)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.iters):
                step(name, x)
            end.record()
            torch.cuda.synchronize()
            row.append(b * args.iters / (start.elapsed_time(end) / 1000))
        print(f"| {b} | " + " | ".join(f"{r:,.0f}" for r in row) + " |", flush=True)


if __name__ == "__main__":
    main()
