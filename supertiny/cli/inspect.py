"""``supertiny inspect``: what a model is, from its metadata alone (and what its manifest says it was made from)."""

from __future__ import annotations

import json
from typing import Any

import click

from supertiny.cli.core import human, main
from supertiny.cli.verify import manifest_rows
from supertiny.models import describe, resolve


def _print_info(info: dict[str, Any], extra: list[tuple[str, str]] | None = None) -> None:
    shown = dict(info)
    shown["parameters"] = f"{info['parameters']:,} ({human(info['parameters'])})"
    shown["file_bytes"] = f"{info['file_bytes']:,} ({human(info['file_bytes'], 'B')})"
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

    info = describe(model).to_dict()
    rows, manifest = manifest_rows(resolve(model)[1])
    if as_json:
        click.echo(json.dumps({**info, **({"manifest": manifest} if manifest is not None else {})}, indent=2))
    else:
        _print_info(info, rows)
