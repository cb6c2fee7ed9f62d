"""``supertiny rl``: on-policy RL of a student on the task's reward, with a KL penalty toward a reference."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

import click

from ..compress.rl import KL_ESTIMATORS
from ..manifest import Manifest
from .core import _progress, _quiet_transformers, main


@main.command("rl")
@click.argument("student")
@click.option("--task", required=True, help="A shipped task's name (factory-tickets) or a task .toml file.")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Labelled task data (input, label): the reward compares each sampled answer with the label.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="The student to write.")
@click.option("--teacher", default=None,
              help="KL reference (HF dir, .gguf or 'default'; same tokenizer); default: the frozen initial student.")
@click.option("--group", default=4, show_default=True, help="Answers sampled per prompt (G).")
@click.option("--kl-coef", default=0.05, show_default=True, help="Weight of the per-token KL penalty.")
@click.option("--kl", type=click.Choice(KL_ESTIMATORS), default="k3", show_default=True,
              help="k3: estimator on the sampled token; full: exact KL over the vocabulary.")
@click.option("--steps", default=50, show_default=True, help="Optimizer steps (one rollout each).")
@click.option("--lr", default=5e-6, show_default=True, help="Constant learning rate.")
@click.option("--batch-prompts", default=2, show_default=True, help="Prompts per step and process.")
@click.option("--temperature", default=1.0, show_default=True, help="Sampling temperature (logπ uses it too).")
@click.option("--max-new-tokens", default=96, show_default=True, help="Longest sampled answer.")
@click.option("--max-length", default=1024, show_default=True,
              help="Prompt + max-new-tokens; longer prompts are skipped and counted.")
@click.option("--bf16/--no-bf16", default=False, show_default=True, help="bfloat16 autocast (weights stay float32).")
@click.option("--save-every", default=25, show_default=True, help="Checkpoint every N steps (0: never).")
@click.option("--eval-every", default=0, show_default=True, help="Evaluate every N steps (0: at the end only).")
@click.option("--dev", type=click.Path(dir_okay=False), default=None, help="Labelled task data for evaluation.")
@click.option("--dev-limit", default=10, show_default=True, help="Dev records scored (greedy generation: slow).")
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the unfinished run from its last checkpoint in OUT.work/.")
@click.option("--overwrite", is_flag=True, help="Replace OUT and start over.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def rl_cmd(student: str, task: str, data: str, out_dir: str, teacher: str | None, group: int, kl_coef: float,
           kl: str, steps: int, lr: float, batch_prompts: int, temperature: float, max_new_tokens: int,
           max_length: int, bf16: bool, save_every: int, eval_every: int, dev: str | None, dev_limit: int, seed: int,
           resume: bool, overwrite: bool, as_json: bool) -> None:
    """GRPO-style RL of STUDENT: G sampled answers per prompt, group-relative task reward, KL penalty."""
    from ..compress.rl import RLConfig, rl

    _quiet_transformers()
    config = RLConfig(group=group, kl_coef=kl_coef, kl=kl, steps=steps, lr=lr, batch_prompts=batch_prompts,
                      temperature=temperature, max_new_tokens=max_new_tokens, max_length=max_length, bf16=bf16,
                      save_every=save_every, eval_every=eval_every, dev_limit=dev_limit, seed=seed,
                      overwrite=overwrite)
    with ExitStack() as stack:
        bar: dict[str, Any] = {}

        def update(done: int, total: int) -> None:
            if "fn" not in bar:
                bar["fn"] = stack.enter_context(_progress("rl"))
            bar["fn"](done, total)

        manifest = rl(student, out_dir, task, data, config, teacher=teacher, dev=dev, resume=resume,
                      log=lambda message: click.echo(message, err=True), progress=update)
    if manifest is None:  # another process of a data-parallel run: the main one reports
        return
    click.echo(json.dumps(manifest.to_dict(), indent=2) if as_json else "\n".join(_lines(out_dir, manifest)))


def _lines(out: str, m: Manifest) -> list[str]:
    d, q = m.details, m.quality
    lines = [f"wrote {out}: {d['steps']} steps on {d['prompts']} prompts, reward {d['reward_first']} -> "
             f"{d['reward_last']}, KL {d['kl_last']}, {d['tokens_per_s']} tokens/s"]
    if "task_score" in q:
        lines.append(f"dev task_score {q['task_score']:.3f} on {q['n']} records (json valid {q['json_valid']:.2f})")
    return lines + [f"note: {n}" for n in m.notes]
