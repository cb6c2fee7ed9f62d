"""AWQ-style scaling applied to a model: search each group's scales, fold them in, in place.

The searching is :func:`supertiny.stages.quantize.gptq.awq_search`; this module knows which
Linears share an input and which op produces it (:data:`AWQ_GROUPS`, facts as data),
and folds ``1/s`` into that op so that the model computes the same function before
rounding: a norm's weight, or the output rows of ``v_proj`` / ``up_proj``.
"""

from __future__ import annotations

from typing import Any

import torch

from supertiny.archs import layout_of, shape
from supertiny.stages.quantize.gptq import InputStats, awq_search

# (the op whose output the Linears read, the Linears): per decoder layer, as layout roles.
# o_proj reads the attention output, which is linear in v_proj's rows; down_proj reads
# act(gate) * up, which is linear in up_proj's rows.
AWQ_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attn_norm", ("q", "k", "v")),
    ("v", ("o",)),
    ("ffn_norm", ("gate", "up")),
    ("up", ("down",)),
)


def _fold_(prev: Any, s: torch.Tensor) -> None:
    """Divide what ``prev`` outputs by ``s``: a norm's weight, or a Linear's rows (and bias)."""
    if isinstance(prev, torch.nn.Linear):
        prev.weight.div_(s[:, None])
        if prev.bias is not None:
            prev.bias.div_(s)
    else:
        prev.weight.div_(s)


def apply_awq_(model: Any, scheme: Any, stats: dict[str, InputStats], result: Any
               ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Search and fold AWQ scales for every group of every layer (and an untied output layer).

    Returns:
        the chosen exponent α per Linear path (0 means plain RTN won) and the scale ``s`` per path
        (ones where none was applied): the Linear's input is now ``x / s``.
    """
    layout, dims = layout_of(model), shape(model.config)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    groups: list[tuple[Any, list[str], tuple[int, int, int] | None]] = []
    for i in range(dims.layers):
        for prev, roles in AWQ_GROUPS:
            tie = (dims.kv_heads, dims.group, dims.head_dim) if prev == "v" else None
            groups.append((layout.module(model, prev, i), [layout.path(r, i) for r in roles], tie))
    if scheme.head and not tied:
        groups.append((layout.module(model, "final_norm"), [layout.path("lm_head")], None))
    elif scheme.head:
        result.notes.append(f"AWQ: {layout.path('lm_head')} is tied to the embedding (a scale would change both): "
                            "rounded without AWQ scaling")
    alphas: dict[str, float] = {}
    scales: dict[str, torch.Tensor] = {}
    for prev, paths, tie in groups:
        linears = [model.get_submodule(p) for p in paths]
        s, alpha, _ = awq_search([m.weight for m in linears], stats[paths[0]], scheme.group, scheme.symmetric,
                                 scheme.awq_grid, tie)
        scales.update(dict.fromkeys(paths, s))
        if alpha == 0:
            alphas.update(dict.fromkeys(paths, 0.0))
            continue
        fold = s.reshape(tie)[:, 0, :].reshape(-1) if tie is not None else s  # one scale per v_proj row
        _fold_(prev, fold)
        for m in linears:
            m.weight.mul_(s[None, :])
        alphas.update(dict.fromkeys(paths, alpha))
    for path, st in stats.items():  # Linears outside any group (a tied output layer): unscaled
        scales.setdefault(path, torch.ones(st.h.shape[0]))
    return alphas, scales
