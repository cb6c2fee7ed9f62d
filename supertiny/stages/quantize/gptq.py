"""Calibrated int4 rounding: GPTQ and AWQ-style activation-aware scaling (the maths only).

Both read the same statistics of each Linear's input over the calibration tokens,
collected in one pass by :class:`InputStatistic`: ``H = mean(x xᵀ)`` (the Hessian of the
layer's output error, up to a factor) and ``mean |x|`` per input channel.

* **GPTQ** (Frantar et al., 2022): quantize the columns of a weight one by one and
  spread each column's rounding error over the columns not yet quantized, weighted by
  the inverse Hessian (Cholesky form), so that ``‖(W - Q) X‖`` stays small. Damping adds
  ``damp * mean(diag H)`` to the diagonal; group scales and zero points are computed
  when the loop reaches a group's first column, from the error-updated weights.
* **Clip search** (AWQ's ``auto_clip``): each group's range is shrunk by the ratio in
  :data:`CLIP_RATIOS` that minimises that group's own output error ``Δ_g H_gg Δ_gᵀ``
  per row (:func:`clip_params`); AWQ rounds with it (:func:`clip_int4`), and GPTQ picks
  each group's scale with it on the error-updated columns.
* **AWQ** (Lin et al., 2023): scale input channel ``j`` of the weights by
  ``s_j = mean|x_j|^α`` before rounding and divide the activations by ``s`` (folded
  into the op that produces them: a norm's weight, the rows of ``v_proj`` or
  ``up_proj``), so that salient channels lose less. α is searched on a grid per group
  of Linears that read the same input; the loss is their summed output error over the
  calibration tokens, computed exactly from ``H`` as ``tr(ΔW H ΔWᵀ)``. α = 0 is plain
  RTN, so the chosen scaling is never worse than RTN on the calibration data.

Everything runs on the CPU in float32 (float64 for the Cholesky factorisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from supertiny.errors import InvalidInputError
from supertiny.stages.calibration import Statistic
from supertiny.stages.quantize.number_formats import (
    Int4Weight,
    group_slices,
    int4_codes,
    int4_dequant,
    int4_params,
    quantize_int4,
)

GPTQ_BLOCK = 128  # columns updated lazily together (a multiple of every group size offered)
CLIP_RATIOS = tuple(1 - i / 20 for i in range(10))  # AWQ's clip search: the group range times 1.0 ... 0.55


@dataclass(frozen=True)
class InputStats:
    """What calibration saw at one Linear's input: ``h = mean(x xᵀ)`` [in, in], ``mean_abs`` [in], tokens."""

    h: torch.Tensor
    mean_abs: torch.Tensor
    tokens: int


class InputStatistic(Statistic):
    """Collects :class:`InputStats` at the inputs of the modules at ``paths`` (dotted module paths).

    Linears that read the very same tensor (q/k/v, gate/up) share one set of sums: the
    first reader owns it, the others alias it.
    """

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self.sums: dict[str, list[Any]] = {}
        self.alias: dict[str, str] = {}
        self._last: tuple[Any, str] | None = None

    def attach(self, model: Any, layout: Any) -> list[Any]:
        return [model.get_submodule(p).register_forward_pre_hook(partial(self._hook, p)) for p in self.paths]

    def _hook(self, path: str, _module: Any, args: tuple[Any, ...]) -> None:
        x0 = args[0]
        if path in self.alias:
            return
        if path not in self.sums and self._last is not None and self._last[0] is x0:
            self.alias[path] = self._last[1]
            return
        self._last = (x0, path)
        x = x0.detach().reshape(-1, x0.shape[-1]).float()
        if path not in self.sums:
            n = x.shape[1]
            self.sums[path] = [torch.zeros(n, n), torch.zeros(n), 0]
        s = self.sums[path]
        s[0].addmm_(x.T, x)
        s[1] += x.abs().sum(0)
        s[2] += x.shape[0]

    def finish(self) -> dict[str, InputStats]:
        self._last = None
        out = {p: InputStats(h / n, a / n, n) for p, (h, a, n) in self.sums.items()}
        out.update({p: out[owner] for p, owner in self.alias.items()})
        return out


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor of ``(H + λI)⁻¹``, λ = ``damp * mean(diag H)``; more damping if H is singular."""
    h = h.double()
    lam = damp * float(torch.diag(h).mean()) or 1e-6
    eye = torch.eye(h.shape[0], dtype=torch.float64)
    for _ in range(6):  # a rank-deficient H (few calibration tokens) needs more damping
        chol, info = torch.linalg.cholesky_ex(h + lam * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            return torch.linalg.cholesky(inv, upper=True).float()
        lam *= 10
    raise InvalidInputError("GPTQ: the calibration Hessian stays singular after damping; give more calibration "
                            "tokens")


def gptq_int4(w: torch.Tensor, h: torch.Tensor, group: int, symmetric: bool, damp: float = 0.01,
              clip: bool = True) -> Int4Weight:
    """GPTQ-quantize a weight ``[out, in]`` to group-wise int4, given its input's ``H`` ``[in, in]``.

    With ``clip``, each group's range comes from the clip search (:func:`clip_params`) on
    the error-updated columns, instead of their min and max.

    Returns:
        the :class:`~supertiny.stages.quantize.number_formats.Int4Weight` (its ``dequantize()`` is the new weight).
    """
    if GPTQ_BLOCK % group:
        raise InvalidInputError(f"GPTQ needs a group size dividing {GPTQ_BLOCK}, got {group}")
    W = w.detach().float().clone()
    out_f, n = W.shape
    h = h.clone()
    dead = torch.diag(h) == 0  # a channel calibration never saw: its weights cannot matter there
    h[dead, dead] = 1.0
    W[:, dead] = 0.0
    hinv = _inverse_cholesky(h, damp)
    n_groups = len(group_slices(n, group))
    codes = torch.empty(out_f, n, dtype=torch.uint8)
    scales = torch.empty(out_f, n_groups, dtype=torch.float32)
    zeros = torch.empty(out_f, n_groups, dtype=torch.uint8)
    scale = zero = None
    for i1 in range(0, n, GPTQ_BLOCK):
        i2 = min(i1 + GPTQ_BLOCK, n)
        w1, err1, hinv1 = W[:, i1:i2].clone(), torch.zeros(out_f, i2 - i1), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:  # a group starts: its parameters from the error-updated columns
                g = col // group
                cols = slice(i, i + min(group, n - col))
                if clip:
                    scale, zero = clip_params(w1[:, cols], h[col:col + cols.stop - cols.start,
                                                             col:col + cols.stop - cols.start], symmetric)
                else:
                    scale, zero = int4_params(w1[:, cols], symmetric)
                scales[:, g], zeros[:, g] = scale, zero
            assert scale is not None and zero is not None
            c = int4_codes(w1[:, i:i + 1], scale, zero)[:, 0]
            codes[:, col] = c
            q = (c.float() - zero.float()) * scale
            e = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return Int4Weight(codes, scales, zeros, group)


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """Mean squared output error of weight ``q`` in place of ``w`` over the calibration inputs:
    ``tr((q - w) H (q - w)ᵀ)`` with ``H = mean(x xᵀ)`` (summed over output rows)."""
    d = (q.float() - w.float())
    return float(((d @ h) * d).sum())


def awq_alphas(grid: int) -> list[float]:
    """The exponents AWQ tries: ``0, 1/grid, ..., (grid-1)/grid`` (0 is RTN)."""
    return [i / grid for i in range(grid)]


def awq_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-channel scales ``mean|x|^α``, normalised so that ``max * min = 1`` (as AutoAWQ)."""
    s = mean_abs.float().clamp(min=1e-4).pow(alpha)
    return s / (s.max() * s.min()).sqrt()


