"""Commands on models: inspect, eval, prune, export."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..compress import LAYER_METRICS
from ..errors import InvalidInputError
from ..export import (
    GGUF_DTYPES,
    GGUF_QUANT_TYPES,
    ONNX_ACCURACY_LEVELS,
    ONNX_BLOCK_SIZES,
    ONNX_FORMATS,
    ONNX_QUANTS,
)
from .core import (
    BACKEND_CHOICE,
    DTYPE_CHOICE,
    PROVIDER_CHOICE,
    _human,
    _progress,
    _quiet_transformers,
    main,
    task_prompt_option,
)

if TYPE_CHECKING:
    from ..eval_run import EvalReport, TaskReport
    from ..manifest import Manifest


def _print_info(info: dict[str, Any], extra: list[tuple[str, str]] | None = None) -> None:
    shown = dict(info)
    shown["parameters"] = f"{info['parameters']:,} ({_human(info['parameters'])})"
    shown["file_bytes"] = f"{info['file_bytes']:,} ({_human(info['file_bytes'], 'B')})"
    width = max(len(k) for k in shown)
    for key, value in [*shown.items(), *(extra or [])]:
        if value not in ("", None):
            click.echo(f"{key:<{width}}  {value}")


@main.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def inspect(model: str, as_json: bool) -> None:
    """Describe MODEL (a Hugging Face directory, a .gguf file or 'default') without loading its weights.

    An artifact a supertiny stage wrote also shows its manifest: stage, source and hashes.
    """
    from ..models import describe, resolve
    from .artifact import manifest_rows

    info = describe(model).to_dict()
    rows, manifest = manifest_rows(resolve(model)[1])
    if as_json:
        click.echo(json.dumps({**info, **({"manifest": manifest} if manifest is not None else {})}, indent=2))
    else:
        _print_info(info, rows)



@main.command("eval")
@click.argument("model")
@click.option("--text", "text_path", type=click.Path(dir_okay=False), default=None,
              help="UTF-8 text to score (default: the corpus bundled with supertiny).")
@click.option("--teacher", default=None, help="Teacher to compare with: top-1 agreement and KL(teacher||student).")
@click.option("--window", default=512, show_default=True, help="Tokens per evaluation window.")
@click.option("--stride", default=256, show_default=True, help="Tokens each window moves (<= window).")
@click.option("--max-tokens", type=int, default=None, help="Score only the first N tokens of the text.")
@click.option("--prompt", "prompts", multiple=True, help="Prompt for greedy generation (repeatable).")
@click.option("--max-new-tokens", type=int, default=None,
              help="Tokens generated per prompt [default: 48; with --task 128, a whole JSON answer].")
@click.option("--no-generate", is_flag=True, help="Skip the generation samples.")
@click.option("--task", default=None, help="Score a structured-output task instead: a shipped task's name "
              "(factory-tickets) or a task .toml file; needs --data.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None,
              help="With --task: labelled JSON Lines, one {\"input\": ..., \"label\": {...}} a line.")
@click.option("--limit", type=int, default=None, help="With --task: score only the first N records.")
@task_prompt_option("the one MODEL was trained with (its manifest), else full")
@click.option("--batch-size", default=8, show_default=True,
              help="With --task: records decoded together (torch backend; 1: one at a time).")
@click.option("--backend", type=BACKEND_CHOICE, default="auto",
              show_default=True, help="auto: what you deploy on: llama.cpp for .gguf files, onnxruntime for ONNX "
              "exports; torch for Hugging Face directories.")
@click.option("--threads", type=int, default=None, help="llama.cpp / onnxruntime threads (default: all cores).")
@click.option("--provider", type=PROVIDER_CHOICE, default="cpu", show_default=True,
              help="onnxruntime execution provider.")
@click.option("--dtype", type=DTYPE_CHOICE, default="float32",
              show_default=True, help="Dtype the model runs in.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def eval_cmd(model: str, text_path: str | None, teacher: str | None, window: int, stride: int,
             max_tokens: int | None, prompts: tuple[str, ...], max_new_tokens: int | None,
             no_generate: bool, task: str | None, data_path: str | None, limit: int | None, task_prompt: str,
             batch_size: int, backend: str, threads: int | None, provider: str, dtype: str, as_json: bool) -> None:
    """Measure MODEL: perplexity on a text, agreement with a teacher, greedy generations;
    or, with --task and --data, its score on a structured-output task."""
    from ..eval_run import TASK_MAX_NEW_TOKENS, EvalConfig, evaluate_model, evaluate_task_model
    from ..evaluate import DEFAULT_PROMPTS

    _quiet_transformers()
    if (task is None) != (data_path is None):
        raise InvalidInputError("--task and --data go together: a task and the labelled records to score it on")
    if task is None and limit is not None:
        raise InvalidInputError("--limit counts task records; it needs --task and --data")
    if task is not None:
        if teacher is not None or text_path is not None:
            raise InvalidInputError("--task scores replies to the task's records; --teacher and --text do not apply")
        config = EvalConfig(prompts=(), backend=backend, threads=threads, provider=provider, dtype=dtype)
        with _progress(f"task {task}") as bar:
            task_report = evaluate_task_model(model, task, data_path, config, limit=limit, progress=bar,
                                              max_new_tokens=max_new_tokens or TASK_MAX_NEW_TOKENS,
                                              prompt=task_prompt, batch_size=batch_size)
        if as_json:
            click.echo(json.dumps(task_report.to_dict(), indent=2))
        else:
            _print_task_report(task_report)
        return
    config = EvalConfig(text=text_path, window=window, stride=stride, max_tokens=max_tokens,
                        prompts=() if no_generate else prompts or DEFAULT_PROMPTS,
                        max_new_tokens=48 if max_new_tokens is None else max_new_tokens,
                        backend=backend, threads=threads, provider=provider, dtype=dtype)
    with _progress("perplexity" if teacher is None else "teacher vs student") as bar:
        report = evaluate_model(model, config, teacher=teacher, progress=bar)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)



def _width(value: str | None) -> float | None:
    """A width option: a whole count (768) or a fraction to keep (0.5)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidInputError(f"a width is a count (768) or a fraction to keep (0.5), got {value!r}") from None


