"""``supertiny quantize``: a quantization scheme applied to a model, written as a plain checkpoint."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

from ..compress import FP8_GRANULARITIES, HEAD_BITS, QUANT_GROUPS, QUANT_METHODS, QUANT_SCHEMES
from ..manifest import Manifest
from .core import _human, _quiet_transformers, main, run_training


@main.command("quantize")
@click.argument("model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--scheme", type=click.Choice(QUANT_SCHEMES), required=True,
              help="w4a16: int4 group-wise weights; w8a8: int8 weights and dynamic per-token activations; "
              "fp8: FP8 E4M3 weights and activations.")
@click.option("--group", type=click.Choice([str(g) for g in QUANT_GROUPS]), default=None,
              help="w4a16: input columns per scale [default: 128].")
@click.option("--method", type=click.Choice(QUANT_METHODS), default=None,
              help="w4a16: rtn (round to nearest), gptq or awq (calibrated) [default: rtn].")
@click.option("--symmetric/--asymmetric", default=None, help="w4a16: zero point fixed at 8, or one per group "
              "[default: asymmetric].")
@click.option("--granularity", type=click.Choice(FP8_GRANULARITIES), default=None,
              help="fp8: one scale per tensor, or per output channel (weights) and token (activations) "
              "[default: tensor].")
@click.option("--float-head", is_flag=True, help="Leave the output layer (and a tied embedding) in float.")
@click.option("--head-bits", type=click.Choice([str(b) for b in HEAD_BITS]), default=None,
              help="w4a16: the output layer (and a tied embedding) in int4 like the rest, or in group-wise int8 "
              "(llama.cpp's Q8_0 at group 32) [default: 4].")
@click.option("--max-mb", type=float, default=None,
              help="w4a16: a size budget (MB, size-equivalent); the set of decoder layers and output layer whose "
              "8-bit versions save the most calibration KL within it is stored in int8.")
@click.option("--calib", type=click.Path(dir_okay=False), default=None,
              help="Calibration text: .txt, or .jsonl with text or prompt/response (default: the bundled corpus).")
@click.option("--task", default=None, help="Calibrate on a task's chat prompts instead: a shipped task's name "
              "(factory-tickets) or a task .toml file; needs --data.")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="With --task: task records (input, label) or teacher data (input, response).")
@click.option("--task-eval", type=click.Path(dir_okay=False), default=None,
              help="With --task: labelled records on which the quantized and the unquantized model are both scored.")
@click.option("--task-limit", type=int, default=None, help="With --task-eval: score only the first N records.")
@click.option("--calib-tokens", default=2048, show_default=True, help="Calibration tokens (gptq/awq).")
@click.option("--eval-tokens", default=2048, show_default=True,
              help="Held-out tokens on which the quantized model is compared with the original.")
@click.option("--eval-text", type=click.Path(dir_okay=False), default=None,
              help="Take the held-out tokens from this text (default: the calibration text after the calibration "
              "tokens; the bundled corpus with --task).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def quantize_cmd(model: str, out_dir: str, scheme: str, group: str | None, method: str | None,
                 symmetric: bool | None, granularity: str | None, float_head: bool, head_bits: str | None,
                 max_mb: float | None, calib: str | None, task: str | None, data: str | None, task_eval: str | None,
                 task_limit: int | None, calib_tokens: int,
                 eval_tokens: int, eval_text: str | None, overwrite: bool, as_json: bool) -> None:
    """Quantize MODEL into OUT_DIR: a plain Hugging Face checkpoint of the dequantized weights, the codes in
    OUT_DIR/quantization/, and a manifest with the quality against the unquantized model."""
    from ..compress.quantize import scheme_from_name
    from ..compress.quantize_run import QuantizeConfig, quantize

    _quiet_transformers()
    chosen = scheme_from_name(scheme, group=int(group) if group else None, method=method, symmetric=symmetric,
                              granularity=granularity, head=False if float_head else None,
                              head_bits=int(head_bits) if head_bits else None, max_mb=max_mb)
    config = QuantizeConfig(scheme=chosen, calib=calib, task=task, data=data, calib_tokens=calib_tokens,
                            eval_tokens=eval_tokens, eval_text=eval_text, task_eval=task_eval,
                            task_limit=task_limit, overwrite=overwrite)
    # a progress bar per phase (quantizing, comparing), named by the library's log line
    run_training(partial(quantize, model, out_dir, config), "quantizing", True, as_json, partial(_lines, out_dir))


def _lines(out: str, m: Manifest) -> list[str]:
    d, q, s = m.details, m.quality, m.details["scheme"]
    opts = ", ".join(f"{k} {v}" for k, v in s.items() if k != "name")
    lines = [f"quantized   {Path(out).expanduser()}  {s['name']} ({opts}), kernel {d['kernel']}",
             f"size        {d['bits_per_weight']} bits/weight over {_human(d['quantized_parameters'])} quantized "
             f"weights; {d['bits_per_weight_all']} over all, {_human(d['size_equivalent_bytes'], 'B')} "
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
