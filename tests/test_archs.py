"""Architecture rows: shape() on every config form, and every row prunes, scores and
collects an importance matrix through its module layout (a new row gets this test)."""

from __future__ import annotations

import copy

import pytest
import torch

from supertiny.archs import ARCHITECTURES, Layout, layout_of, shape
from supertiny.readers import token_windows
from supertiny.stages.export.imatrix import collect_imatrix
from supertiny.stages.prune import PruneConfig
from supertiny.stages.prune.importance import collect
from supertiny.stages.prune.plan import plan, prune_

from conftest import build_tiny_model, tiny_config

ARCHS = sorted(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("extra,kv_heads,head_dim", [
    ({}, 2, 16),  # conftest: 4 heads in 2 KV groups, hidden 64
    ({"num_key_value_heads": None}, 4, 16),
    ({"head_dim": 24}, 2, 24),  # a pruned student: heads x head_dim != hidden
])
def test_shape_of_config_objects_and_dicts(arch, extra, kv_heads, head_dim):
    cfg = tiny_config(arch, tied=False, **extra)
    for form in (cfg, cfg.to_dict()):
        s = shape(form)
        assert (s.layers, s.heads, s.kv_heads, s.head_dim) == (2, 4, kv_heads, head_dim), (arch, type(form))
        assert (s.hidden, s.intermediate, s.vocab, s.tied, s.context_length) == (64, 128, 400, False, 1024)
        assert s.group == 4 // kv_heads


def test_shape_of_a_bare_config_json_fills_in_the_implicit_sizes():
    raw = {"num_hidden_layers": 3, "num_attention_heads": 6, "hidden_size": 96, "intermediate_size": 160,
           "vocab_size": 400}
    s = shape(raw)
    assert (s.kv_heads, s.head_dim, s.tied, s.context_length) == (6, 16, False, None)
    s = shape({**raw, "num_key_value_heads": 2, "head_dim": 32, "tie_word_embeddings": True,
               "max_position_embeddings": 2048})
    assert (s.kv_heads, s.head_dim, s.tied, s.context_length, s.group) == (2, 32, True, 2048, 3)
    with pytest.raises(KeyError, match="intermediate_size"):
        shape({k: v for k, v in raw.items() if k != "intermediate_size"})
    with pytest.raises(ZeroDivisionError):
        shape({**raw, "num_attention_heads": 0})


# Per row: 3 layers, 8 query heads in 4 KV groups of 2, head_dim 16, MLP 96, hidden 128
ROW_SHAPE = dict(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4, hidden_size=128,
                 intermediate_size=96)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_row_prunes_scores_and_collects_an_imatrix(arch):
    spec = ARCHITECTURES[arch]
    model = build_tiny_model(arch, tied=False, **ROW_SHAPE)
    layout = layout_of(model)
    assert layout is spec.layout
    # the row names every matrix the model has, so the hooks miss none
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears == {layout.path(r, b) for b in range(3) for r in Layout.LINEARS} | {layout.path("lm_head")}
    for role in ("attn_norm", "ffn_norm", "attention"):
        model.get_submodule(layout.path(role, 2))
    for role in ("final_norm", "embed", "lm_head", "layers"):
        model.get_submodule(layout.path(role))

    ids = torch.randint(3, 400, (200,), generator=torch.Generator().manual_seed(1)).tolist()
    imatrix = collect_imatrix(model, spec, ids, window=64)
    assert len(imatrix) == 3 * 7 + 1 and imatrix["output.weight"].shape == (128,)
    assert imatrix["blk.2.ffn_down.weight"].shape == (96,) and imatrix["blk.0.attn_output.weight"].shape == (128,)

    imp = collect(model, token_windows(ids, 64), layer_loss=True)
    assert imp.heads.shape == (3, 8) and imp.mlp.shape == (3, 96) and imp.hidden.shape == (128,)
    assert imp.loss_increase is not None and bool((imp.heads > 0).all())
    p = plan(model, imp, PruneConfig(layers=2, layer_metric="loss", kv_heads=2, heads=2, mlp=64, hidden=96))
    student = copy.deepcopy(model)
    prune_(student, p)
    s = shape(student.config)
    assert (s.layers, s.heads, s.kv_heads, s.head_dim, s.intermediate, s.hidden) == (2, 2, 2, 16, 64, 96)
    assert layout.module(student, "q", 1).weight.shape == (32, 96)
    assert layout.module(student, "down", 0).weight.shape == (96, 64)
    assert [layout.module(student, "attention", i).layer_idx for i in range(2)] == [0, 1]
    with torch.no_grad():
        out = student(torch.tensor([ids[:20]])).logits
    assert out.shape == (1, 20, 400) and bool(torch.isfinite(out).all())
    # the student goes through the same row again
    assert len(collect_imatrix(student, spec, ids[:64], window=64)) == 2 * 7 + 1