@main.command("prune")
@click.argument("model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--layers", type=int, default=None, help="Decoder layers to keep (depth pruning).")
@click.option("--drop-layers", type=float, default=None, help="Fraction of decoder layers to drop, e.g. 0.5.")
@click.option("--layer-metric", type=click.Choice(LAYER_METRICS), default="block-influence",
              show_default=True, help="How layers are ranked: 1 - cos(in, out), or the loss increase when skipped "
              "(one pass per layer).")
@click.option("--heads", default=None, help="Query heads to keep per layer (count, or fraction); a multiple of the "
              "KV heads kept.")
@click.option("--kv-heads", default=None, help="KV groups to keep per layer (count or fraction).")
@click.option("--mlp", default=None, help="MLP channels to keep per layer (count, or fraction like 0.5).")
@click.option("--hidden", default=None, help="Hidden (embedding) channels to keep (count or fraction).")
@click.option("--round-to", type=int, default=1, show_default=True,
              help="Round MLP/hidden widths down to a multiple: 32/64 for int4 blocks, 256 for llama.cpp K-quants.")
@click.option("--calib", type=click.Path(dir_okay=False), default=None,
              help="Calibration text: .txt, or .jsonl with text or prompt/response (default: the bundled corpus).")
@click.option("--calib-tokens", default=2048, show_default=True, help="Calibration tokens scored.")
@click.option("--eval-tokens", default=2048, show_default=True,
              help="Held-out tokens (after the calibration ones) on which student and teacher are compared.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def prune_cmd(model: str, out_dir: str, layers: int | None, drop_layers: float | None, layer_metric: str,
              heads: str | None, kv_heads: str | None, mlp: str | None, hidden: str | None, round_to: int,
              calib: str | None, calib_tokens: int, eval_tokens: int, overwrite: bool, as_json: bool) -> None:
    """Prune MODEL (depth and/or width) into OUT_DIR, a plain Hugging Face checkpoint."""
    from ..compress.prune import PruneConfig, prune

    _quiet_transformers()
    config = PruneConfig(layers=layers, drop_layers=drop_layers, layer_metric=layer_metric, heads=_width(heads),
                         kv_heads=_width(kv_heads), mlp=_width(mlp), hidden=_width(hidden), round_to=round_to,
                         calib=calib, calib_tokens=calib_tokens, eval_tokens=eval_tokens, overwrite=overwrite)
    _run_stage(partial(prune, model, out_dir, config), as_json, partial(_prune_lines, out_dir), "calibration")


