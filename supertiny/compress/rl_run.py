"""The orchestration of :func:`supertiny.compress.rl.rl`: prompts, the RL Trainer, install."""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_utils import SchedulerType

from ..errors import InvalidInputError
from ..manifest import Manifest, StageRun
from .rl import STAGE, STAGE_VERSION, RLConfig, group_advantages, pack, policy_loss, rollout_logits, sample_answers
from .trainer import MeteredTrainer


@dataclass(frozen=True)
class Prompt:
    """One labelled prompt: its chat-prompt ids, the label, and ``FILE:LINE``."""

    ids: tuple[int, ...]
    label: dict[str, Any]
    where: str


def load_prompts(path: Any, task: Any, tokenizer: Any, max_length: int, max_new_tokens: int
                 ) -> tuple[list[Prompt], dict[str, Any]]:
    """Tokenized labelled prompts; an unlabelled record is an error (the reward compares with the label)."""
    from ..tasks import read_task_data

    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInputError("the student's tokenizer has no chat template; rl samples chat answers")
    records = read_task_data(path, task)
    prompts, counts = [], {"records": len(records), "too_long": 0, "first_too_long": None}
    for r in records:
        where = f"{r.source}:{r.line}"
        if r.label is None:
            raise InvalidInputError(f"{where}: label: required (rl rewards each sampled answer by comparing it "
                                    "with the label; unlabelled prompts are not supported)")
        text = tokenizer.apply_chat_template(task.messages(r.input), add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + max_new_tokens > max_length:
            counts["too_long"] += 1
            counts["first_too_long"] = counts["first_too_long"] or f"{where} ({len(ids)} tokens)"
            continue
        prompts.append(Prompt(tuple(ids), r.label, where))
    if not prompts:
        raise InvalidInputError(f"{path}: no prompt to train on: all {counts['too_long']} are longer than "
                                f"--max-length {max_length} minus --max-new-tokens {max_new_tokens} "
                                f"(first: {counts['first_too_long']})")
    return prompts, counts


@dataclass(frozen=True)
class _Group:
    """One prompt's G sampled answers (ids and text) and their rewards."""

    prompt: Prompt
    answers: list[list[int]]
    texts: list[str]
    rewards: Any

    @property
    def informative(self) -> bool:
        """Whether the rewards differ (a group whose rewards are all equal has advantage 0: no signal)."""
        return bool(self.rewards.max() > self.rewards.min())


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"index": i}


def _collate(items: list[dict[str, int]]) -> dict[str, Any]:
    return {"index": torch.tensor([it["index"] for it in items])}


