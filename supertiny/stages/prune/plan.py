"""Structured pruning's maths: which units to keep (:func:`plan`) and the exact surgery (:func:`prune_`).

* **Depth** drops whole decoder layers, the least important by block influence (or by
  the loss increase of skipping them, ``layer_metric="loss"``).
* **Width** keeps the most important attention heads (whole KV groups with
  ``kv_heads``, or query heads evenly inside every group with ``heads``, so that grouped
  attention stays valid), MLP channels and hidden (embedding) channels — the same
  count in every layer, so that the result is a plain Hugging Face checkpoint.

Scores come from :mod:`.importance`. The surgery is exact: the pruned model computes what
the original computes with the removed units zeroed (a dropped layer made an identity, a
head's output, an MLP channel or a hidden channel set to 0). For hidden channels that needs
one adjustment, because RMSNorm averages over the channels it sees: the norm weights are
scaled by ``sqrt(D / D')`` and the norm epsilon by ``D / D'``, which makes the normalised
values equal again. The stage (:mod:`.stage`) runs plan -> apply -> write.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from supertiny.archs import layout_of, shape
from supertiny.errors import InvalidInputError
from supertiny.stages.prune.importance import Importance

if TYPE_CHECKING:  # the stage imports this module when it runs; its Config is only read here
    from supertiny.stages.prune.stage import PruneConfig

# Which weights one unit of each prunable dimension spans: (module role, axis of the
# weight). Axis 0 slices output rows (and the bias), axis 1 input columns. Roles are
# the architecture row's :class:`~supertiny.archs.Layout` fields, which give the module
# paths (per layer or global).
WIDTH_GROUPS: dict[str, tuple[tuple[str, int], ...]] = {
    "query_heads": (("q", 0), ("o", 1)),
    "kv_heads": (("k", 0), ("v", 0)),
    "mlp": (("gate", 0), ("up", 0), ("down", 1)),
    "hidden": (("q", 1), ("k", 1), ("v", 1), ("o", 0), ("gate", 1), ("up", 1), ("down", 0), ("attn_norm", 0),
               ("ffn_norm", 0), ("embed", 1), ("final_norm", 0), ("lm_head", 1)),
}


@dataclass(frozen=True)
class PrunePlan:
    """The units kept, in their original order (indices into the unpruned model)."""

    layers: list[int]
    query_heads: list[list[int]]  # per kept layer
    kv_heads: list[list[int]]  # per kept layer
    mlp: list[list[int]]  # per kept layer
    hidden: list[int]


def _count(spec: float | None, full: int, what: str, round_to: int = 1) -> int:
    """A target width from a count or a fraction, checked against ``full``."""
    if spec is None:
        return full
    n = int(spec) if spec >= 1 else max(1, round(full * spec))
    if round_to > 1 and n != full:
        n = max(round_to, n // round_to * round_to)
    if n > full:
        raise InvalidInputError(f"cannot keep {n} {what}: the model has {full}")
    return n


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, in ascending index order (ties: lower index)."""
    order = sorted(range(scores.numel()), key=lambda j: (-float(scores[j]), j))
    return sorted(order[:k])


@dataclass(frozen=True)
class _Targets:
    layers: int
    kv_heads: int
    per_group: int  # query heads kept in every kept KV group
    mlp: int
    hidden: int