def _prune_lines(out: str, m: Manifest) -> list[str]:
    pr, params, q = m.details["pruned"], m.details["parameters"], m.quality
    dropped = ", ".join(f"{d['index']} ({d['score']:.3f})" for d in pr["layers"]["dropped"]) or "none"
    lines = [f"student     {Path(out).expanduser()}  {_human(params['after'])} params "
             f"({params['kept']:.0%} of {_human(params['before'])})",
             f"layers      {pr['layers']['from']} -> {pr['layers']['to']}; dropped {dropped} "
             f"[{pr['layers']['metric']}]"]
    for name in ("query_heads", "kv_heads", "mlp", "hidden"):
        lost = pr[name].get("importance_removed")
        share = f" ({lost:.1%} of their importance removed)" if lost else ""
        lines.append(f"{name.replace('_', ' '):<11} {pr[name]['from']} -> {pr[name]['to']}{share}")
    if "skipped" in q:
        lines.append(f"quality     skipped: {q['skipped']}")
    else:
        lines.append(f"quality     on {q['tokens']} held-out tokens: perplexity {q['student_perplexity']:.2f} "
                     f"(teacher {q['teacher_perplexity']:.2f}), KL {q['kl_mean']:.3f} nats, "
                     f"top-1 agreement {q['top1_agreement']:.1%}")
    return lines


def _run_stage(call: Callable[..., Manifest], as_json: bool, lines: Callable[[Manifest], list[str]],
               bar: str | None = None) -> None:
    """Run a stage (its log lines and a progress bar on stderr), then print its manifest as JSON or as text."""
    def log(m: str) -> None:
        click.echo(m, err=True)

    if bar is None:
        manifest = call(log=log)
    else:
        with _progress(bar) as update:
            manifest = call(log=log, progress=update)
    click.echo(json.dumps(manifest.to_dict(), indent=2) if as_json else "\n".join(lines(manifest)))


@main.group("export")
def export_group() -> None:
    """Write a model as a deployment artifact, checked against PyTorch."""


