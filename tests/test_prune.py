"""Structured pruning: exact surgery, deterministic scores, valid GQA, loadable students."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from supertiny.errors import InvalidInputError
from supertiny.readers import calibration_text
from supertiny.stages.prune import PruneConfig, prune
from supertiny.stages.prune.importance import collect
from supertiny.stages.prune.plan import plan, prune_

from conftest import build_tiny_model

# 4 layers, 8 query heads in 4 KV groups of 2, head_dim 16, MLP 128, hidden 128
SHAPE = dict(num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, hidden_size=128,
             intermediate_size=128)


def windows(n=3, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 400, (length,), generator=g).tolist() for _ in range(n)]


def masked(model, p):
    """The original model with the pruned units zeroed: what the pruned model must compute."""
    m = copy.deepcopy(model)
    cfg = m.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    drop_hidden = [d for d in range(cfg.hidden_size) if d not in p.hidden]
    with torch.no_grad():
        m.model.embed_tokens.weight[:, drop_hidden] = 0
        for i, layer in enumerate(m.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            if i not in p.layers:  # an identity: nothing written to the residual stream
                attn.o_proj.weight.zero_()
                mlp.down_proj.weight.zero_()
                continue
            k = p.layers.index(i)
            for h in range(cfg.num_attention_heads):
                if h not in p.query_heads[k]:
                    attn.o_proj.weight[:, h * hd:(h + 1) * hd] = 0
            mlp.down_proj.weight[:, [j for j in range(cfg.intermediate_size) if j not in p.mlp[k]]] = 0
            attn.o_proj.weight[drop_hidden] = 0
            mlp.down_proj.weight[drop_hidden] = 0
    return m


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("arch,tied", [("llama", True), ("qwen2", False), ("mistral", False)])
@pytest.mark.parametrize("settings", [
    {"drop_layers": 0.5},
    {"layers": 3, "layer_metric": "loss"},
    {"heads": 4},  # one query head per group
    {"kv_heads": 2},  # whole groups
    {"kv_heads": 2, "heads": 2},
    {"mlp": 0.5},
    {"hidden": 96},
    {"drop_layers": 0.25, "heads": 4, "mlp": 80, "hidden": 0.75},
])
def test_surgery_equals_the_masked_original(tmp_path, arch, tied, settings):
    model = build_tiny_model(arch, tied=tied, **SHAPE)
    config = PruneConfig(**settings)
    imp = collect(model, windows(), layer_loss=config.layer_metric == "loss")
    p = plan(model, imp, config)
    student = copy.deepcopy(model)
    prune_(student, p)
    student.save_pretrained(tmp_path / "s", safe_serialization=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "s", use_safetensors=True).eval()
    ids = windows(1, 33, seed=7)[0]
    reference = logits(masked(model, p), ids)
    # float32 summation order only: these logits are O(100), measured differences <= 2.3e-5
    torch.testing.assert_close(logits(student, ids), reference, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(logits(loaded, ids), reference, atol=1e-4, rtol=1e-6)
    cfg = loaded.config
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0  # GQA stays valid
    assert cfg.num_hidden_layers == len(p.layers) and cfg.head_dim == 16
    assert (loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight) == tied
    # the cache works: greedy decoding with it equals full passes on the masked original
    out = loaded.generate(torch.tensor([ids[:8]]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    seq = ids[:8]
    for _ in range(6):
        seq.append(int(logits(masked(model, p), seq)[-1].argmax()))
    produced = out[0].tolist()  # generate stops early when it picks eos (id 2)
    assert produced == seq[:len(produced)] and (len(produced) == len(seq) or produced[-1] == 2)


def test_importance_is_deterministic_and_ranks_a_dead_unit_last():
    model = build_tiny_model("llama", **SHAPE)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, 5] = 0  # channel 5 of layer 1 still fires ...
        model.model.layers[2].mlp.up_proj.weight[7] = 0  # ... but channel 7 of layer 2 is always 0
        model.model.layers[2].self_attn.v_proj.weight[16:32] = 0  # KV head 1 outputs nothing
    a, b = collect(model, windows()), collect(model, windows())
    for x, y in zip((a.block_influence, a.heads, a.mlp, a.hidden), (b.block_influence, b.heads, b.mlp, b.hidden),
                    strict=True):
        assert torch.equal(x, y)
    assert a.mlp[2, 7] == 0 and a.mlp[1, 5] > 0
    assert a.heads[2, 2] == 0 and a.heads[2, 3] == 0  # the query heads of the dead group
    p = plan(model, a, PruneConfig(kv_heads=3, mlp=127))
    assert 1 not in p.kv_heads[2] and 7 not in p.mlp[2]


def test_an_identity_layer_is_dropped_first():
    model = build_tiny_model("llama", **SHAPE)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    for metric, layer_loss in (("block-influence", False), ("loss", True)):
        imp = collect(model, windows(), layer_loss=layer_loss)
        assert plan(model, imp, PruneConfig(layers=3, layer_metric=metric)).layers == [0, 1, 3]


@pytest.mark.parametrize("settings,pattern", [
    ({"layers": 4}, "drops none"),
    ({"layers": 9}, "cannot keep 9 of 4 layers"),
    ({"heads": 3}, "do not split evenly over 4 KV heads"),
    ({"heads": 12}, "cannot keep 12 query heads"),
    ({"kv_heads": 2, "heads": 6}, "at most 2 each"),
    ({"mlp": 500}, "cannot keep 500 MLP channels"),
])
def test_impossible_plans_are_clean_errors(settings, pattern):
    model = build_tiny_model("llama", **SHAPE)
    imp = collect(model, windows(1))
    with pytest.raises(InvalidInputError, match=pattern):
        plan(model, imp, PruneConfig(**settings))


@pytest.mark.parametrize("settings,pattern", [
    ({}, "nothing to prune"),
    ({"layers": 2, "drop_layers": 0.5}, "not both"),
    ({"drop_layers": 1.5}, "between 0 and 1"),
    ({"mlp": 2.5}, "a count .a whole number. or a fraction"),
    ({"heads": -1}, "a count"),
    ({"layer_metric": "magic", "layers": 2}, "unknown layer metric"),
    ({"mlp": 0.5, "round_to": 0}, "round_to: expected a positive integer, got 0"),
])
def test_bad_settings(settings, pattern):
    with pytest.raises(InvalidInputError, match=pattern):
        PruneConfig(**settings)


def test_round_to_keeps_quant_friendly_widths():
    model = build_tiny_model("llama", **SHAPE)
    imp = collect(model, windows(1))
    p = plan(model, imp, PruneConfig(mlp=0.7, hidden=0.8, round_to=32))
    assert len(p.mlp[0]) == 64 and len(p.hidden) == 96  # 90 -> 64, 102 -> 96


def test_calibration_jsonl(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "alpha"}\n\n{"prompt": "q?", "response": "a."}\n')
    assert calibration_text(str(f)) == "alpha\n\nq?\na."
    f.write_text('{"foo": 1}\n')
    with pytest.raises(InvalidInputError, match=r"c.jsonl:1: needs a \"text\" field"):
        calibration_text(str(f))
    f.write_text("[1, 2]\n")
    with pytest.raises(InvalidInputError, match="expected a JSON object"):
        calibration_text(str(f))


def test_prune_writes_a_plain_checkpoint_with_a_report(make_tiny_dir, tmp_path):
    src = make_tiny_dir("qwen2", tied=False, **SHAPE)
    out = tmp_path / "student"
    report = prune(src, out, PruneConfig(drop_layers=0.5, mlp=0.5, calib_tokens=256, eval_tokens=128, window=64))
    loaded = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    assert loaded.config.num_hidden_layers == 2 and loaded.config.intermediate_size == 64
    assert json.loads((out / "supertiny.json").read_text()) == report.to_dict() and report.stage == "prune"
    assert report.details["parameters"]["after"] == loaded.num_parameters() < report.details["parameters"]["before"]
    assert report.details["pruned"]["layers"]["to"] == 2 and len(report.details["pruned"]["layers"]["dropped"]) == 2
    q = report.quality
    assert q["tokens"] == 128 and q["kl_mean"] > 0 and 0 <= q["top1_agreement"] <= 1
    assert (out / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(InvalidInputError, match="not empty"):
        prune(src, out, PruneConfig(layers=1))


@pytest.mark.parametrize("arch,tied", [("llama", True), ("qwen2", False)])
def test_pruned_students_export_to_gguf_and_onnx(make_tiny_dir, tmp_path, arch, tied):
    from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf
    from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx

    src = make_tiny_dir(arch, tied=tied, **SHAPE)
    student = tmp_path / "student"
    prune(src, student, PruneConfig(drop_layers=0.25, kv_heads=2, heads=2, mlp=96, hidden=96, calib_tokens=256,
                                    eval_tokens=64, window=64))
    # strict float parity with PyTorch: the exporters see non-standard shapes
    # (head_dim 16 != 96 / 2 heads) and a rescaled norm epsilon
    gguf = export_gguf(student, tmp_path / "s.gguf", GGUFExportConfig(dtype="f32", verify_tokens=128))
    assert gguf.quality["passed"] and gguf.quality["strict"]
    for graph in ("optimum", "genai"):
        onnx = export_onnx(student, tmp_path / graph, OnnxExportConfig(format=graph, verify_tokens=128))
        assert onnx.quality["passed"] and onnx.quality["strict"]


def test_report_says_how_much_importance_went():
    from supertiny.stages.prune.plan import summary

    model = build_tiny_model("llama", **SHAPE)
    imp = collect(model, windows(1))
    p = plan(model, imp, PruneConfig(mlp=64, heads=4))
    before = {"layers": 4, "heads": 8, "kv_heads": 4, "mlp": 128, "hidden": 128}
    student = copy.deepcopy(model)
    prune_(student, p)
    s = summary(student, p, imp, PruneConfig(mlp=64, heads=4), before)
    # the least important half of the channels holds less than half of the importance
    assert 0 < s["mlp"]["importance_removed"] < 0.5 and 0 < s["query_heads"]["importance_removed"] < 0.5
    assert s["hidden"]["importance_removed"] == 0 and s["mlp"]["to"] == 64
