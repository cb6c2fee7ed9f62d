"""``supertiny rl``: on-policy RL of a (distilled) student on the task's own reward, held near a teacher.

One optimizer step, per batch of prompts:

1. **Rollout.** The student samples ``group`` answers per prompt (``generate`` with
   ``do_sample``, the given temperature, no top-k/top-p cut, seeded by ``(seed, step,
   process)`` so a resumed run samples exactly what an uninterrupted one did).
2. **Reward.** :func:`task_reward`: the fraction of the task's fields whose parsed value
   equals the label (:func:`supertiny.tasks.field_matches`); 0 when no JSON object is found.
   Labelled data is required (``{"input": ..., "label": {...}}``).
3. **Advantage.** :func:`group_advantages`: ``(r - mean(group)) / (std(group) + eps)``,
   the sample standard deviation (as TRL's GRPO); a group whose rewards are all equal
   teaches nothing and gets advantage 0. With ``resample`` > 0 (DAPO's *dynamic
   sampling*), such a group is replaced: up to ``resample`` more rounds sample groups for
   prompts drawn at random (seeded) from the data, and the batch keeps the groups whose
   rewards differ. After distillation most train prompts are solved by every sample,
   and without this most steps would update nothing but the KL term. ``reward_mean`` in
   the metrics is the first round's (the data's own distribution).
4. **Loss.** :func:`policy_loss`, over the sampled answer tokens (up to and including the
   first end-of-turn token), ``logπ`` taken from ``logits / temperature``::

       loss = sum_t m_t * (-A_i * logπ(a_t)) / sum_t m_t  +  kl_coef * sum_t m_t * KL_t / sum_t m_t

   Each batch is sampled and used for exactly **one** update, so GRPO's clipped ratio
   ``π/π_old`` is 1 and its gradient is the plain policy gradient ``-A ∇logπ``; we write
   that loss directly (its value is ``-A·logπ``, not GRPO's ``-A``, the gradient is the
   same). The average is per token over the whole batch (as DAPO / TRL's ``dapo`` loss).
   ``KL_t`` is toward the reference model (``--teacher``, else a frozen copy of the
   initial student): ``k3`` = ``exp(ref - logπ) - (ref - logπ) - 1`` on the sampled token
   (Schulman's unbiased, non-negative estimator, as in GRPO), or ``full`` = the exact
   ``KL(π || ref)`` over the vocabulary at each sampled position. Both are 0 when the
   student equals the reference.

Training runs on transformers' Trainer like ``distill`` (:mod:`.trainer`): checkpoints in
``OUT.work/`` every ``save_every`` steps, ``--resume`` continues bit-identically, a
metrics JSONL (loss, reward mean/std, KL, tokens/s, dev evaluations), ``training.png``,
and ``OUT`` is a plain Hugging Face directory with an ``rl`` manifest.

torch and transformers are imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.constrain import HeldRows
from supertiny.tasks import field_matches

KL_ESTIMATORS = ("k3", "full")


def task_reward(task: Any, text: str | None, label: dict[str, Any]) -> float:
    """The fraction of ``task``'s fields that ``text`` gets right against ``label`` (0 with no JSON)."""

    parsed = task.parse(text)
    if not parsed.json_valid:
        return 0.0
    hits = field_matches(task, parsed, label)
    return sum(hits.values()) / len(hits)


def group_advantages(rewards: Any, eps: float = 1e-4) -> Any:
    """Group-relative advantages of ``rewards`` ``[prompts, group]``: ``(r - mean) / (std + eps)`` per row.

    ``std`` is the sample standard deviation; an all-equal row gives zeros.
    """
    import torch

    r = torch.as_tensor(rewards, dtype=torch.float32)
    centred = r - r.mean(dim=1, keepdim=True)
    return centred / (r.std(dim=1, keepdim=True) + eps)