def _parity_options(recorded_in: str, threads: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The parity-check options every export takes: ``--no-verify`` (a skip is recorded in ``recorded_in``),
    ``--verify-tokens``, ``--text`` and ``--threads`` (``threads`` says whose)."""
    options = [
        click.option("--no-verify", is_flag=True,
                     help=f"Skip the parity check against PyTorch (recorded in the {recorded_in})."),
        click.option("--verify-tokens", default=512, show_default=True, help="Tokens of text the parity check scores."),
        click.option("--text", "text_path", type=click.Path(dir_okay=False), default=None,
                     help="Text for the parity check (default: the bundled corpus)."),
        click.option("--threads", type=int, default=None, help=f"{threads} (default: all cores)."),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):  # as if stacked above the command, in this order
            command = option(command)
        return command
    return decorate


@export_group.command("gguf")
@click.argument("model")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(GGUF_DTYPES), default="f16", show_default=True,
              help="Float type written before any quantization.")
@click.option("--quant", default=None, metavar="TYPE",
              help=f"llama.cpp quantization: {', '.join(GGUF_QUANT_TYPES)}.")
@_parity_options("report", threads="llama.cpp threads")
@click.option("--pre", default=None, help="Force tokenizer.ggml.pre instead of matching the tokenizer's regexes.")
@click.option("--imatrix-tokens", default=0, show_default=True,
              help="With --quant: calibrate an importance matrix on this many tokens of --text (0: off).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def export_gguf_cmd(model: str, out: str, dtype: str, quant: str | None, no_verify: bool, verify_tokens: int,
                    text_path: str | None, threads: int | None, pre: str | None, imatrix_tokens: int,
                    as_json: bool) -> None:
    """Export MODEL to OUT (.gguf) for llama.cpp; its manifest goes to OUT.supertiny.json."""
    from ..export.gguf import GGUFExportConfig, export_gguf

    _quiet_transformers()
    config = GGUFExportConfig(dtype=dtype, quant=quant, verify=not no_verify, verify_tokens=verify_tokens,
                              text=text_path, threads=threads, pre=pre, imatrix_tokens=imatrix_tokens)
    _run_stage(partial(export_gguf, model, out, config), as_json, partial(_gguf_lines, out), "writing tensors")


def _gguf_lines(out: str, m: Manifest) -> list[str]:
    d, file = m.details, next(iter(m.files.values()))
    return [f"artifact    {Path(out).expanduser()}  {_human(file['bytes'], 'B')}  {d['bits_per_weight']} bits/weight  "
            f"sha256 {file['sha256'][:16]}...",
            f"tensors     {', '.join(f'{k} x{v}' for k, v in d['tensor_types'].items())}",
            *_parity_lines(m.quality), *(f"note        {note}" for note in m.notes)]


@export_group.command("onnx")
@click.argument("model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--quant", type=click.Choice(ONNX_QUANTS), default=None,
              help="int4/int8: weight-only MatMulNBits (W4A16/W8A16) by onnxruntime's round to nearest; "
              "int8-dynamic: int8 weights and activations (quantize_dynamic); carry: the codes a `supertiny "
              "quantize` checkpoint stores [default: carry for such a checkpoint, else none].")
@click.option("--format", "graph_format", type=click.Choice(ONNX_FORMATS), default="optimum",
              show_default=True, help="optimum: optimum's graph (ORTModelForCausalLM loads it); genai: "
              "onnxruntime-genai's fused graph, ~3x faster decoding on CPU (needs supertiny[genai]).")
@click.option("--block-size", type=click.Choice([str(b) for b in ONNX_BLOCK_SIZES]), default="32",
              show_default=True,
              help="Weights per quantization block (int4/int8).")
@click.option("--accuracy-level", type=click.IntRange(min(ONNX_ACCURACY_LEVELS), max(ONNX_ACCURACY_LEVELS)),
              default=4, show_default=True,
              help="MatMulNBits compute type: 4 int8 activations (fast on CPU), 1 float32, 0 kernel's choice.")
@click.option("--symmetric/--asymmetric", default=None,
              help="Blocks without / with zero points [default: asymmetric for optimum, symmetric for genai].")
@click.option("--keep-float-embeddings", is_flag=True, help="With int4: leave the embedding table in float.")
@click.option("--fp16", is_flag=True, help="Float16 weights and KV cache (GPUs; usually slower on CPUs).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: optimum's).")
@_parity_options("manifest", threads="onnxruntime threads for the check")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it is not empty (only once the new export passed).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_onnx_cmd(model: str, out_dir: str, quant: str | None, graph_format: str, block_size: str,
                    accuracy_level: int, symmetric: bool | None, keep_float_embeddings: bool, fp16: bool,
                    opset: int | None,
                    no_verify: bool, verify_tokens: int, text_path: str | None, threads: int | None,
                    overwrite: bool, as_json: bool) -> None:
    """Export MODEL to OUT_DIR (ONNX with KV cache) for onnxruntime; manifest in OUT_DIR/supertiny.json."""
    from ..export.onnx import OnnxExportConfig, export_onnx

    _quiet_transformers()
    config = OnnxExportConfig(quant=quant, format=graph_format, block_size=int(block_size),
                              accuracy_level=accuracy_level, symmetric=symmetric,
                              quantize_embeddings=not keep_float_embeddings, fp16=fp16, opset=opset,
                              verify=not no_verify, verify_tokens=verify_tokens, text=text_path,
                              threads=threads, overwrite=overwrite)
    _run_stage(partial(export_onnx, model, out_dir, config), as_json, partial(_onnx_lines, out_dir))


def _onnx_lines(out: str, m: Manifest) -> list[str]:
    d, parity = m.details, m.quality
    weights = ", ".join(f"{k} {_human(v, 'B')}" for k, v in d["weight_bytes"].items())
    lines = [f"artifact    {Path(out).expanduser()}  {_human(m.bytes, 'B')}  {m.settings['format']} graph: "
             f"{', '.join(f'{k} x{v}' for k, v in d['operators'].items())}",
             f"weights     {weights}", *_parity_lines(parity)]
    if "kv_cache" in parity:
        kv = parity["kv_cache"]
        lines.append(f"kv cache    {kv['steps']} cached steps vs one full pass: largest logit difference "
                     f"{kv['max_abs_diff_vs_full_pass']:.1e}, top-1 equal {kv['top1_equal']:.0%}")
    return lines + [f"note        {note}" for note in m.notes]


def _parity_lines(parity: dict[str, Any]) -> list[str]:
    if "skipped" in parity:
        return [f"parity      skipped: {parity['skipped']}"]
    close = (f", largest logit difference {parity['logits_max_abs_diff']:.1e}"
             if parity.get("logits_max_abs_diff") is not None else "")
    return [f"parity      {'PASS' if parity['passed'] else 'FAIL'}: top-1 {parity['top1_agreement']:.2%}, "
            f"KL {parity['kl_mean']:.2e} nats{close}, perplexity {parity['perplexity_artifact']:.3f} "
            f"(torch {parity['perplexity_torch']:.3f}), greedy {parity['greedy_prefix_match']}/"
            f"{parity['greedy_tokens']} tokens equal, tokenization "
            f"{'equal' if parity['tokenization_equal'] else 'DIFFERS'}"]


def _print_model(m: dict[str, Any], manifest: dict[str, Any] | None) -> None:
    click.echo(f"model       {m['source']} ({m['architecture']}, {_human(m['parameters'])} params, {m['dtype']}, "
               f"{m['backend']})")
    if manifest is not None:
        click.echo("artifact    " + (f"manifest unreadable: {manifest['error']}" if "error" in manifest else
                                     f"{manifest['stage']} v{manifest['stage_version']} of {manifest['source']} "
                                     f"({manifest['created']}; `supertiny verify` re-checks its files)"))


def _print_task_report(r: TaskReport) -> None:
    s = r.evaluation.score
    _print_model(r.model, r.manifest)
    click.echo(f"task        {s.task} on {r.data}: {s.n} records, {r.seconds:.1f} s "
               f"(greedy, up to {r.max_new_tokens} new tokens, {r.prompt} prompt)")
    click.echo(f"task score  {s.task_score:.3f}   JSON valid {s.json_valid:.1%}   schema valid {s.schema_valid:.1%}")
    click.echo("fields      " + "   ".join(f"{name} {acc:.1%}" for name, acc in s.fields.items()))


def _print_report(r: EvalReport) -> None:
    m, s = r.model, r.score
    _print_model(m, r.manifest)
    click.echo(f"text        {r.text}: {s.tokens:,} tokens, window {s.window}, stride {s.stride}")
    click.echo(f"perplexity  {s.perplexity:.3f}  ({s.nll_mean:.4f} nats/token over {s.tokens_scored:,} tokens, "
               f"{s.seconds:.1f} s)")
    if r.agreement is not None:
        a, t = r.agreement, r.teacher
        click.echo(f"teacher     {t['source']} ({_human(t['parameters'])} params): perplexity "
                   f"{a.teacher.perplexity:.3f}")
        click.echo(f"agreement   top-1 {a.top1_agreement:.2%}   KL(teacher||student) mean {a.kl_mean:.4f} "
                   f"p95 {a.kl_p95:.4f} nats")
    for g in r.generations:
        click.echo(f"\n> {g.prompt}\n{g.completion}\n  ({g.new_tokens} tokens, {g.tokens_per_s:.1f} tok/s)")
