"""``supertiny distill``: train a student on a task's answers, by SFT or by logit KD from a cached teacher.

Data is JSON Lines in either form (errors name ``FILE:LINE``):

* teacher data from ``supertiny teach``: ``{"input": ..., "response": str | null, ...}``;
  lines whose ``response`` is null (nothing accepted) are skipped and counted;
* task data: ``{"input": ..., "label": {...}}``; the target is ``task.format_answer(label)``
  (how the default teacher is first fine-tuned into the domain teacher).

Each example is the task's chat prompt (``task.messages(input)`` with the generation
prompt) followed by the answer and the end-of-turn token; the loss is on the answer
only. An example longer than ``max_length`` is **skipped and counted** (the manifest
names the first one): cutting the prompt would drop the instruction and cutting the
answer would teach broken JSON. With KD losses the teacher's top-k distribution per
answer token is computed once (:mod:`.kdcache`) and reused by every epoch and resume.

Checkpoints go to ``OUT.work/`` (``checkpoint-N/``: safetensors weights, optimizer,
scheduler, RNG states, step), with ``metrics.jsonl``; ``--resume`` continues from the
last one with bit-identical results. When training ends the student is installed as
``OUT`` (a plain Hugging Face directory with ``metrics.jsonl``, ``training.png`` and a
``supertiny.json`` manifest) and ``OUT.work/`` is removed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..manifest import Manifest
from .losses import LOSS_NAMES

STAGE, STAGE_VERSION = "distill", 1
AGREEMENT_SEQUENCES = 2  # dev sequences on which student and teacher are compared during training


def bound_problems(config: Any, at_least_one: Sequence[str], non_negative: Sequence[str]) -> list[str]:
    """What is wrong with ``config``'s fields ``at_least_one`` (each must be >= 1) and ``non_negative`` (>= 0)."""
    problems = [f"{name} must be at least 1, got {getattr(config, name)}"
                for name in at_least_one if getattr(config, name) < 1]
    return problems + [f"{name} must be 0 or more, got {getattr(config, name)}"
                       for name in non_negative if getattr(config, name) < 0]


@dataclass(frozen=True)
class DistillConfig:
    """Settings of one distillation run (validated on creation)."""

    loss: str = "sft"
    temperature: float = 1.0
    alpha: float = 0.5  # loss = alpha * KD + (1 - alpha) * CE
    beta: float = 0.5  # jsd's mixture weight
    top_k: int = 32
    cache_dtype: str = "float16"
    steps: int | None = None  # optimizer steps; None: run `epochs`
    epochs: float = 1.0
    lr: float = 1e-4
    warmup_ratio: float = 0.03
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024
    bf16: bool = False
    save_every: int = 50
    eval_every: int = 0  # 0: evaluate only at the end
    dev_limit: int = 10
    seed: int = 0
    prompt: str = "auto"  # the task prompt (supertiny.tasks.prompts): auto = brief when the task has one
    overwrite: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.loss not in LOSS_NAMES:
            problems.append(f"loss {self.loss!r} is not one of {', '.join(LOSS_NAMES)}")
        problems += bound_problems(self, ("top_k", "batch_size", "grad_accum", "max_length", "dev_limit"),
                                   ("save_every", "eval_every", "seed"))
        if self.steps is not None and self.steps < 1:
            problems.append(f"steps must be at least 1, got {self.steps}")
        if self.epochs <= 0 or self.lr <= 0 or self.temperature <= 0:
            problems.append("epochs, lr and temperature must be positive")
        if not (0.0 <= self.alpha <= 1.0 and 0.0 <= self.beta <= 1.0 and 0.0 <= self.warmup_ratio < 1.0):
            problems.append("alpha and beta must lie in [0, 1], warmup_ratio in [0, 1)")
        if self.cache_dtype not in ("float16", "float32"):
            problems.append(f"cache_dtype must be float16 or float32, got {self.cache_dtype!r}")
        if problems:
            raise InvalidInputError("distill: " + "; ".join(problems))