def policy_loss(logits: Any, ref_logits: Any, tokens: Any, mask: Any, advantages: Any, kl_coef: float,
                kl: str = "k3") -> tuple[Any, dict[str, float]]:
    """The on-policy policy-gradient loss plus the KL penalty (see the module doc for the formula).

    Args:
        logits, ref_logits: ``[N, T, V]`` student and reference logits predicting ``tokens``
            (already divided by the sampling temperature).
        tokens: ``[N, T]`` sampled ids; mask: ``[N, T]`` 1 on answer tokens; advantages: ``[N]``.
        kl_coef: the KL weight; kl: ``k3`` or ``full``.

    Returns:
        ``(loss, {"pg": ..., "kl": ...})`` (the parts as floats, per token).
    """
    import torch
    import torch.nn.functional as F

    logp_all = F.log_softmax(logits.float(), dim=-1)
    ref_all = F.log_softmax(ref_logits.float(), dim=-1)
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    m = mask.to(logp.dtype)
    n = m.sum().clamp_min(1.0)
    pg = -(advantages.to(logp.dtype).unsqueeze(1) * logp * m).sum() / n
    if kl == "k3":
        d = ref_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logp
        per_token = torch.exp(d) - d - 1.0
    elif kl == "full":
        per_token = (logp_all.exp() * (logp_all - ref_all)).sum(-1)
    else:
        raise InvalidInputError(f"kl {kl!r} is not one of {', '.join(KL_ESTIMATORS)}")
    kl_mean = (per_token * m).sum() / n
    loss = pg + kl_coef * kl_mean
    return loss, {"pg": float(pg.detach()), "kl": float(kl_mean.detach())}


def answer_mask(completions: Any, eos_id: int | None) -> Any:
    """1 on each sampled answer's tokens up to and including its first ``eos_id``, 0 after."""
    import torch

    if eos_id is None:
        return torch.ones_like(completions)
    is_eos = (completions == eos_id).long()
    before = is_eos.cumsum(dim=1) - is_eos  # eos tokens strictly before this position
    return (before == 0).long()


@dataclass(frozen=True)
class Rollout:
    """A batch of sampled answers: ``input_ids`` = left-padded prompt + answer, ready for a forward pass."""

    input_ids: Any  # [N, P + C]
    attention_mask: Any
    position_ids: Any
    completions: Any  # [N, C]
    mask: Any  # [N, C]
    texts: list[str]

    @property
    def span(self) -> int:
        return int(self.completions.shape[1])


def sample_answers(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], group: int, temperature: float,
                   max_new_tokens: int, seed: int, constraints: Sequence[Any] | None = None) -> list[list[int]]:
    """``group`` sampled answers per prompt (ids, no padding; prompt-major order), each up to and including its
    first eos; deterministic for a seed. ``constraints``: one per answer (prompt-major; None: free), each
    answer sampled from the tokens its grammar allows."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    att = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(list(p))
        att[b, width - len(p):] = 1
    device = next(model.parameters()).device
    ids, att = ids.to(device), att.to(device)
    gen = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                           num_return_sequences=group, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            held = LogitsProcessorList([HeldRows(constraints, [tokenizer.eos_token_id])]) if constraints else None
            out = model.generate(input_ids=ids, attention_mask=att, generation_config=gen, logits_processor=held)
    finally:
        model.train(was_training)
    comp = out[:, width:].cpu()
    mask = answer_mask(comp, tokenizer.eos_token_id)
    return [c[m.bool()].tolist() for c, m in zip(comp, mask, strict=True)]


def pack(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], tokenizer: Any, device: Any = "cpu",
         texts: Sequence[str] | None = None) -> Rollout:
    """Rows of prompt + answer (ids, one prompt per row) as one left-padded :class:`Rollout`; ``texts``: the
    answers already decoded (else they are decoded here)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width, span = max(len(p) for p in prompts), max(1, max(len(a) for a in answers))
    ids = torch.full((len(prompts), width + span), pad, dtype=torch.long)
    att = torch.zeros_like(ids)
    for b, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        ids[b, width - len(p):width + len(a)] = torch.tensor([*p, *a], dtype=torch.long)
        att[b, width - len(p):width + len(a)] = 1
    ids, att = ids.to(device), att.to(device)
    if texts is None:
        texts = tokenizer.batch_decode([list(a) for a in answers], skip_special_tokens=True)
    return Rollout(ids, att, (att.cumsum(-1) - 1).clamp_min(0), ids[:, width:], att[:, width:], list(texts))


def rollout(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], group: int, temperature: float,
            max_new_tokens: int, seed: int) -> Rollout:
    """Sample ``group`` answers for each prompt (ids, no padding) with ``model``; deterministic for a seed."""
    answers = sample_answers(model, tokenizer, prompts, group, temperature, max_new_tokens, seed)
    rows = [p for p in prompts for _ in range(group)]
    return pack(rows, answers, tokenizer, next(model.parameters()).device)


def rollout_logits(model: Any, ro: Rollout, temperature: float) -> Any:
    """``[N, C, V]`` logits (divided by ``temperature``) that predict each sampled answer token."""
    out = model(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=ro.position_ids,
                logits_to_keep=ro.span + 1, use_cache=False)
    return out.logits[:, :-1] / temperature
