"""``supertiny rl``: on-policy RL of a student on the task's reward, with a KL penalty toward a reference."""

from __future__ import annotations

from functools import partial

import click

from ..compress.rl import KL_ESTIMATORS
from ..manifest import Manifest
from .core import _quiet_transformers, dev_line, main, run_training, training_head, training_tail


@main.command("rl")
@training_head("Labelled task data (input, label): the reward compares each sampled answer with the label.",
               "KL reference (HF dir, .gguf or 'default'; same tokenizer); default: the frozen initial student.")
@click.option("--group", default=4, show_default=True, help="Answers sampled per prompt (G).")
@click.option("--kl-coef", default=0.05, show_default=True, help="Weight of the per-token KL penalty.")
@click.option("--kl", type=click.Choice(KL_ESTIMATORS), default="k3", show_default=True,
              help="k3: estimator on the sampled token; full: exact KL over the vocabulary.")
@click.option("--steps", default=50, show_default=True, help="Optimizer steps (one rollout each).")
@click.option("--lr", default=5e-6, show_default=True, help="Constant learning rate.")
@click.option("--batch-prompts", default=2, show_default=True, help="Prompts per step and process.")
@click.option("--resample", default=0, show_default=True,
              help="Dynamic sampling: up to N more rounds replace groups whose answers all got the same reward.")
@click.option("--temperature", default=1.0, show_default=True, help="Sampling temperature (logπ uses it too).")
@click.option("--max-new-tokens", default=96, show_default=True, help="Longest sampled answer.")
@click.option("--max-length", default=1024, show_default=True,
              help="Prompt + max-new-tokens; longer prompts are skipped and counted.")
@training_tail(25)
def rl_cmd(student: str, task: str, data: str, out_dir: str, teacher: str | None, task_prompt: str, group: int,
           kl_coef: float, kl: str, steps: int, lr: float, batch_prompts: int, resample: int, temperature: float,
           max_new_tokens: int,
           max_length: int, bf16: bool, save_every: int, eval_every: int, dev: str | None, dev_limit: int, seed: int,
           resume: bool, overwrite: bool, as_json: bool) -> None:
    """GRPO-style RL of STUDENT: G sampled answers per prompt, group-relative task reward, KL penalty."""
    from ..compress.rl import RLConfig, rl

    _quiet_transformers()
    config = RLConfig(group=group, kl_coef=kl_coef, kl=kl, steps=steps, lr=lr, batch_prompts=batch_prompts,
                      resample=resample, temperature=temperature, max_new_tokens=max_new_tokens,
                      max_length=max_length, bf16=bf16,
                      save_every=save_every, eval_every=eval_every, dev_limit=dev_limit, seed=seed,
                      prompt=task_prompt, overwrite=overwrite)
    call = partial(rl, student, out_dir, task, data, config, teacher=teacher, dev=dev, resume=resume)
    run_training(call, "rl", False, as_json, partial(_lines, out_dir))



def _lines(out: str, m: Manifest) -> list[str]:
    d, q = m.details, m.quality
    lines = [f"wrote {out}: {d['steps']} steps on {d['prompts']} prompts, reward {d['reward_first']} -> "
             f"{d['reward_last']}, KL {d['kl_last']}, {d['tokens_per_s']} tokens/s"]
    return lines + dev_line(q) + [f"note: {n}" for n in m.notes]
