"""Bits where they matter: lift the most sensitive parts of a W4A16 model to int8 within a size budget.

``W4A16(max_mb=...)``: once every target Linear is int4, each *unit* — the seven Linears
of one decoder layer, or the output layer (with the tied embedding) — is tried in
group-wise int8 on its own, and the mean KL(float ‖ quantized) of the model's next-token
distributions on the calibration windows is measured. The set of units saving the most KL
in total whose size-equivalent total (codes, float16 scales, float16 for what stays float:
the report's ``size_equivalent_bytes``) stays within the budget is then chosen exactly, as
a 0/1 knapsack over the measured savings (costs rounded up to 1/4096 of the room): a greedy
pick by KL per byte took eight cheap layers where the one output layer saved more.
Sensitivity is read on the model's own output, so the output layer and a decoder layer
compete on one scale (per-layer reconstruction errors would not be comparable), and
the cost is one forward pass per unit and window: ~31 passes of a 2,048-token
calibration set for a 30-layer model. The choice lands in the report (``allocation``).

The choice treats the units' savings as additive; they are not quite (errors interact),
which is why the result is scored again by the stage's held-out comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from supertiny.errors import InvalidInputError
from supertiny.stages.quantize.number_formats import int8_groups_dequant, quantize_int8_groups

ALLOC_WINDOWS = 4  # calibration windows the sensitivities are measured on
KNAPSACK_STEPS = 4096  # the room above the all-int4 size, in this many steps


def cost_step(capacity: int) -> int:
    """Bytes per knapsack step for a room of ``capacity`` bytes."""
    return max(1, capacity // KNAPSACK_STEPS)


def best_subset(gains: Sequence[float], costs: Sequence[int], capacity: int) -> list[int]:
    """Indices of the items with the largest total gain whose costs sum to at most ``capacity`` (0/1 knapsack;
    costs in :func:`cost_step` steps, rounded up, so the chosen set never exceeds the capacity).

    >>> best_subset([0.075, 0.0095, 0.0095], [14_155_776, 1_769_472, 1_769_472], 14_284_800)
    [0]
    """
    step = cost_step(capacity)
    steps = [-(-c // step) for c in costs]
    cap = capacity // step
    best = [(0.0, ())] * (cap + 1)  # best[c]: (gain, items) within c steps
    for i, (g, w) in enumerate(zip(gains, steps, strict=True)):
        if g <= 0:
            continue
        for c in range(cap, w - 1, -1):
            cand = best[c - w][0] + g
            if cand > best[c][0]:
                best[c] = (cand, (*best[c - w][1], i))
    return sorted(best[cap][1])


def log_probs(model: Any, windows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Next-token log-probabilities of ``model`` on each window (float32, ``[len, vocab]``)."""
    with torch.inference_mode():
        return [torch.log_softmax(model(input_ids=torch.tensor([list(w)])).logits[0].float(), -1) for w in windows]


def mean_kl(model: Any, windows: Sequence[Sequence[int]], reference: Sequence[torch.Tensor]) -> float:
    """Mean KL(reference ‖ model) over every position of ``windows``."""
    total = n = 0.0
    for ref, q in zip(reference, log_probs(model, windows), strict=True):
        total += (ref.exp() * (ref - q)).sum().item()
        n += ref.shape[0]
    return total / n


def units_of(targets: Sequence[tuple[str, Any]], head: bool) -> dict[str, list[tuple[str, Any]]]:
    """The allocation units: ``layer N`` (the Linears under ``.layers.N.``) and ``output layer``."""
    units: dict[str, list[tuple[str, Any]]] = {}
    for i, (path, module) in enumerate(targets):
        if head and i == len(targets) - 1:
            units["output layer"] = [(path, module)]
            continue
        parts = path.split(".")
        idx = next(parts[j + 1] for j, p in enumerate(parts) if p == "layers")
        units.setdefault(f"layer {idx}", []).append((path, module))
    return units


def _swap_int8(members: Sequence[tuple[str, Any]], originals: dict[str, torch.Tensor], group: int
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Put the int8 version of each member's original weight in place; returns its codes and scales."""
    out = {}
    for path, module in members:
        codes, scales = quantize_int8_groups(originals[path], group)
        module.weight.data.copy_(int8_groups_dequant(codes, scales, group).to(module.weight.dtype))
        out[path] = (codes, scales)
    return out


def allocate_int8(model: Any, result: Any, targets: Sequence[tuple[str, Any]], originals: dict[str, torch.Tensor],
                  group: int, head: bool, windows: Sequence[Sequence[int]], reference: Sequence[torch.Tensor],
                  budget_bytes: float, store: Callable[[Any, str, Any, torch.Tensor, torch.Tensor], None],
                  progress: Callable[[int, int], None]) -> dict[str, Any]:
    """Measure each unit's KL in int8, pick the best set within ``budget_bytes``, and store their int8 codes
    (``store(result, weight name, module, codes, scales)`` replaces the int4 entry).

    Raises:
        InvalidInputError: the budget is below the all-int4 size.
    """
    base_bytes = (result.quantized_bits + 16 * result.float_params) / 8
    if base_bytes > budget_bytes:
        raise InvalidInputError(f"w4a16: a size budget of {budget_bytes / 1e6:.1f} MB is below the all-int4 size "
                                f"of {base_bytes / 1e6:.1f} MB")
    units = [u for u in units_of(targets, head).items()
             if not any(f"{path}.weight.zeros" not in result.codes for path, _ in u[1])]  # int4 ones only
    base_kl = mean_kl(model, windows, reference)
    rows = []
    for done, (unit, members) in enumerate(units, 1):
        saved = {path: module.weight.detach().clone() for path, module in members}
        _swap_int8(members, originals, group)
        kl = mean_kl(model, windows, reference)
        for path, module in members:
            module.weight.data.copy_(saved[path])
        extra = sum(m.weight.numel() * (8 + 16 / group - _bits(result, path)) for path, m in members) / 8
        rows.append({"unit": unit, "kl_int8": kl, "kl_saved": base_kl - kl, "extra_bytes": math.ceil(extra)})
        progress(done, len(units))
    picked = best_subset([r["kl_saved"] for r in rows], [r["extra_bytes"] for r in rows],
                         int(budget_bytes - base_bytes))
    chosen = [rows[i]["unit"] for i in picked]
    total = base_bytes + sum(rows[i]["extra_bytes"] for i in picked)
    members_of = dict(units)
    for unit in chosen:
        for path, (codes, scales) in _swap_int8(members_of[unit], originals, group).items():
            store(result, f"{path}.weight", dict(members_of[unit])[path], codes, scales)
    return {"budget_bytes": math.floor(budget_bytes), "all_int4_bytes": math.ceil(base_bytes),
            "bytes": math.ceil(total), "kl_all_int4": base_kl, "windows": len(windows), "int8_units": chosen,
            "units": rows}


def _bits(result: Any, path: str) -> float:
    return next(r["bits_per_weight"] for r in result.layers if r["name"] == f"{path}.weight")
