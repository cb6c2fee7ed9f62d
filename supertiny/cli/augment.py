"""``supertiny augment``: task data with label-preserving variants of its records (the stage:
:mod:`supertiny.stages.augment`)."""

from __future__ import annotations

import json
from typing import Any

import click

from supertiny.cli.core import main
from supertiny.cli.options import config_from, config_options, input_params, inputs_from
from supertiny.stages.augment import AugmentConfig
from supertiny.stages.registry import get

STAGE = get("augment")


@main.command("augment")
@input_params(STAGE, "The task data to write (.jsonl): the records, then their variants.")
@config_options(AugmentConfig)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def augment_cmd(out: str, as_json: bool, **params: Any) -> None:
    """Write DATA's records and --copies variants of each: the same labels, the input written otherwise (its
    extractive spans rewritten, the label following them; case, typos, shorthand, punctuation)."""
    m = STAGE.call(inputs_from(STAGE, params), out, config_from(AugmentConfig, params))
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=2))
        return
    q = m.quality
    dropped = ", ".join(f"{n} {why}" for why, n in sorted(q["dropped"].items())) or "none"
    click.echo(f"wrote {out}: {q['records']} records + {q['variants']} variants (dropped: {dropped})")
    click.echo("operations  " + "  ".join(f"{k} {v}" for k, v in sorted(q["operations"].items())))
