"""``supertiny distill``: SFT or logit KD of a student on a task's answers."""

from __future__ import annotations

import json
from contextlib import ExitStack
from functools import partial
from typing import Any

import click

from ..compress.losses import LOSS_NAMES
from ..manifest import Manifest
from .core import _progress, _quiet_transformers, main


@main.command("distill")
@click.argument("student")
@click.option("--task", required=True, help="A shipped task's name (factory-tickets) or a task .toml file.")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Teacher data from `supertiny teach` (input, response) or task data (input, label).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="The student to write.")
@click.option("--teacher", default=None, help="Teacher model (HF dir, .gguf or 'default'); needed for KD losses.")
@click.option("--loss", type=click.Choice(LOSS_NAMES), default="sft", show_default=True,
              help="sft: cross-entropy on the answers; fkl/rkl/jsd: logit KD from the teacher's cached top-k.")
@click.option("--temperature", default=1.0, show_default=True, help="KD softmax temperature (loss scaled by T^2).")
@click.option("--alpha", default=0.5, show_default=True, help="loss = alpha*KD + (1-alpha)*CE.")
@click.option("--beta", default=0.5, show_default=True, help="jsd's mixture weight.")
@click.option("--top-k", default=32, show_default=True, help="Teacher tokens cached per answer token.")
@click.option("--steps", type=int, default=None, help="Optimizer steps (default: --epochs).")
@click.option("--epochs", default=1.0, show_default=True)
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--batch-size", default=4, show_default=True, help="Examples per step and process.")
@click.option("--grad-accum", default=1, show_default=True)
@click.option("--max-length", default=1024, show_default=True,
              help="Longer examples are skipped and counted in the manifest.")
@click.option("--bf16/--no-bf16", default=False, show_default=True, help="bfloat16 autocast (weights stay float32).")
@click.option("--save-every", default=50, show_default=True, help="Checkpoint every N steps (0: never).")
@click.option("--eval-every", default=0, show_default=True, help="Evaluate every N steps (0: at the end only).")
@click.option("--dev", type=click.Path(dir_okay=False), default=None, help="Labelled task data for evaluation.")
@click.option("--dev-limit", default=10, show_default=True, help="Dev records scored (greedy generation: slow).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Keep KD caches here (default: OUT.work/, removed when done).")
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the unfinished run from its last checkpoint in OUT.work/.")
@click.option("--overwrite", is_flag=True, help="Replace OUT and start over.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def distill_cmd(student: str, task: str, data: str, out_dir: str, teacher: str | None, loss: str,
                temperature: float, alpha: float, beta: float, top_k: int, steps: int | None, epochs: float,
                lr: float, batch_size: int, grad_accum: int, max_length: int, bf16: bool, save_every: int,
                eval_every: int, dev: str | None, dev_limit: int, cache_dir: str | None, seed: int, resume: bool,
                overwrite: bool, as_json: bool) -> None:
    """Train STUDENT on a task's answers by SFT or logit KD; runs data-parallel under torchrun/accelerate."""
    from ..compress.distill import DistillConfig, distill

    _quiet_transformers()
    config = DistillConfig(loss=loss, temperature=temperature, alpha=alpha, beta=beta, top_k=top_k, steps=steps,
                           epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
                           max_length=max_length, bf16=bf16, save_every=save_every, eval_every=eval_every,
                           dev_limit=dev_limit, seed=seed, overwrite=overwrite)
    call = partial(distill, student, out_dir, task, data, config, teacher=teacher, dev=dev, resume=resume,
                   cache_dir=cache_dir)
    phase = ["distill"]

    def log(message: str) -> None:
        click.echo(message, err=True)
        phase[0] = message.split(" ", 1)[0]  # "teacher ..." or "training ...": the next bar's label

    with ExitStack() as stack:
        bar: dict[str, Any] = {}

        def update(done: int, total: int) -> None:
            if bar.get("key") != (phase[0], total):  # a new phase gets its own bar
                stack.close()
                bar.update(key=(phase[0], total), fn=stack.enter_context(_progress(phase[0])))
            bar["fn"](done, total)

        manifest = call(log=log, progress=update)
    if manifest is None:  # another process of a data-parallel run: the main one reports
        return
    click.echo(json.dumps(manifest.to_dict(), indent=2) if as_json else "\n".join(_lines(out_dir, manifest)))


def _lines(out: str, m: Manifest) -> list[str]:
    d, q = m.details, m.quality
    lines = [f"wrote {out}: {d['steps']} steps ({d['epochs']} epochs) on {d['examples']} examples, "
             f"final loss {d['final'].get('loss')}, {d['tokens_per_s']} tokens/s"]
    if "task_score" in q:
        lines.append(f"dev task_score {q['task_score']:.3f} on {q['n']} records (json valid {q['json_valid']:.2f})")
    if "top1_agreement" in q:
        lines.append(f"agreement with the teacher: top-1 {q['top1_agreement']:.3f}, KL {q['kl_mean']:.4f}")
    return lines + [f"note: {n}" for n in m.notes]