def load_examples(path: str | os.PathLike[str], task: Any, tokenizer: Any, max_length: int
                  ) -> tuple[list[Any], dict[str, Any]]:
    """Tokenized chat examples from teacher data or task data (see the module doc).

    Returns:
        ``(examples, counts)`` with counts ``{"records", "no_response", "too_long", "first_too_long"}``.

    Raises:
        InvalidInputError: empty file, bad JSON, a line with neither ``response`` nor ``label``,
            an invalid label (``FILE:LINE: ...``), or no example left to train on.
    """
    from .data import read_jsonl
    from .trainer import Example

    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInputError("the student's tokenizer has no chat template; distill trains chat examples")
    eos = tokenizer.eos_token_id
    records = read_jsonl(path)
    examples, counts = [], {"records": len(records), "no_response": 0, "too_long": 0, "first_too_long": None}
    for r in records:
        text = r.field("input", str)
        if "response" in r.data:
            answer = r.field("response", str, required=False)
            if answer is None:
                counts["no_response"] += 1
                continue
        elif "label" in r.data:
            label, problems = task.check_label(r.data["label"])
            if problems:
                raise r.error(problems[0])
            answer = task.format_answer(label)
        else:
            raise r.error("needs \"response\" (teacher data from `supertiny teach`) or \"label\" (task data)")
        prompt = tokenizer.apply_chat_template(task.messages(text), add_generation_prompt=True, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if len(p_ids) + len(a_ids) > max_length:
            counts["too_long"] += 1
            counts["first_too_long"] = counts["first_too_long"] or f"{r.where} ({len(p_ids) + len(a_ids)} tokens)"
            continue
        examples.append(Example(tuple(p_ids + a_ids), len(p_ids), r.where))
    if not examples:
        why = (f"all {counts['too_long']} are longer than --max-length {max_length} "
               f"(first: {counts['first_too_long']})" if counts["too_long"] else "none has a response")
        raise InvalidInputError(f"{path}: no example to train on: {why}")
    return examples, counts


def check_same_tokenizer(teacher: Any, student: Any, teacher_model: Any, student_model: Any, names: tuple[str, str]
                         ) -> None:
    """Logit KD compares distributions token by token: both models must share one vocabulary."""
    tv, sv = teacher.get_vocab(), student.get_vocab()
    t_rows, s_rows = teacher_model.config.vocab_size, student_model.config.vocab_size
    if tv != sv or t_rows != s_rows:
        raise InvalidInputError(
            f"teacher {names[0]} and student {names[1]} use different tokenizers ({len(tv)} vs {len(sv)} tokens, "
            f"{t_rows} vs {s_rows} logits): logit KD needs the same vocabulary; use --loss sft on teacher data")


def _dev_eval(task: Any, tokenizer: Any, dev: list[Any], teacher_rows: list[tuple[list[int], Any]]
              ) -> Callable[[Any], dict[str, Any]]:
    """The evaluation run during training: task score on dev records, agreement with the teacher."""
    import torch

    from .. import evaluate as ev
    from ..eval_run import TASK_MAX_NEW_TOKENS
    from ..tasks import evaluate_task

    def complete(model: Any) -> Callable[[list[dict[str, str]]], str]:
        def fn(messages: list[dict[str, str]]) -> str:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            x = torch.tensor([tokenizer(ids, add_special_tokens=False)["input_ids"]])
            with torch.inference_mode():
                out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                     max_new_tokens=TASK_MAX_NEW_TOKENS, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            return tokenizer.decode(out[0, x.shape[1]:], skip_special_tokens=True)
        return fn

    def evaluate(model: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if dev:
            out.update(evaluate_task(complete(model), task, dev).score.to_dict())
            out.pop("task", None)
        if teacher_rows:
            agree, kl, n = 0.0, 0.0, 0
            for ids, logits in teacher_rows:
                a = ev.agreement(lambda _ids, t=logits: t, ev.torch_logits(model), ids, window=len(ids),
                                 stride=len(ids))
                m = a.student.tokens_scored
                agree, kl, n = agree + a.top1_agreement * m, kl + a.kl_mean * m, n + m
            out.update(top1_agreement=agree / n, kl_mean=kl / n)
        return out

    return evaluate


def distill(student: str | os.PathLike[str], out: str | os.PathLike[str], task: str | os.PathLike[str],
            data: str | os.PathLike[str], config: DistillConfig | None = None, teacher: str | None = None,
            dev: str | os.PathLike[str] | None = None, resume: bool = False, cache_dir: str | None = None,
            log: Callable[[str], None] | None = None, progress: Callable[[int, int], None] | None = None,
            callbacks: Sequence[Any] = ()) -> Manifest | None:
    """Train STUDENT on DATA into OUT (a plain Hugging Face directory with a ``distill`` manifest).

    Args:
        student: a Hugging Face directory, a ``.gguf`` file or ``"default"``.
        out: the directory to create; checkpoints live in ``OUT.work/`` until it is installed.
        task: a shipped task's name or a ``.toml`` file (its chat prompt).
        data: teacher data or task data (see the module doc); config: :class:`DistillConfig`.
        teacher: the model whose top-k is distilled (required for fkl/rkl/jsd; with sft it is
            only compared against during evaluation); dev: labelled task data for evaluation.
        resume: continue from the last checkpoint in ``OUT.work/``.
        cache_dir: where KD caches are kept (default ``OUT.work/``, removed with it).
        log: one line per phase; progress: (step, steps in all); callbacks: extra Trainer callbacks.

    Returns:
        The manifest (``quality``: final dev figures; ``details``: losses, tokens/s, steps), or
        ``None`` on the other processes of a data-parallel run.

    Example::

        distill("/tmp/student", "/tmp/kd", "factory-tickets", "teacher.jsonl",
                DistillConfig(loss="fkl", steps=200), teacher="/tmp/domain-teacher")
    """
    from . import distill_run

    return distill_run.run(student, out, task, data, config or DistillConfig(), teacher, dev, resume, cache_dir,
                           log or (lambda _m: None), progress, list(callbacks))


def work_dir(out: Path) -> Path:
    """Where a run's checkpoints, metrics and (by default) KD cache live until it is installed."""
    return out.with_name(out.name + ".work")


def check_work_dir(work: Path, settings: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an unfinished run needs --resume (same settings) or --overwrite."""
    from transformers.trainer_utils import get_last_checkpoint

    run_file = work / "run.json"
    if work.is_dir() and overwrite and not resume:
        shutil.rmtree(work)
    last = get_last_checkpoint(str(work)) if work.is_dir() else None
    if last and run_file.is_file():  # a run that died before its first checkpoint has nothing to keep
        if not resume:
            raise InvalidInputError(f"{work} holds an unfinished run (last: {Path(last).name});"
                                    " pass --resume to continue it or --overwrite to start over")
        before = json.loads(run_file.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(before) | set(settings)
                         if k not in ("steps", "overwrite") and before.get(k) != settings.get(k))
        if changed:
            raise InvalidInputError(f"--resume with other settings than the run in {work}: "
                                    + ", ".join(f"{k} {before.get(k)!r} -> {settings.get(k)!r}" for k in changed))
    work.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(settings, indent=2, sort_keys=True), encoding="utf-8")


def settings_dict(config: DistillConfig, **extra: Any) -> dict[str, Any]:
    """The run's settings as recorded in ``run.json`` and the manifest."""
    return {**asdict(config), **{k: (str(v) if v is not None else None) for k, v in extra.items()}}
