"""``supertiny quantize``: a quantization scheme applied to a model, written as a plain checkpoint (the stage:
:mod:`supertiny.stages.quantize`)."""

from __future__ import annotations

from pathlib import Path

from supertiny.cli.core import human, main
from supertiny.cli.options import stage_command
from supertiny.manifest import Manifest
from supertiny.stages.registry import get


def quantize_lines(m: Manifest, out: str) -> list[str]:
    """What ``supertiny quantize`` prints."""
    d, q, s = m.details, m.quality, m.details["scheme"]
    opts = ", ".join(f"{k} {v}" for k, v in s.items() if k != "name")
    lines = [f"quantized   {Path(out).expanduser()}  {s['name']} ({opts}), kernel {d['kernel']}",
             f"size        {d['bits_per_weight']} bits/weight over {human(d['quantized_parameters'])} quantized "
             f"weights; {d['bits_per_weight_all']} over all, {human(d['size_equivalent_bytes'], 'B')} "
             "size-equivalent (float16 for what stays float)"]
    if "skipped" in q:
        lines.append(f"quality     skipped: {q['skipped']}")
    else:
        lines.append(f"quality     on {q['tokens']} held-out tokens: perplexity {q['perplexity']:.3f} "
                     f"({q['perplexity_ratio']:.3f}x the unquantized {q['reference_perplexity']:.3f}), "
                     f"KL {q['kl_mean']:.4f} nats, top-1 agreement {q['top1_agreement']:.1%}")
    if "task" in q:
        t = q["task"]
        ratio = f"; {t['score_ratio']:.3f}x" if t["score_ratio"] is not None else ""
        lines.append(f"task        {t['score']:.3f} on {t['records']} records of {t['data']} (unquantized "
                     f"{t['reference_score']:.3f}{ratio})")
    return lines + [f"note        {n}" for n in m.notes]


# a progress bar per phase (quantizing, comparing), named by the library's log line
stage_command(main, get("quantize"), "quantize", "Quantize MODEL into OUT_DIR: a plain Hugging Face checkpoint of "
              "the dequantized weights, the codes in OUT_DIR/quantization/, and a manifest with the quality against "
              "the unquantized model.", quantize_lines, label="quantizing", phases=True)
