"""``supertiny eval``: a model measured on its own backend — perplexity, agreement with a teacher and sample
replies, or its score on a structured-output task (the stage: :mod:`supertiny.stages.eval`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from supertiny.cli.core import human, main, quiet_transformers
from supertiny.cli.options import config_from, config_options, input_params, inputs_from, progress_bar
from supertiny.outdir import check_output_file
from supertiny.stages.eval import EvalConfig, EvalReport, TaskReport, check_inputs, evaluate, write_report
from supertiny.stages.registry import get

STAGE = get("eval")


@main.command("eval")
@input_params(STAGE, "Also write the report (what --json prints) here, with its manifest.", out_required=False)
@config_options(EvalConfig)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def eval_cmd(out: str | None, as_json: bool, **params: Any) -> None:
    """Measure MODEL: perplexity on a text, agreement with a teacher, greedy generations;
    or, with --task and --data, its score on a structured-output task."""
    inputs = inputs_from(STAGE, params)
    config = config_from(EvalConfig, params)
    check_inputs(inputs, config)
    if out is not None:
        check_output_file(Path(out))
    quiet_transformers()
    label = (f"task {inputs['task']}" if inputs["task"] else
             "perplexity" if inputs["teacher"] is None else "teacher vs student")
    with progress_bar(label) as bar:
        report = evaluate(inputs, config, bar)
    if out is not None:
        write_report(report, out, inputs, config)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif isinstance(report, TaskReport):
        _print_task_report(report)
    else:
        _print_report(report)


def _print_model(m: dict[str, Any], manifest: dict[str, Any] | None) -> None:
    click.echo(f"model       {m['source']} ({m['architecture']}, {human(m['parameters'])} params, {m['dtype']}, "
               f"{m['backend']})")
    if manifest is not None:
        click.echo("artifact    " + (f"manifest unreadable: {manifest['error']}" if "error" in manifest else
                                     f"{manifest['stage']} v{manifest['stage_version']} of {manifest['source']} "
                                     f"({manifest['created']}; `supertiny verify` re-checks its files)"))


def _print_task_report(r: TaskReport) -> None:
    s = r.evaluation.score
    _print_model(r.model, r.manifest)
    click.echo(f"task        {s.task} on {r.data}: {s.n} records, {r.seconds:.1f} s "
               f"(greedy{', constrained to the schema' if r.constrained else ''}, up to {r.max_new_tokens} new tokens, "
               f"{r.prompt} prompt)")
    click.echo(f"task score  {s.task_score:.3f}   JSON valid {s.json_valid:.1%}   schema valid {s.schema_valid:.1%}")
    click.echo("fields      " + "   ".join(f"{name} {acc:.1%}" for name, acc in s.fields.items()))
    if s.f1:
        click.echo("list F1     " + "   ".join(f"{name} {f1:.3f}" for name, f1 in s.f1.items()))


def _print_report(r: EvalReport) -> None:
    m, s = r.model, r.score
    _print_model(m, r.manifest)
    click.echo(f"text        {r.text}: {s.tokens:,} tokens, window {s.window}, stride {s.stride}")
    click.echo(f"perplexity  {s.perplexity:.3f}  ({s.nll_mean:.4f} nats/token over {s.tokens_scored:,} tokens, "
               f"{s.seconds:.1f} s)")
    if r.agreement is not None:
        a, t = r.agreement, r.teacher
        assert t is not None
        click.echo(f"teacher     {t['source']} ({human(t['parameters'])} params): perplexity "
                   f"{a.teacher.perplexity:.3f}")
        click.echo(f"agreement   top-1 {a.top1_agreement:.2%}   KL(teacher||student) mean {a.kl_mean:.4f} "
                   f"p95 {a.kl_p95:.4f} nats")
    for g in r.generations:
        click.echo(f"\n> {g.prompt}\n{g.completion}\n  ({g.new_tokens} tokens, {g.tokens_per_s:.1f} tok/s)")
