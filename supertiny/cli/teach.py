"""``supertiny teach``: teacher data by rejection sampling (the stage: :mod:`supertiny.stages.transfer.teach`)."""

from __future__ import annotations

import json
from typing import Any

import click

from supertiny.cli.core import main, quiet_transformers
from supertiny.cli.options import config_from, config_options, input_params, inputs_from, progress_bar
from supertiny.stages.registry import get
from supertiny.stages.transfer.teach import TeachConfig, teach

STAGE = get("teach")


@main.command("teach")
@input_params(STAGE, "The teacher data to write (.jsonl).")
@config_options(TeachConfig)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def teach_cmd(out: str, as_json: bool, **params: Any) -> None:
    """Make teacher data: K answers per prompt from TEACHER (a model, or an OpenAI-compatible URL such as
    http://host:8080/v1), each scored by the label or a judge; the best accepted one is kept.

    Finished prompts are kept in OUT.partial until the end: a rerun with the same settings
    resumes there (or extends a finished OUT with a larger --limit).
    """
    inputs = inputs_from(STAGE, params)
    config = config_from(TeachConfig, params)
    quiet_transformers()
    with progress_bar("teach") as bar:
        report = teach(inputs["teacher"], inputs["task"], inputs["prompts"], out, config, inputs["judge"],
                       progress=bar)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    q = report.manifest["quality"]
    rate = f"{q['samples_per_s']:.2f} samples/s" if q["samples_per_s"] else "no new samples"
    click.echo(f"wrote {report.out}: {q['accepted']}/{q['prompts']} prompts accepted "
               f"({q['acceptance_rate']:.1%}), mean score {q['mean_score']:.3f}, "
               f"{q['sample_acceptance_rate']:.1%} of samples good")
    resumed = f"; {report.resumed} prompts done by an earlier run" if report.resumed else ""
    click.echo(f"{report.generated} samples in {report.seconds:.1f}s ({rate}){resumed}")
    for note in report.manifest["notes"]:
        click.echo(f"note: {note}")