def awq_search(weights: Sequence[torch.Tensor], stats: InputStats, group: int, symmetric: bool, grid: int = 20,
               tie: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, float, list[float]]:
    """The AWQ scaling of a group of Linears that read the same input.

    Args:
        weights: their weights ``[out_i, in]``.
        stats: the input's :class:`InputStats`.
        tie: ``(kv_heads, group, head_dim)`` when the scales must repeat over the query heads
            of a KV group (``o_proj`` under grouped attention: the scale folds into ``v_proj``).

    Returns:
        ``(s [in], alpha, losses per alpha)``: the weights are to be multiplied by ``s``
        column-wise and the input divided by ``s``.
    """
    mean_abs = stats.mean_abs
    if tie is not None:
        kv, rep, hd = tie
        mean_abs = mean_abs.reshape(kv, rep, hd).mean(1)
    best: tuple[float, float, torch.Tensor] | None = None
    losses = []
    for alpha in awq_alphas(grid):
        s = awq_scales(mean_abs, alpha)
        if tie is not None:
            s = s[:, None, :].expand(tie).reshape(-1)
        loss = sum(output_error(w, quantize_int4(w.float() * s, group, symmetric).dequantize() / s, stats.h)
                   for w in weights)
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, alpha, s)
    assert best is not None
    return best[2], best[1], losses


def clip_params(wg: torch.Tensor, hg: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero point of one group ``wg`` ``[out, g]`` whose range ratio (of :data:`CLIP_RATIOS`)
    minimises the group's output error ``Δ hg Δᵀ``."""
    best = torch.full((wg.shape[0],), float("inf"))
    scales = torch.empty(wg.shape[0])
    zeros = torch.empty(wg.shape[0], dtype=torch.uint8)
    for ratio in CLIP_RATIOS:
        scale, zero = int4_params(wg, symmetric, ratio)
        d = int4_dequant(int4_codes(wg, scale, zero), scale, zero) - wg
        err = ((d @ hg) * d).sum(1)
        better = err < best
        best = torch.where(better, err, best)
        scales[better], zeros[better] = scale[better], zero[better]
    return scales, zeros


def clip_int4(w: torch.Tensor, h: torch.Tensor, group: int, symmetric: bool) -> Int4Weight:
    """Round-to-nearest int4 with each row's group range shrunk by the ratio (of :data:`CLIP_RATIOS`) that
    minimises the group's output error over the calibration inputs (``H = mean(x xᵀ)``)."""
    w = w.detach().float()
    cols = group_slices(w.shape[1], group)
    codes = torch.empty(w.shape, dtype=torch.uint8)
    scales = torch.empty(w.shape[0], len(cols), dtype=torch.float32)
    zeros = torch.empty(w.shape[0], len(cols), dtype=torch.uint8)
    for g, c in enumerate(cols):
        scales[:, g], zeros[:, g] = clip_params(w[:, c], h[c, c], symmetric)
        codes[:, c] = int4_codes(w[:, c], scales[:, g], zeros[:, g])
    return Int4Weight(codes, scales, zeros, group)