def targets(cfg: Any, config: PruneConfig) -> _Targets:
    """How many units of each kind survive; checked against the model's config before any slow work."""
    s = shape(cfg)
    n_layers, n_heads, n_kv, group = s.layers, s.heads, s.kv_heads, s.group
    if config.layers is not None:
        keep_layers = int(config.layers)
    elif config.drop_layers is not None:
        keep_layers = n_layers - round(n_layers * config.drop_layers)
    else:
        keep_layers = n_layers
    if not 1 <= keep_layers <= n_layers:
        raise InvalidInputError(f"cannot keep {keep_layers} of {n_layers} layers")
    if keep_layers == n_layers and (config.layers is not None or config.drop_layers is not None):
        raise InvalidInputError(f"keeping {keep_layers} of {n_layers} layers drops none; ask for fewer")
    kv_keep = _count(config.kv_heads, n_kv, "KV heads")
    q_keep = _count(config.heads, n_heads, "query heads") if config.heads is not None else kv_keep * group
    if q_keep % kv_keep or q_keep // kv_keep > group:
        raise InvalidInputError(
            f"{q_keep} query heads do not split evenly over {kv_keep} KV heads with at most {group} each "
            f"(the model has {n_heads} query and {n_kv} KV heads); choose a multiple of {kv_keep} up to "
            f"{kv_keep * group}")
    return _Targets(layers=keep_layers, kv_heads=kv_keep, per_group=q_keep // kv_keep,
                    mlp=_count(config.mlp, s.intermediate, "MLP channels", config.round_to),
                    hidden=_count(config.hidden, s.hidden, "hidden channels", config.round_to))


def plan(model: Any, imp: Importance, config: PruneConfig) -> PrunePlan:
    """Choose the units to keep from the scores (see :class:`PruneConfig`)."""
    t = targets(model.config, config)
    s = shape(model.config)
    n_kv, group = s.kv_heads, s.group
    layer_scores = imp.loss_increase if config.layer_metric == "loss" else imp.block_influence
    if layer_scores is None:
        raise InvalidInputError("the loss metric needs importance collected with layer_loss=True")
    layers = _top(layer_scores, t.layers)
    q_plan, kv_plan, mlp_plan = [], [], []
    for i in layers:
        h = imp.heads[i]
        groups = _top(h.reshape(n_kv, group).sum(1), t.kv_heads)
        kv_plan.append(groups)
        q_plan.append(sorted(g * group + j for g in groups
                             for j in _top(h[g * group:(g + 1) * group], t.per_group)))
        mlp_plan.append(_top(imp.mlp[i], t.mlp))
    return PrunePlan(layers=layers, query_heads=q_plan, kv_heads=kv_plan, mlp=mlp_plan,
                     hidden=_top(imp.hidden, t.hidden))


def _rows(units: list[int], size: int) -> torch.Tensor:
    """Weight rows/columns of whole units of ``size`` (heads of ``head_dim``)."""
    return torch.tensor([u * size + k for u in units for k in range(size)], dtype=torch.long)


def _slice_(module: torch.nn.Module, idx: torch.Tensor, axis: int, scale: float = 1.0) -> None:
    """Keep ``idx`` along ``axis`` of ``module.weight`` (and of the bias for axis 0), in place."""
    w = module.weight.data
    if w.dim() == 1:  # a norm
        module.weight = torch.nn.Parameter(w.index_select(0, idx) * scale)
        return
    if isinstance(module, torch.nn.Embedding):
        axis = 1  # an embedding table is [vocab, hidden]
    module.weight = torch.nn.Parameter(w.index_select(axis, idx).contiguous())
    if axis == 0 and getattr(module, "bias", None) is not None:
        module.bias = torch.nn.Parameter(module.bias.data.index_select(0, idx))
    if isinstance(module, torch.nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, torch.nn.Embedding):
        module.embedding_dim = module.weight.shape[1]