class RLTrainer(MeteredTrainer):
    """A Trainer whose ``compute_loss`` samples, scores and returns :func:`policy_loss` (see :mod:`.rl`)."""

    def __init__(self, *args: Any, prompts: list[Prompt], task: Any, tok: Any, reference: Any, config: RLConfig,
                 reward: Callable[[Any, str, dict[str, Any]], float], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prompts, self.task, self.tok, self.reference, self.rl = prompts, task, tok, reference, config
        self.reward_fn = reward
        self.model_accepts_loss_kwargs = False
        self._reset()

    def _fields(self) -> dict[str, Any]:
        return {"reward": [], "kl": 0.0, "pg": 0.0, "rollout_s": 0.0, "groups": 0, "informative": 0}

    def _sample(self, policy: Any, batch: list[Prompt], seed: int) -> tuple[list[_Group], Any]:
        """Groups of sampled answers for ``batch``, groups with equal rewards replaced by up to ``resample``
        rounds of groups for random prompts; returns the kept groups and their rewards, flattened."""
        c, g = self.rl, self.rl.group
        draw = torch.Generator().manual_seed(seed)
        groups: list[_Group] = []
        todo = batch
        for round_ in range(c.resample + 1):
            answers = sample_answers(policy, self.tok, [p.ids for p in todo], g, c.temperature, c.max_new_tokens,
                                     seed + 7919 * round_)
            texts = self.tok.batch_decode(answers, skip_special_tokens=True)
            rewards = torch.tensor([self.reward_fn(self.task, t, p.label)
                                    for p, t in zip([p for p in todo for _ in range(g)], texts, strict=True)])
            if round_ == 0:
                self._meter["reward"] += rewards.tolist()
            self._meter["groups"] += len(todo)
            groups += [_Group(p, answers[j * g:(j + 1) * g], texts[j * g:(j + 1) * g], rewards[j * g:(j + 1) * g])
                       for j, p in enumerate(todo)]
            need = len(batch) - sum(x.informative for x in groups)
            if need <= 0 or round_ == c.resample:
                break
            todo = [self.prompts[int(i)] for i in torch.randint(len(self.prompts), (need,), generator=draw)]
        # without resampling the batch stays as drawn; with it, informative groups first (in the order found),
        # equal-reward ones only to fill up
        chosen = groups if c.resample == 0 else sorted(groups, key=lambda x: not x.informative)[: len(batch)]
        self._meter["informative"] += sum(x.informative for x in chosen)
        return chosen, torch.cat([x.rewards for x in chosen])

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        c = self.rl
        batch = [self.prompts[int(i)] for i in inputs["index"]]
        # one seed per (run, step, process): a resumed run samples what the uninterrupted one did
        seed = c.seed * 1_000_003 + self.state.global_step * 101 + self.args.process_index
        policy = self.accelerator.unwrap_model(model)
        t0 = time.perf_counter()
        chosen, rewards = self._sample(policy, batch, seed)
        ro = pack([x.prompt.ids for x in chosen for _ in range(c.group)], [a for x in chosen for a in x.answers],
                  self.tok, next(policy.parameters()).device, texts=[t for x in chosen for t in x.texts])
        adv = group_advantages(rewards.view(len(chosen), c.group), c.adv_eps).flatten().to(ro.input_ids.device)
        with torch.no_grad():
            ref_logits = rollout_logits(self.reference, ro, c.temperature)
        logits = rollout_logits(model, ro, c.temperature)
        loss, parts = policy_loss(logits, ref_logits, ro.completions, ro.mask, adv, c.kl_coef, c.kl)
        m = self._meter
        m["rollout_s"] += time.perf_counter() - t0
        m["tokens"] += int(ro.attention_mask.sum())
        m["answer_tokens"] += int(ro.mask.sum())
        m["kl"] += parts["kl"]
        m["pg"] += parts["pg"]
        m["n"] += 1
        return (loss, None) if return_outputs else loss

    def _figures(self, m: dict[str, Any], secs: float, rates: dict[str, float]) -> dict[str, float]:
        r = torch.tensor(m["reward"])
        return {"reward_mean": float(r.mean()), "reward_std": float(r.std(unbiased=False)), "kl": m["kl"] / m["n"],
                "pg": m["pg"] / m["n"], "groups_sampled": m["groups"] / m["n"],
                "informative_share": m["informative"] / (m["n"] * self.rl.batch_prompts), **rates,
                "rollout_share": min(1.0, m["rollout_s"] / secs)}  # sampling's part of the step time


def _training_args(config: RLConfig, work: Path) -> Any:
    from .distill import DistillConfig
    from .distill_run import _training_args as distill_args

    base = DistillConfig(steps=config.steps, lr=config.lr, batch_size=config.batch_prompts, bf16=config.bf16,
                         save_every=config.save_every, seed=config.seed, warmup_ratio=0.0)
    args = distill_args(base, work)
    # a constant learning rate: a linear decay would make the last RL steps do nothing
    args.lr_scheduler_type = SchedulerType.CONSTANT
    return args


def run(student: Any, out: Any, task: Any, data: Any, config: RLConfig, teacher: str | None, dev: Any, resume: bool,
        say: Callable[[str], None], progress: Any, callbacks: list[Any], reward: Callable[..., float]
        ) -> Manifest | None:
    from transformers import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    from ..models import describe, load_model, resolve
    from ..outdir import check_output_dir
    from ..tasks import read_task_data, task_for
    from ..tasks.prompts import RECORD_KEY, prompt_record
    from .distill import _dev_eval, check_same_tokenizer, check_work_dir, work_dir
    from .distill_run import _mean
    from .trainer import EvalCallback, MetricsCallback, loaded, save_trained, train

    out = Path(out).expanduser().absolute()
    spec = task_for(task, student, config.prompt, training=True)
    dev_records = read_task_data(dev, spec, labelled=True)[: config.dev_limit] if dev else []
    settings = {**asdict(config), "task": spec.name, "data": str(Path(data).absolute()),
                "dev": dev and str(Path(dev).absolute()),
                "teacher": teacher and str(resolve(teacher)[1].absolute()),
                "student": str(resolve(student)[1].absolute())}
    work = work_dir(out)
    args = _training_args(config, work)
    main = args.process_index == 0
    if main and not (resume and work.is_dir() and get_last_checkpoint(str(work))):
        check_output_dir(out, config.overwrite)
    stage = StageRun(STAGE, STAGE_VERSION, out, source=student, info=describe(student).to_dict(),
                     settings=settings) if main else None
    lm = load_model(student)
    model, tok = lm.model, lm.tokenizer
    prompts, counts = load_prompts(data, spec, tok, config.max_length, config.max_new_tokens)
    if teacher is not None:
        ref_lm = load_model(teacher)
        check_same_tokenizer(ref_lm.tokenizer, tok, ref_lm.model, model, (str(teacher), str(student)))
        reference = ref_lm.model
    else:
        reference = copy.deepcopy(model)  # the frozen initial student
    reference.to(args.device).eval().requires_grad_(False)
    with args.main_process_first(local=False, desc="setup"):
        if main:
            check_work_dir(work, settings, resume, config.overwrite)
    loaded(stage, say, f"{len(prompts)} prompts from {counts['records']} records"
           + (f"; skipped {counts['too_long']} too long" if counts["too_long"] else ""),
           f"skipped {counts['too_long']} prompts longer than max_length {config.max_length} minus max_new_tokens "
           f"{config.max_new_tokens} (first: {counts['first_too_long']})" if counts["too_long"] else None)
    model.train()
    metrics = MetricsCallback(work / "metrics.jsonl")
    trainer = RLTrainer(model=model, args=args, train_dataset=_Indices(len(prompts)), data_collator=_collate,
                        prompts=prompts, task=spec, tok=tok, reference=reference, config=config, reward=reward)
    trainer.remove_callback(PrinterCallback)
    evaluator = EvalCallback(_dev_eval(spec, tok, dev_records, []), config.eval_every, metrics, trainer)
    result = train(trainer, work, metrics, evaluator, progress, callbacks, resume, main, say,
                   f"rl, group {config.group}")
    if not main or stage is None:
        return None
    stage.lap("train")
    with stage:
        records = save_trained(stage, model, tok, work, f"rl: {out.name}", keys=("loss", "reward_mean", "kl"))
        logs = [r for r in records if "tokens_per_s" in r]
        steady = logs[1:] or logs
        details = {
            "steps": trainer.state.global_step, "prompts": len(prompts), "data": counts,
            "train_loss": round(result.training_loss, 6),
            "reward_first": logs[0]["reward_mean"] if logs else None,
            "reward_last": logs[-1]["reward_mean"] if logs else None,
            "reward_mean": round(sum(r["reward_mean"] for r in logs) / len(logs), 4) if logs else None,
            "kl_last": logs[-1]["kl"] if logs else None,
            "tokens_per_s": _mean([r["tokens_per_s"] for r in steady]),
            "answer_tokens_per_s": _mean([r["answer_tokens_per_s"] for r in steady]),
            "rollout_share": round(sum(r["rollout_share"] for r in steady) / len(steady), 3) if steady else None,
            "informative_share": round(sum(r["informative_share"] for r in logs) / len(logs), 3) if logs else None,
            "groups_sampled_per_step": round(sum(r["groups_sampled"] for r in logs) / len(logs), 2) if logs else None,
            "reference": "teacher" if teacher else "initial student", "world_size": args.world_size,
            RECORD_KEY: prompt_record(spec),
        }
        quality = evaluator.last or {"skipped": "no --dev data"}
        manifest = stage.install(quality=quality, details=details)
    shutil.rmtree(work, ignore_errors=True)
    return manifest
