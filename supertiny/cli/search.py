"""``supertiny search``: try pruning levels x quantizations x formats, measure each, show the Pareto front
(:mod:`supertiny.flows.search`)."""

from __future__ import annotations

import json
from typing import Any

import click

from supertiny.cli.core import main, quiet_transformers
from supertiny.cli.options import config_from, config_options
from supertiny.flows.search import run_search
from supertiny.flows.search_grid import SearchConfig
from supertiny.flows.search_report import plot, table_lines
from supertiny.runtime.bench.report import check_plot_path


@main.command("search")
@click.option("--teacher", required=True, help="The model to start from (HF dir, .gguf or 'default').")
@click.option("--task", required=True, help="A shipped task's name (factory-tickets) or a task .toml file.")
@click.option("--task-data", required=True, type=click.Path(dir_okay=False),
              help="Labelled task records every candidate is scored on (quality).")
@click.option("--target", required=True, help="Target profile (name or .toml) whose budgets the candidates must meet.")
@config_options(SearchConfig)
@click.option("--rebench", is_flag=True, help="Benchmark cached candidates again (timings on a busy machine are "
              "noisy); their task and agreement figures are kept.")
@click.option("--work", "work_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the models, artifacts and cached measurements; a rerun reuses them.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw quality vs latency (.png/.svg/.pdf).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def search_cmd(teacher: str, task: str, task_data: str, target: str, rebench: bool, work_dir: str,
               plot_path: str | None, as_json: bool, **params: Any) -> None:
    """Find the smallest, fastest model that keeps the task's quality within --target's budgets.

    Tries each pruning level (and --student) x quantization x format, measures the artifact (runtime
    benchmark as the target runs it, task score, agreement with the teacher), prints one row per candidate,
    marks the Pareto front and recommends the best candidate that meets every budget. Every result is
    cached in --work: Ctrl-C and run again to continue.
    """
    config = config_from(SearchConfig, params)
    if plot_path:
        check_plot_path(plot_path)  # a bad path fails now, not after the search
    quiet_transformers()
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