def prune_(model: Any, p: PrunePlan) -> None:
    """Apply ``p`` to ``model`` in place: drop layers, slice weights, update the config."""
    cfg = model.config
    s = shape(cfg)
    layout = layout_of(model)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    old = layout.decoder_layers(model)
    layout.set_decoder_layers(model, torch.nn.ModuleList([old[i] for i in p.layers]))
    for new_i in range(len(p.layers)):  # the KV cache is indexed by position in the stack
        layout.module(model, "attention", new_i).layer_idx = new_i

    def each(group: str, idx_for: Callable[[int], torch.Tensor], scale: float = 1.0) -> None:
        """Slice every weight of ``group`` in every kept layer (a tied output layer follows the embedding)."""
        for role, axis in WIDTH_GROUPS[group]:
            if layout.per_layer(role):
                for new_i in range(len(p.layers)):
                    _slice_(layout.module(model, role, new_i), idx_for(new_i), axis, scale)
            elif not (tied and role == "lm_head"):
                _slice_(layout.module(model, role), idx_for(0), axis, scale)

    if len(p.kv_heads[0]) < s.kv_heads:
        each("kv_heads", lambda i: _rows(p.kv_heads[i], s.head_dim))
    if len(p.query_heads[0]) < s.heads:
        each("query_heads", lambda i: _rows(p.query_heads[i], s.head_dim))
    if len(p.mlp[0]) < s.intermediate:
        each("mlp", lambda i: torch.tensor(p.mlp[i], dtype=torch.long))
    hidden = len(p.hidden)
    if hidden < s.hidden:
        # RMSNorm divides by the mean square over the channels it sees: rescaling the
        # weights and epsilon keeps each kept channel's normalised value unchanged.
        ratio = s.hidden / hidden
        idx = torch.tensor(p.hidden, dtype=torch.long)
        each("hidden", lambda _i: idx, scale=math.sqrt(ratio))  # the scale applies to norm weights only
        cfg.rms_norm_eps = cfg.rms_norm_eps * ratio
        for m in model.modules():  # norms keep their epsilon as an attribute
            if hasattr(m, "variance_epsilon"):
                m.variance_epsilon = cfg.rms_norm_eps
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    cfg.num_hidden_layers = len(p.layers)
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [cfg.layer_types[i] for i in p.layers]
    if getattr(cfg, "max_window_layers", None) is not None:
        cfg.max_window_layers = min(cfg.max_window_layers, len(p.layers))
    cfg.num_key_value_heads = len(p.kv_heads[0])
    cfg.num_attention_heads = len(p.query_heads[0])
    cfg.head_dim = s.head_dim  # no longer hidden_size / heads in general
    cfg.intermediate_size = len(p.mlp[0])
    cfg.hidden_size = hidden
    for new_i in range(len(p.layers)):
        attn = layout.module(model, "attention", new_i)
        attn.num_key_value_groups = cfg.num_attention_heads // cfg.num_key_value_heads
        for name in ("num_heads", "num_key_value_heads"):
            if hasattr(attn, name):
                setattr(attn, name, getattr(cfg, "num_attention_heads" if name == "num_heads" else name))


def _removed_share(scores: torch.Tensor, kept: list[list[int]], rows: list[int]) -> float:
    """The share of the summed importance (over the kept layers) that pruning removed."""
    total = sum(float(scores[r].sum()) for r in rows)
    left = sum(float(scores[r][k].sum()) for r, k in zip(rows, kept, strict=True))
    return round(1 - left / total, 6) if total else 0.0


def summary(model: Any, p: PrunePlan, imp: Importance, config: PruneConfig, before: dict[str, int]) -> dict[str, Any]:
    """What was removed and the scores behind it (per unit kind, counts and the importance share lost)."""
    scores = imp.loss_increase if config.layer_metric == "loss" else imp.block_influence
    assert scores is not None
    dropped = [i for i in range(before["layers"]) if i not in p.layers]
    cfg = model.config
    return {
        "layers": {"from": before["layers"], "to": len(p.layers), "metric": config.layer_metric,
                   "dropped": [{"index": i, "score": round(float(scores[i]), 6)} for i in dropped],
                   "kept": p.layers},
        "query_heads": {"from": before["heads"], "to": cfg.num_attention_heads,
                        "importance_removed": _removed_share(imp.heads, p.query_heads, p.layers)},
        "kv_heads": {"from": before["kv_heads"], "to": cfg.num_key_value_heads},
        "mlp": {"from": before["mlp"], "to": cfg.intermediate_size,
                "importance_removed": _removed_share(imp.mlp, p.mlp, p.layers)},
        "hidden": {"from": before["hidden"], "to": cfg.hidden_size,
                   "importance_removed": _removed_share(imp.hidden[None], [p.hidden], [0])},
        "head_dim": cfg.head_dim,
    }
