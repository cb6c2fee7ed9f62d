"""Distillation losses: a registry of divergences and the top-k KD loss built on them.

The teacher is seen only through its **top-k** log-probabilities per answer token (the
on-disk cache of :mod:`supertiny.stages.transfer.kdcache`). The tail beyond the top k is
handled as **one extra category** (a tail bucket): the teacher's tail mass is
``1 - sum(top-k probabilities)``, the student's is one minus its probability on the
teacher's k tokens. Both distributions then sum to one over the same k+1 categories,
so every divergence is a true divergence (0 exactly when the student matches the
teacher on those categories, never negative) and it is a lower bound of the divergence
over the full vocabulary (data processing inequality). Renormalising the top k instead
would ignore the mass a student puts outside the teacher's top k.

Divergences take two log-probability tensors ``[N, C]`` over the same categories and
return one value per row ``[N]``; they are registered by name with :func:`register_loss`:

* ``fkl``: forward KL(teacher ‖ student), mode-covering (Hinton et al.);
* ``rkl``: reverse KL(student ‖ teacher), mode-seeking (MiniLLM);
* ``jsd``: generalised Jensen-Shannon with ``beta`` (GKD): with ``M = beta*P_t + (1-beta)*P_s``,
  ``beta * KL(P_t ‖ M) + (1 - beta) * KL(P_s ‖ M)``; ``beta=0.5`` is the symmetric JSD.

``sft`` is plain cross-entropy on the answer tokens and needs no teacher.

>>> import torch
>>> p = torch.log(torch.tensor([[0.5, 0.5]]))
>>> q = torch.log(torch.tensor([[0.25, 0.75]]))
>>> round(float(LOSSES["fkl"](q, p, 0.5)[0]), 6)  # 0.5*ln(0.5/0.25) + 0.5*ln(0.5/0.75)
0.143841

torch is imported inside the functions: the loss names are read without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from supertiny.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

# (student log-probs [N, C], teacher log-probs [N, C], beta) -> divergence per row [N]
Divergence = Callable[["torch.Tensor", "torch.Tensor", float], "torch.Tensor"]
LOSSES: dict[str, Divergence] = {}
LOSS_NAMES = ("sft", "fkl", "rkl", "jsd")  # the stage's choices (importable without torch)


def register_loss(name: str) -> Callable[[Divergence], Divergence]:
    """Register a divergence under ``name`` (a decorator)."""

    def deco(fn: Divergence) -> Divergence:
        LOSSES[name] = fn
        return fn

    return deco


def get_loss(name: str) -> Divergence:
    """The divergence registered as ``name``; an unknown name lists the known ones."""
    if name not in LOSSES:
        raise InvalidInputError(f"unknown KD loss {name!r}; known: {', '.join(sorted(LOSSES))} (and sft)")
    return LOSSES[name]


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P ‖ Q) per row; 0 * log 0 counts as 0."""
    import torch

    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


@register_loss("fkl")
def forward_kl(student: torch.Tensor, teacher: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(teacher ‖ student) per row."""
    return _kl(teacher, student)


@register_loss("rkl")
def reverse_kl(student: torch.Tensor, teacher: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """KL(student ‖ teacher) per row."""
    return _kl(student, teacher)


@register_loss("jsd")
def generalized_jsd(student: torch.Tensor, teacher: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """``beta*KL(P_t ‖ M) + (1-beta)*KL(P_s ‖ M)`` with ``M = beta*P_t + (1-beta)*P_s``; 0 at beta 0 or 1."""
    import torch

    if beta <= 0.0 or beta >= 1.0:  # M equals one side: both terms vanish
        return torch.zeros(student.shape[:-1], dtype=student.dtype, device=student.device)
    mix = torch.logsumexp(torch.stack([teacher + math.log(beta), student + math.log(1 - beta)]), dim=0)
    return beta * _kl(teacher, mix) + (1 - beta) * _kl(student, mix)


def _with_tail(logp_topk: torch.Tensor) -> torch.Tensor:
    """Append the tail bucket ``log(1 - sum exp(logp_topk))`` as a last column (floored at 1e-12)."""
    import torch

    mass = logp_topk.exp().sum(-1, keepdim=True)
    tail = torch.log((1.0 - mass).clamp_min(1e-12))
    return torch.cat([logp_topk, tail], dim=-1)


def topk_kd_loss(student_logits: torch.Tensor, teacher_values: torch.Tensor, teacher_indices: torch.Tensor,
                 loss: str, temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """Per-token KD loss of student logits against the teacher's cached top-k, at ``temperature``.

    Args:
        student_logits: ``[N, V]`` raw logits at the answer positions.
        teacher_values: ``[N, k]`` the teacher's log-probabilities at ``temperature`` for its top k
            tokens (any float dtype; computed in float32).
        teacher_indices: ``[N, k]`` their token ids.
        loss: a registered divergence (``fkl``, ``rkl``, ``jsd``).
        temperature: both distributions are softened by it; the loss is scaled by ``T**2`` so
            gradients keep their size as T changes (Hinton et al.).

    Returns:
        ``[N]`` divergence over the k tokens plus the tail bucket (see the module doc).
    """
    import torch

    return _kd(torch.log_softmax(student_logits.float() / temperature, dim=-1), teacher_values, teacher_indices,
               loss, temperature, beta)


def _kd(student_logp: torch.Tensor, teacher_values: torch.Tensor, teacher_indices: torch.Tensor, loss: str,
        temperature: float, beta: float) -> torch.Tensor:
    """:func:`topk_kd_loss` from the student's log-probabilities at ``temperature``."""
    fn = get_loss(loss)
    s_top = student_logp.gather(-1, teacher_indices.long())
    return fn(_with_tail(s_top), _with_tail(teacher_values.float()), beta) * temperature**2


def teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-k log-probabilities at ``temperature`` and their ids (what the cache stores)."""
    import torch

    logp = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    values, indices = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return values, indices.to(torch.int32)


def answer_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per answer token ``[N]`` (logits ``[N, V]``, labels ``[N]``)."""
    import torch

    return torch.nn.functional.cross_entropy(student_logits.float(), labels.long(), reduction="none")


def mixed_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_values: torch.Tensor | None,
               teacher_indices: torch.Tensor | None, loss: str, alpha: float, temperature: float,
               beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss on one batch's answer tokens: ``alpha*KD + (1-alpha)*CE`` (``sft``: CE only).

    Returns the mean over tokens and its parts (``ce``, ``kd``) as floats for logging.
    """
    import torch

    # one log-softmax over the vocabulary serves both terms at T = 1 (the costly part of either)
    logp = torch.log_softmax(student_logits.float(), dim=-1)
    ce = torch.nn.functional.nll_loss(logp, labels.long())
    if loss == "sft":
        return ce, {"ce": float(ce.detach())}
    assert teacher_values is not None and teacher_indices is not None
    s_logp = logp if temperature == 1.0 else torch.log_softmax(student_logits.float() / temperature, dim=-1)
    kd = _kd(s_logp, teacher_values, teacher_indices, loss, temperature, beta).mean()
    total = alpha * kd + (1.0 - alpha) * ce if alpha < 1.0 else kd
    return total, {"ce": float(ce.detach()), "kd": float(kd.detach())}
