"""``supertiny run``: a recipe from teacher to verified device bundle (orchestration lives in
:mod:`supertiny.flows.pipeline`; this parses, prints progress and the final summary table)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from supertiny.cli.core import human, main
from supertiny.cli.verify import budget_lines
from supertiny.flows.pipeline import run
from supertiny.flows.recipe import load_recipe


def _say(text: str) -> None:
    click.echo(text, err=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The final summary: one row per stage, then the bundle's size, score and budget verdicts."""
    w = max(14, *(len(r.name) for r in result["stages"]))
    rows = [f"{'stage':<{w}} {'status':<8} {'seconds':>8}  output"]
    for r in result["stages"]:
        rows.append(f"{r.name:<{w}} {r.status:<8} {r.seconds:>8.0f}  {r.out}")
    ran = sum(r.seconds for r in result["stages"] if r.status == "ran")
    every = sum(r.seconds for r in result["stages"])
    rows.append(f"{'this run':<{w}} {'':<8} {result['seconds']:>8.0f}  (stages run now: {ran:.0f} s; "
                f"all stages as recorded: {every:.0f} s)")
    m = result["bundle"]
    q, d = m.quality, m.details
    b = d["budget"]
    size = d["bytes"][next(iter(d["artifacts"]))]
    rows += ["", f"bundle      {result['layout'].out / 'bundle'} ({human(m.bytes, 'B')} in {len(m.files)} files)",
             f"artifact    {d['primary']} {human(size, 'B')}",
             f"task score  {q['task_score']:.3f} vs the domain teacher's {q['teacher_task_score']:.3f} "
             f"({100 * (q['score_ratio'] or 0):.1f}%), {q['records']} test records"]
    fields = "  ".join(f"{k} {v:.3f}" for k, v in (q.get("fields") or {}).items())
    rows.append(f"fields      {fields}")
    for name, h in q.get("holdout", {}).items():  # text no generator wrote
        rows.append(f"hold-out    {name}: {h['task_score']:.3f} vs the teacher's {h['teacher_task_score']:.3f} "
                    f"({100 * (h['score_ratio'] or 0):.1f}%), {h['records']} records; "
                    + "  ".join(f"{k} {v:.3f}" for k, v in (h.get("fields") or {}).items()))
    rows += budget_lines(b)
    return rows


@main.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="The run's folder, one subfolder per stage [default: ./NAME-run, NAME the recipe's].")
@click.option("--teacher", default=None, help="Override the recipe's teacher (HF dir, .gguf or 'default').")
@click.option("--target", default=None, help="Override the recipe's target (name or .toml).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one recipe value (repeatable), e.g. --set distill.epochs=0.5.")
@click.option("--dry-run", is_flag=True, help="Validate the recipe and print the stage commands; run nothing.")
@click.pass_context
def run_cmd(ctx: click.Context, recipe: str, out: str | None, teacher: str | None, target: str | None,
            sets: tuple[str, ...], dry_run: bool) -> None:
    """Run RECIPE (a .toml file): teacher data, pruning, distillation, quantization, export, evaluation and the
    budget check, ending in OUT/bundle.

    Each stage writes one folder and is skipped on a rerun when its inputs and settings are unchanged, so a
    crash or Ctrl-C loses at most the stage that was running (training stages resume from their last
    checkpoint). Exit 0: the bundle passes the target's budgets on this machine; 1: it was built but
    misses a budget; 2: a bad recipe, or a stage failed (its command's own error is printed above).
    """

    r = load_recipe(recipe, {"teacher": teacher, "target": target}, sets)
    folder = Path(out or f"{r.name}-run")
    if dry_run:
        stages = run(r, folder, only_plan=True)["stages"]
        click.echo(f"recipe {r.source}: {r.name}, teacher {r.teacher}, target {r.target}, {len(stages)} stages "
                   f"+ bundle into {folder.resolve()}")
        w = max(13, *(len(s.name) for s in stages))
        for i, s in enumerate(stages, 1):
            click.echo(f"{i:>2}. {s.name:<{w}} $ {s.shown()}")
        return
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops a run as Ctrl-C does: the stage's child too
    try:
        result = run(r, folder, _say)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: finished stages are kept; rerun the same command to go on ({folder})", err=True)
        sys.exit(130)
    click.echo("\n".join(summary_lines(result)))
    if not result["bundle"].details["budget"]["passed"]:
        ctx.exit(1)
