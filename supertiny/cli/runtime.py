"""Commands on the device side: targets, bench, serve."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import InvalidInputError
from .core import BACKEND_CHOICE, DTYPE_CHOICE, PROVIDER_CHOICE, _quiet_transformers, main


@main.group("targets")
def targets_group() -> None:
    """Device target profiles: the hardware, how to run on it, and the budget a model must meet."""


def _limits_summary(target: Any) -> str:
    from ..targets import BUDGETS

    limits = target.budget.limits()
    return " ".join(f"{b.short}{b.op}{limits[b.key]:g}{b.unit}"
                    for b in BUDGETS if b.key in limits)


@targets_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def targets_list_cmd(as_json: bool) -> None:
    """List the targets: $SUPERTINY_TARGETS and ~/.config/supertiny/targets first, then the shipped ones."""
    from ..targets import SHIPPED_DIR, scan_targets

    found, problems = scan_targets()
    if as_json:
        click.echo(json.dumps({"targets": [t.to_dict() for t in found],
                               "problems": [p.to_dict() for p in problems]}, indent=2))
        return
    rows = [("NAME", "DEVICE", "THREADS", "FORMATS", "BUDGETS", "FROM")]
    rows += [(t.name, t.device.summary(), str(t.runtime.threads), ",".join(t.runtime.formats), _limits_summary(t),
              "shipped" if t.source.parent == SHIPPED_DIR else str(t.source)) for t in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip())
    for problem in problems:
        click.echo(f"warning: {problem.message}", err=True)


@targets_group.command("show")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def targets_show_cmd(target: str, as_json: bool) -> None:
    """Show every field of TARGET (a name from `targets list`, or a .toml file), budgets with units."""
    from dataclasses import asdict

    from ..targets import BUDGETS, load_target

    t = load_target(target)
    if as_json:
        click.echo(json.dumps(t.to_dict(), indent=2))
        return
    rows = [("name", t.name), ("description", t.description), ("source", str(t.source))]
    for section in ("device", "runtime"):
        rows += [(f"{section}.{k}", ", ".join(v) if isinstance(v, list) else str(v))
                 for k, v in t.to_dict()[section].items()]
    limits = {b.key: b for b in BUDGETS}
    conditions = asdict(t.budget)
    for key, value in conditions.items():
        b = limits.get(key)
        if b is None:
            rows.append((f"budget.{key}", str(value)))
        elif value is None:
            rows.append((f"budget.{key}", f"not set ({b.label})"))
        else:
            rows.append((f"budget.{key}", f"{b.op} {value:g} {b.unit}  "
                                          f"{b.label} ({b.conditions.format(**conditions)})"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")



def _int_list(value: str, option: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise InvalidInputError(f"{option} takes whole numbers separated by commas, got {value!r}") from None
    if not out:
        raise InvalidInputError(f"{option} is empty")
    return out


def _parallel(value: str) -> int | None:
    """``--parallel``: ``auto`` (None) or a whole number >= 0."""
    if value.strip().lower() == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInputError(f"--parallel takes auto or a whole number, got {value!r}") from None


@main.command("bench")
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--target", default=None, help="Target profile (name or .toml file) whose budgets give the verdict.")
@click.option("--prompt-lengths", default="32,256,1024", show_default=True,
              help="Prompt sizes (tokens) for time to first token and decode speed.")
@click.option("--new-tokens", default=64, show_default=True, help="Tokens decoded per run.")
@click.option("--repeats", default=3, show_default=True, help="Measured runs per prompt length.")
@click.option("--warmup", default=1, show_default=True, help="Unmeasured runs before them.")
@click.option("--concurrency", default="1,2,4", show_default=True, help="Simultaneous clients for the latency test.")
@click.option("--requests", default=8, show_default=True, help="Requests per concurrency level.")
@click.option("--slots", default=1, show_default=True, help="Engines serving requests in parallel (as `serve`).")
@click.option("--parallel", default="auto", show_default=True,
              help="One engine decoding this many sequences together (0: off): GGUF continuously (as `serve`), "
              "ONNX (optimum graph) in static batches. auto: GGUF batches the most concurrent clients measured.")
@click.option("--threads", type=int, default=None, help="Engine threads (default: the target's, else all cores).")
@click.option("--backend", type=BACKEND_CHOICE, default="auto",
              show_default=True)
@click.option("--gpu-layers", type=int, default=0, show_default=True, help="llama.cpp layers on the GPU (-1: all).")
@click.option("--provider", type=PROVIDER_CHOICE, default="cpu", show_default=True,
              help="onnxruntime execution provider.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also draw the figures (.png/.svg/.pdf).")
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON (units in the keys).")
def bench_cmd(artifacts: tuple[str, ...], target: str | None, prompt_lengths: str, new_tokens: int, repeats: int,
              warmup: int, concurrency: str, requests: int, slots: int, parallel: str, threads: int | None,
              backend: str, gpu_layers: int, provider: str, plot_path: str | None, as_json: bool) -> None:
    """Measure ARTIFACTS (.gguf files, ONNX exports, HF dirs) on this machine; judge them against --target.

    Exit code 1 when a budget is missed, 2 for usage errors.
    """
    from ..runtime.bench import BenchConfig, bench
    from ..runtime.bench_report import check_plot_path, format_comparison, format_result, plot
    from ..targets import load_target

    config = BenchConfig(prompt_lengths=_int_list(prompt_lengths, "--prompt-lengths"), new_tokens=new_tokens,
                         repeats=repeats, warmup=warmup, concurrency=_int_list(concurrency, "--concurrency"),
                         requests=requests, slots=slots, parallel=_parallel(parallel), threads=threads, backend=backend,
                         gpu_layers=gpu_layers, provider=provider)
    profile = load_target(target) if target else None
    if plot_path:
        check_plot_path(plot_path)  # a bad path fails now, not after minutes of measuring
    bars: dict[str, Any] = {}

    def progress(artifact: str, what: str, done: int, total: int) -> None:
        if not sys.stderr.isatty():  # a log (CI): one line per step instead of a bar
            click.echo(f"bench {artifact}: [{done}/{total}] {what}", err=True)
            return
        if artifact not in bars:
            for bar in bars.values():
                bar.render_finish()
            bars[artifact] = click.progressbar(length=total, label=f"bench {artifact}", file=sys.stderr,
                                               item_show_func=lambda item: item)
        bar = bars[artifact]
        bar.update(done - bar.pos, current_item=what)

    report = bench(list(artifacts), config, profile, progress)
    for bar in bars.values():
        bar.render_finish()
    if plot_path:
        plot(report, plot_path, profile)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for result in report["results"]:
            click.echo(format_result(result))
            click.echo()
        if len(report["results"]) > 1:
            click.echo(format_comparison(report["results"]))
        if plot_path:
            click.echo(f"plot: {plot_path}")
    if not report["passed"]:
        sys.exit(1)


@main.command("serve")
@click.argument("artifact")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; 0.0.0.0 exposes the server to the network.")
@click.option("--port", default=8000, show_default=True, help="TCP port (0: any free one).")
@click.option("--api-key", envvar="SUPERTINY_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' (or set SUPERTINY_API_KEY).")
@click.option("--slots", default=1, show_default=True, help="Model copies decoding requests in parallel.")
@click.option("--parallel", default="auto", show_default=True,
              help="GGUF: sequences decoded together in one batched engine (continuous batching; 0: off; "
              "auto: 4 with one slot).")
@click.option("--max-queue", default=16, show_default=True, help="Requests waiting for a slot before 429.")
@click.option("--max-tokens-limit", default=2048, show_default=True, help="Largest max_tokens a request may ask.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True,
              help="Seconds a request may wait and run before it gets 504.")
@click.option("--threads", type=int, default=None, help="Threads per slot (default: the cores shared by the slots).")
@click.option("--n-ctx", type=int, default=None, help="Context length (default: 2048 for llama.cpp, the model's "
              "otherwise).")
@click.option("--gpu-layers", default=0, show_default=True, help="llama.cpp layers to offload to a GPU (-1: all).")
@click.option("--provider", type=PROVIDER_CHOICE, default="cpu", show_default=True,
              help="onnxruntime execution provider.")
@click.option("--backend", type=BACKEND_CHOICE, default="auto",
              show_default=True, help="auto: llama.cpp for .gguf files, onnxruntime for ONNX exports, torch for "
              "Hugging Face directories.")
@click.option("--device", default="cpu", show_default=True, help="torch device (torch backend): cpu, cuda, cuda:N.")
@click.option("--dtype", type=DTYPE_CHOICE, default="float32", show_default=True,
              help="torch dtype (torch backend).")
@click.option("--model-name", default=None, help="The model name clients send (default: the artifact's name).")
def serve_cmd(artifact: str, host: str, port: int, api_key: str | None, slots: int, parallel: str, max_queue: int,
              max_tokens_limit: int, timeout_s: float, threads: int | None, n_ctx: int | None, gpu_layers: int,
              provider: str, device: str, dtype: str, backend: str, model_name: str | None) -> None:
    """Serve ARTIFACT over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)."""
    from ..runtime.engine import EngineOptions
    from ..runtime.process import keep_torch_out
    from ..runtime.serve import ServeConfig, serve

    # Every option is checked here, before the model loads.
    engine = EngineOptions(threads=threads, n_ctx=n_ctx, gpu_layers=gpu_layers, provider=provider, device=device,
                           dtype=dtype)
    config = ServeConfig(host=host, port=port, api_key=api_key, slots=slots, parallel=_parallel(parallel),
                         max_queue=max_queue, max_tokens_limit=max_tokens_limit, request_timeout_s=timeout_s,
                         engine=engine, backend=backend, model_name=model_name)
    keep_torch_out(artifact, backend)  # a GGUF/ONNX server has no use for torch's ~220 MB
    _quiet_transformers()
    try:
        serve(artifact, config, log=lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it already handled gracefully
        click.echo("stopped", err=True)
