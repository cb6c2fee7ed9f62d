"""``supertiny distill``: SFT or logit KD of a student on a task's answers."""

from __future__ import annotations

from functools import partial

import click

from ..compress.losses import LOSS_NAMES
from ..manifest import Manifest
from .core import _quiet_transformers, dev_line, main, run_training, training_head, training_tail


@main.command("distill")
@training_head("Teacher data from `supertiny teach` (input, response) or task data (input, label).",
               "Teacher model (HF dir, .gguf or 'default'); needed for KD losses.")
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
@training_tail(50, [click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                                 help="Keep KD caches here (default: OUT.work/, removed when done).")])
def distill_cmd(student: str, task: str, data: str, out_dir: str, teacher: str | None, task_prompt: str, loss: str,
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
                           dev_limit=dev_limit, seed=seed, prompt=task_prompt, overwrite=overwrite)
    call = partial(distill, student, out_dir, task, data, config, teacher=teacher, dev=dev, resume=resume,
                   cache_dir=cache_dir)
    run_training(call, "distill", True, as_json, partial(_lines, out_dir))



def _lines(out: str, m: Manifest) -> list[str]:
    d, q = m.details, m.quality
    lines = [f"wrote {out}: {d['steps']} steps ({d['epochs']} epochs) on {d['examples']} examples, "
             f"final loss {d['final'].get('loss')}, {d['tokens_per_s']} tokens/s"]
    lines += dev_line(q)
    if "top1_agreement" in q:
        lines.append(f"agreement with the teacher: top-1 {q['top1_agreement']:.3f}, KL {q['kl_mean']:.4f}")
    return lines + [f"note: {n}" for n in m.notes]
