"""``supertiny targets list|show``: the device target profiles (:mod:`supertiny.targets`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from supertiny.cli.core import main
from supertiny.targets import BUDGETS, SHIPPED_DIR, load_target, scan_targets


@main.group("targets")
def targets_group() -> None:
    """Device target profiles: the hardware, how to run on it, and the budget a model must meet."""


def _limits_summary(target: Any) -> str:
    limits = target.budget.limits()
    return " ".join(f"{b.short}{b.op}{limits[b.key]:g}{b.unit}"
                    for b in BUDGETS if b.key in limits)


@targets_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def targets_list_cmd(as_json: bool) -> None:
    """List the targets: $SUPERTINY_TARGETS and ~/.config/supertiny/targets first, then the shipped ones."""
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
