"""Commands that move knowledge from a teacher to a student: teach (teacher data)."""

from __future__ import annotations

import json

import click

from ..compress.teach import TeachConfig, teach
from ..compress.teachers import TeacherOptions
from ..runtime.engine import BACKENDS
from .core import _progress, _quiet_transformers, main, task_prompt_option


@main.command("teach")
@click.argument("teacher")
@click.option("--task", required=True, help="A shipped task's name (factory-tickets) or a task .toml file.")
@click.option("--prompts", "prompts", required=True, type=click.Path(dir_okay=False),
              help="Task data: JSON Lines, {\"input\": ..., \"label\": {...}} a line (label optional).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The teacher data to write (.jsonl).")
@task_prompt_option("the one TEACHER was trained with (its manifest), else full")
@click.option("--samples", "-k", default=4, show_default=True, help="Answers asked per prompt (K).")
@click.option("--stop-when-perfect", is_flag=True,
              help="Stop a prompt's samples at the first perfect answer (same answer kept, fewer samples made).")
@click.option("--judge", default=None, metavar="MODEL|URL",
              help="A model or OpenAI-compatible URL that grades unlabelled answers 1-5 (default: schema validity "
                   "alone accepts them).")
@click.option("--judge-threshold", default=4.0, show_default=True, help="Lowest judge grade (1-5) that accepts.")
@click.option("--concurrency", "-n", default=1, show_default=True,
              help="Prompts in flight: local engines (one per worker) or requests to a server.")
@click.option("--temperature", default=0.7, show_default=True, help="Sampling temperature (samples after the first).")
@click.option("--top-p", default=0.95, show_default=True, help="Nucleus sampling mass.")
@click.option("--greedy-first/--no-greedy-first", default=True, show_default=True,
              help="Sample 0 is the greedy answer.")
@click.option("--max-new-tokens", default=128, show_default=True, help="Reply length limit.")
@click.option("--seed", default=0, show_default=True, help="Base seed of the per-sample seeds.")
@click.option("--limit", type=int, default=None, help="Use only the first N prompts.")
@click.option("--overwrite", is_flag=True, help="Replace the output and drop an unfinished run's progress.")
@click.option("--threads", type=int, default=None,
              help="Local teacher: CPU threads per engine (default: the cores shared among the workers).")
@click.option("--batched", is_flag=True,
              help="Local GGUF teacher: one llama.cpp engine decodes the workers' prompts together (continuous "
              "batching, prompt cache) instead of an engine per worker. On 2 cores an engine per worker was "
              "faster (benchmarks/teach_batching.py).")
@click.option("--n-ctx", type=int, default=None, help="Local teacher: context length (default: the backend's).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="Local teacher: the engine backend.")
@click.option("--model-name", default=None, help="Server: the model field (default: the first of URL/models).")
@click.option("--judge-model-name", default=None, help="Judge server: the model field.")
@click.option("--api-key", default=None, help="Server: bearer token (default: $SUPERTINY_API_KEY).")
@click.option("--timeout", default=120.0, show_default=True, help="Server: seconds one request may take.")
@click.option("--retries", default=3, show_default=True, help="Server: extra tries on 429, 5xx or a connection error.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def teach_cmd(teacher: str, task: str, prompts: str, out: str, task_prompt: str, samples: int, stop_when_perfect: bool,
              judge: str | None,
              judge_threshold: float, concurrency: int, temperature: float, top_p: float, greedy_first: bool,
              max_new_tokens: int, seed: int, limit: int | None, overwrite: bool, threads: int | None,
              batched: bool, n_ctx: int | None, backend: str, model_name: str | None, judge_model_name: str | None,
              api_key: str | None, timeout: float, retries: int, as_json: bool) -> None:
    """Make teacher data: K answers per prompt from TEACHER (a model, or an OpenAI-compatible URL such as
    http://host:8080/v1), each scored by the label or a judge; the best accepted one is kept.

    Finished prompts are kept in OUT.partial until the end: a rerun with the same settings
    resumes there (or extends a finished OUT with a larger --limit).
    """
    _quiet_transformers()
    config = TeachConfig(samples=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                         seed=seed, greedy_first=greedy_first, judge=judge, judge_threshold=judge_threshold,
                         concurrency=concurrency, limit=limit, prompt=task_prompt,
                         stop_when_perfect=stop_when_perfect)
    options = TeacherOptions(threads=threads, n_ctx=n_ctx, backend=backend, model_name=model_name, api_key=api_key,
                             timeout_s=timeout, retries=retries, batched=batched)
    judge_options = TeacherOptions(threads=threads, n_ctx=n_ctx, backend=backend, model_name=judge_model_name,
                                   api_key=api_key, timeout_s=timeout, retries=retries)
    with _progress("teach") as bar:
        report = teach(teacher, task, prompts, out, config, options, judge_options, overwrite=overwrite,
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
