"""``supertiny bench``: artifacts measured on this machine and judged against a target's budgets (the stage:
:mod:`supertiny.stages.bench`; the measuring: :mod:`supertiny.runtime.bench`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from supertiny.cli.core import main
from supertiny.cli.options import config_from, config_options
from supertiny.errors import InvalidInputError
from supertiny.outdir import check_output_file
from supertiny.runtime.bench.measure import BenchConfig, bench
from supertiny.runtime.bench.report import check_plot_path, format_comparison, format_result, plot
from supertiny.stages.bench import write_report
from supertiny.stages.registry import get
from supertiny.targets import load_target

STAGE = get("bench")
TARGET = next(i for i in STAGE.inputs if i.name == "target")


@main.command("bench")
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--target", default=None, help=TARGET.help)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the report (what --json prints) here, with its manifest (one artifact).")
@config_options(BenchConfig)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also draw the figures (.png/.svg/.pdf).")
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON (units in the keys).")
def bench_cmd(artifacts: tuple[str, ...], target: str | None, out: str | None, plot_path: str | None, as_json: bool,
              **params: Any) -> None:
    """Measure ARTIFACTS (.gguf files, ONNX exports, HF dirs) on this machine; judge them against --target.

    Exit code 1 when a budget is missed, 2 for usage errors.
    """
    config = config_from(BenchConfig, params)
    if out is not None and len(artifacts) != 1:
        raise InvalidInputError(f"--out writes one artifact's report; {len(artifacts)} were given")
    if out is not None:
        check_output_file(Path(out))
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
    if out is not None:
        write_report(report, out, artifacts[0], config, target)
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
