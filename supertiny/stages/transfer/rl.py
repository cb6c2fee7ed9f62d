"""The rl stage: on-policy RL of a (distilled) student on the task's own reward, held near a reference.

GRPO-style, one update per rollout (the maths and why: :mod:`.policy`; the Trainer:
:mod:`.rl_trainer`). Checkpoints, resume, dev evaluation and the install are the training
stages' shared scaffolding (:mod:`.training`), as for ``distill``.

Example::

    rl("/tmp/kd", "/tmp/rl", "factory-tickets", "train.jsonl", RLConfig(steps=20), teacher="/tmp/teacher")
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny.manifest import Manifest
from supertiny.models import load_model
from supertiny.settings import NON_NEG, NON_NEG_INT, POS_INT, POSITIVE, at_least, setting
from supertiny.stages.registry import Log, Progress, get, stage
from supertiny.stages.transfer.policy import KL_ESTIMATORS, task_reward
from supertiny.stages.transfer.training import (
    TrainingConfig,
    dev_evaluator,
    finish,
    fit,
    loaded,
    mean,
    setup,
    teacher_view,
    train_loss,
    training_args,
    training_inputs,
)
from supertiny.tasks.prompts import RECORD_KEY, prompt_record

STAGE, STAGE_VERSION = "rl", 1
Reward = Callable[[Any, str, dict[str, Any]], float]


@dataclass(frozen=True)
class RLConfig(TrainingConfig):
    """Settings of one RL run (the shared training settings first: :class:`.training.TrainingConfig`)."""

    group: int = setting(4, "Answers sampled per prompt (G); advantages compare them, so at least 2.",
                         check=at_least(2))
    kl_coef: float = setting(0.05, "Weight of the per-token KL penalty.", check=NON_NEG)
    kl: str = setting("k3", "k3: estimator on the sampled token; full: exact KL over the vocabulary.",
                      choices=KL_ESTIMATORS)
    steps: int = setting(50, "Optimizer steps (one rollout each).", check=POS_INT)
    lr: float = setting(5e-6, "Constant learning rate.", check=POSITIVE)
    batch_prompts: int = setting(2, "Prompts per step and process.", check=POS_INT)
    resample: int = setting(0, "Dynamic sampling: up to N more rounds replace groups whose answers all got the same "
                            "reward.", check=NON_NEG_INT)
    temperature: float = setting(1.0, "Sampling temperature (logπ uses it too).", check=POSITIVE)
    max_new_tokens: int = setting(96, "Longest sampled answer.", check=POS_INT)
    max_length: int = setting(1024, "Prompt + max-new-tokens; longer prompts are skipped and counted.",
                              check=POS_INT)
    adv_eps: float = setting(1e-4, "Added to a group's reward deviation before dividing.", check=POSITIVE,
                             role="internal")
    save_every: int = setting(25, "Checkpoint every N steps (0: never).", check=NON_NEG_INT)
    constrained: bool = setting(False, "Sample answers held to the task's JSON schema (its extractive fields to the "
                                "prompt's spans): the reward then judges content, not format. The policy is "
                                "updated on its own log-probabilities of the sampled answers [default: free].",
                                flag="--constrained", off="--free", example=True)


INPUTS = training_inputs("Labelled task data (input, label): the reward compares each sampled answer with the label.",
                         "KL reference (HF dir, .gguf or 'default'; same tokenizer); default: the frozen initial "
                         "student.")


@stage(STAGE, version=STAGE_VERSION, config=RLConfig, inputs=INPUTS, output="dir", command=("rl",),
       out_option="--out")
def run(inputs: dict[str, str | None], out: Path, config: RLConfig, log: Log, progress: Progress | None,
        callbacks: Sequence[Any] = (), reward: Reward = task_reward) -> Manifest | None:
    """RL-train ``inputs["student"]`` into ``out`` on the task reward (None on the other processes);
    ``callbacks``: extra Trainer callbacks, ``reward``: ``(task, text, label) -> float`` (a library caller's)."""
    # torch and transformers: heavy, and only a training process needs them
    from supertiny.stages.transfer.rl_trainer import PromptIndices, RLTrainer, collate, load_prompts

    teacher = inputs["teacher"]
    s = setup(STAGE, STAGE_VERSION, inputs, out, config, log, lambda work: training_args(
        config, work, batch_size=config.batch_prompts, lr=config.lr, steps=config.steps,
        save_every=config.save_every, constant_lr=True))
    prompts, counts = load_prompts(inputs["data"], s.spec, s.tokenizer, config.max_length, config.max_new_tokens,
                                   config.constrained)
    if teacher is not None:
        ref_lm = load_model(teacher)
        reference = teacher_view(ref_lm.tokenizer, s.tokenizer, ref_lm.model, s.model, s.source,
                                 (str(teacher), str(s.out)))
    else:
        reference = copy.deepcopy(s.model)  # the frozen initial student
    reference.to(s.args.device).eval().requires_grad_(False)
    loaded(s, f"{len(prompts)} prompts from {counts['records']} records"
           + (f"; skipped {counts['too_long']} too long" if counts["too_long"] else ""),
           f"skipped {counts['too_long']} prompts longer than max_length {config.max_length} minus max_new_tokens "
           f"{config.max_new_tokens} (first: {counts['first_too_long']})" if counts["too_long"] else None)
    s.model.train()
    trainer = RLTrainer(model=s.model, args=s.args, train_dataset=PromptIndices(len(prompts)), data_collator=collate,
                        prompts=prompts, task=s.spec, tok=s.tokenizer, reference=reference, config=config,
                        reward=reward)
    _, evaluator = fit(s, trainer, dev_evaluator(s.spec, s.tokenizer, s.dev, []), progress, callbacks,
                       f"rl, group {config.group}")
    if not s.main:
        return None

    def details(logs: list[dict[str, Any]]) -> dict[str, Any]:
        steady = logs[1:] or logs
        return {
            "steps": trainer.state.global_step, "prompts": len(prompts), "data": counts,
            "train_loss": train_loss(logs),
            "reward_first": logs[0]["reward_mean"] if logs else None,
            "reward_last": logs[-1]["reward_mean"] if logs else None,
            "reward_mean": mean([r["reward_mean"] for r in logs], 4),
            "kl_last": logs[-1]["kl"] if logs else None,
            "tokens_per_s": mean([r["tokens_per_s"] for r in steady]),
            "answer_tokens_per_s": mean([r["answer_tokens_per_s"] for r in steady]),
            "rollout_share": mean([r["rollout_share"] for r in steady], 3),
            "informative_share": mean([r["informative_share"] for r in logs], 3),
            "groups_sampled_per_step": mean([r["groups_sampled"] for r in logs], 2),
            "reference": "teacher" if teacher else "initial student", "world_size": s.args.world_size,
            RECORD_KEY: prompt_record(s.spec),
        }

    return finish(s, f"rl: {s.out.name}", ("loss", "reward_mean", "kl"), details,
                  evaluator.last or {"skipped": "no --dev data"})


def rl(student: str | os.PathLike[str], out: str | os.PathLike[str], task: str | os.PathLike[str],
       data: str | os.PathLike[str], config: RLConfig | None = None, teacher: str | None = None,
       dev: str | os.PathLike[str] | None = None, resume: bool = False, log: Log | None = None,
       progress: Progress | None = None, callbacks: Sequence[Any] = (), reward: Reward | None = None
       ) -> Manifest | None:
    """RL-train STUDENT on the labelled prompts of DATA into OUT (a plain HF directory with an ``rl`` manifest).

    Args:
        student: a Hugging Face directory, a ``.gguf`` file or ``"default"`` (usually a distilled student).
        out: the directory to create; checkpoints live in ``OUT.work/`` until it is installed.
        task: a shipped task's name or a ``.toml`` file; data: labelled task data (input, label).
        config: :class:`RLConfig`; teacher: the KL reference (default: the frozen initial student).
        dev: labelled task data scored during training; resume: continue from ``OUT.work/``.
        log, progress, callbacks: as :func:`supertiny.stages.transfer.distill.distill`.
        reward: ``(task, text, label) -> float`` instead of :func:`.policy.task_reward`.

    Returns:
        The manifest (``quality``: final dev figures; ``details``: rewards, KL, tokens/s), or ``None``
        on the other processes of a data-parallel run.
    """
    config = config or RLConfig()
    if resume:
        config = dataclasses.replace(config, resume=True)
    inputs = {"student": student, "task": task, "data": data, "teacher": teacher, "dev": dev}
    return get(STAGE).call(inputs, out, config, log, progress, callbacks=callbacks, reward=reward or task_reward)
