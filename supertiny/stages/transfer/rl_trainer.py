"""The RL stage's Trainer: labelled prompts, rollouts per step, the policy-gradient loss (:mod:`.policy`).

:class:`RLTrainer` is a :class:`~.trainer.MeteredTrainer` whose ``compute_loss`` samples
``group`` answers per prompt with the student, scores them with the reward, turns rewards into
group-relative advantages and returns :func:`.policy.policy_loss` against the reference model;
with ``resample`` it replaces groups whose rewards are all equal (dynamic sampling).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.constrain import Constraint, Grammar, Vocabulary, answer_grammar
from supertiny.stages.transfer.policy import group_advantages, pack, policy_loss, rollout_logits, sample_answers
from supertiny.stages.transfer.trainer import MeteredTrainer
from supertiny.tasks import read_task_data


@dataclass(frozen=True)
class Prompt:
    """One labelled prompt: its chat-prompt ids, the label, and ``FILE:LINE``."""

    ids: tuple[int, ...]
    label: dict[str, Any]
    where: str
    grammar: Grammar | None = None  # what its answers are held to (constrained sampling)


def load_prompts(path: Any, task: Any, tokenizer: Any, max_length: int, max_new_tokens: int,
                 constrained: bool = False) -> tuple[list[Prompt], dict[str, Any]]:
    """Tokenized labelled prompts; an unlabelled record is an error (the reward compares with the label)."""
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
        prompts.append(Prompt(tuple(ids), r.label, where, answer_grammar(task)(r.input) if constrained else None))
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


class PromptIndices(torch.utils.data.Dataset):
    """Prompts as dataset items (``{"index": i}``): the Trainer draws indices, the loss looks the prompts up."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"index": i}


def collate(items: list[dict[str, int]]) -> dict[str, Any]:
    return {"index": torch.tensor([it["index"] for it in items])}


class RLTrainer(MeteredTrainer):
    """A Trainer whose ``compute_loss`` samples, scores and returns :func:`policy_loss` (see :mod:`.rl`)."""

    def __init__(self, *args: Any, prompts: list[Prompt], task: Any, tok: Any, reference: Any, config: Any,
                 reward: Callable[[Any, str, dict[str, Any]], float], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prompts, self.task, self.tok, self.reference, self.rl = prompts, task, tok, reference, config
        self.reward_fn = reward
        self.vocabulary = Vocabulary(tok, [tok.eos_token_id]) if any(p.grammar for p in prompts) else None
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
            held = [Constraint(p.grammar, self.vocabulary) if p.grammar and self.vocabulary else None
                    for p in todo for _ in range(g)]
            answers = sample_answers(policy, self.tok, [p.ids for p in todo], g, c.temperature, c.max_new_tokens,
                                     seed + 7919 * round_, held if any(held) else None)
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
