"""``supertiny search``: try pruning levels x quantizations x formats, measure each, show the Pareto front."""

from __future__ import annotations

import json

import click

from ..errors import InvalidInputError
from ..search import FORMATS, LATENCY, QUANTS
from .core import _quiet_transformers, main


def _list(value: str | None, option: str, kind: type = str) -> tuple:
    if value is None:
        return ()
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InvalidInputError(f"{option} is empty")
    try:
        return tuple(kind(v) for v in items)
    except ValueError:
        raise InvalidInputError(f"{option} takes {'whole numbers' if kind is int else 'numbers'} separated by "
                                f"commas, got {value!r}") from None


@main.command("search")
@click.option("--teacher", required=True, help="The model to start from (HF dir, .gguf or 'default').")
@click.option("--task", required=True, help="A shipped task's name (factory-tickets) or a task .toml file.")
@click.option("--task-data", required=True, type=click.Path(dir_okay=False),
              help="Labelled task records every candidate is scored on (quality).")
@click.option("--task-limit", default=20, show_default=True, help="Records scored per candidate.")
@click.option("--target", required=True, help="Target profile (name or .toml) whose budgets the candidates must meet.")
@click.option("--layers", default=None, help="Pruning levels: decoder layers kept, e.g. 30,20,16 (the teacher's "
              "depth: unpruned). A pruned model without --kd-steps scores ~0 on a task.")
@click.option("--mlp", default="1", show_default=True, help="MLP width levels kept, fractions, e.g. 1,0.75.")
@click.option("--student", "students", multiple=True,
              help="A model you already made (e.g. a distilled student): tried as it is (repeatable).")
@click.option("--quant", "quants", default="Q8_0,Q4_0", show_default=True,
              help=f"Quantizations: {', '.join(QUANTS)}. llama.cpp types go to GGUF, int4/int8 to ONNX, "
              "w4a16/w8a8 (`supertiny quantize`, int4 at group 32) to both, none = float.")
@click.option("--formats", default="gguf", show_default=True, help=f"Formats: {', '.join(FORMATS)}; a quantization "
              "a format cannot hold is skipped with a note.")
@click.option("--distill-data", type=click.Path(dir_okay=False), default=None,
              help="Teacher data (`supertiny teach`) for a short knowledge transfer of every pruned level.")
@click.option("--kd-steps", default=0, show_default=True, help="Logit-KD (fkl) steps per pruned level (needs "
              "--distill-data; 0: candidates are the raw pruned models).")
@click.option("--latency", type=click.Choice(tuple(LATENCY)), default="ttft", show_default=True,
              help="The latency objective: time to first token, or decode speed.")
@click.option("--agreement-tokens", default=256, show_default=True,
              help="Held-out tokens on which each candidate is compared with the teacher (0: off).")
@click.option("--bench-repeats", default=1, show_default=True, help="Measured runs at the target's prompt length.")
@click.option("--bench-new-tokens", default=32, show_default=True, help="Tokens decoded per measured run.")
@click.option("--bench-requests", type=int, default=None,
              help="Requests in the latency test (default: the target's concurrency).")
@click.option("--rebench", is_flag=True, help="Benchmark cached candidates again (timings on a busy machine are "
              "noisy); their task and agreement figures are kept.")
@click.option("--work", "work_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the models, artifacts and cached measurements; a rerun reuses them.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw quality vs latency (.png/.svg/.pdf).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def search_cmd(teacher: str, task: str, task_data: str, task_limit: int, target: str, layers: str | None, mlp: str,
               students: tuple[str, ...], quants: str, formats: str, distill_data: str | None, kd_steps: int,
               latency: str, agreement_tokens: int, bench_repeats: int, bench_new_tokens: int,
               bench_requests: int | None, rebench: bool, work_dir: str, plot_path: str | None, as_json: bool) -> None:
    """Find the smallest, fastest model that keeps the task's quality within --target's budgets.

    Tries each pruning level (and --student) x quantization x format, measures the artifact (runtime
    benchmark as the target runs it, task score, agreement with the teacher), prints one row per candidate,
    marks the Pareto front and recommends the best candidate that meets every budget. Every result is
    cached in --work: Ctrl-C and run again to continue.
    """
    from ..search import SearchConfig
    from ..search_report import plot, table_lines
    from ..search_run import run_search

    config = SearchConfig(layers=_list(layers, "--layers", int), mlp=_list(mlp, "--mlp", float),
                          quants=_list(quants, "--quant"), formats=_list(formats, "--formats"), students=students,
                          distill_data=distill_data, kd_steps=kd_steps, latency=latency, task_limit=task_limit,
                          agreement_tokens=agreement_tokens, bench_repeats=bench_repeats,
                          bench_new_tokens=bench_new_tokens, bench_requests=bench_requests)
    if plot_path:
        from ..runtime.bench_report import check_plot_path

        check_plot_path(plot_path)  # a bad path fails now, not after the search
    _quiet_transformers()
    report = run_search(teacher, task, task_data, target, config, work_dir, log=lambda m: click.echo(m, err=True),
                        rebench=rebench)
    if plot_path:
        plot(report, plot_path)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo("\n".join(table_lines(report)))
    ran = ", ".join(f"{k} {v}" for k, v in report["ran"].items() if v) or "nothing (all cached)"
    click.echo(f"ran         {ran}; {report['seconds']:.0f} s; work folder {report['work']}")
    if plot_path:
        click.echo(f"plot        {plot_path}")
