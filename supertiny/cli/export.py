"""``supertiny export gguf|onnx``: a model written as a deployment artifact, checked against PyTorch (the stages:
:mod:`supertiny.stages.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from supertiny.cli.core import human, main
from supertiny.cli.options import stage_command
from supertiny.manifest import Manifest
from supertiny.stages.registry import get


@main.group("export")
def export_group() -> None:
    """Write a model as a deployment artifact, checked against PyTorch."""


def gguf_lines(m: Manifest, out: str) -> list[str]:
    """What ``supertiny export gguf`` prints."""
    d, file = m.details, next(iter(m.files.values()))
    return [f"artifact    {Path(out).expanduser()}  {human(file['bytes'], 'B')}  {d['bits_per_weight']} bits/weight  "
            f"sha256 {file['sha256'][:16]}...",
            f"tensors     {', '.join(f'{k} x{v}' for k, v in d['tensor_types'].items())}",
            *parity_lines(m.quality), *(f"note        {note}" for note in m.notes)]


def onnx_lines(m: Manifest, out: str) -> list[str]:
    """What ``supertiny export onnx`` prints."""
    d, parity = m.details, m.quality
    weights = ", ".join(f"{k} {human(v, 'B')}" for k, v in d["weight_bytes"].items())
    lines = [f"artifact    {Path(out).expanduser()}  {human(m.bytes, 'B')}  {m.settings['format']} graph: "
             f"{', '.join(f'{k} x{v}' for k, v in d['operators'].items())}",
             f"weights     {weights}", *parity_lines(parity)]
    if "kv_cache" in parity:
        kv = parity["kv_cache"]
        lines.append(f"kv cache    {kv['steps']} cached steps vs one full pass: largest logit difference "
                     f"{kv['max_abs_diff_vs_full_pass']:.1e}, top-1 equal {kv['top1_equal']:.0%}")
    return lines + [f"note        {note}" for note in m.notes]


def parity_lines(parity: dict[str, Any]) -> list[str]:
    """An export's parity check in one line (or why it was skipped)."""
    if "skipped" in parity:
        return [f"parity      skipped: {parity['skipped']}"]
    close = (f", largest logit difference {parity['logits_max_abs_diff']:.1e}"
             if parity.get("logits_max_abs_diff") is not None else "")
    return [f"parity      {'PASS' if parity['passed'] else 'FAIL'}: top-1 {parity['top1_agreement']:.2%}, "
            f"KL {parity['kl_mean']:.2e} nats{close}, perplexity {parity['perplexity_artifact']:.3f} "
            f"(torch {parity['perplexity_torch']:.3f}), greedy {parity['greedy_prefix_match']}/"
            f"{parity['greedy_tokens']} tokens equal, tokenization "
            f"{'equal' if parity['tokenization_equal'] else 'DIFFERS'}"]


stage_command(export_group, get("export-gguf"), "gguf", "Export MODEL to OUT (.gguf) for llama.cpp; its manifest "
              "goes to OUT.supertiny.json.", gguf_lines, label="writing tensors")
stage_command(export_group, get("export-onnx"), "onnx", "Export MODEL to OUT_DIR (ONNX with KV cache) for "
              "onnxruntime; manifest in OUT_DIR/supertiny.json.", onnx_lines)
