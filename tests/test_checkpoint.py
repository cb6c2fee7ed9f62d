"""Broken checkpoints are one-line errors naming the tensors, for every loader and stage."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, run

from supertiny.checkpoint import check_tensors
from supertiny.errors import BrokenCheckpointError
from supertiny.evaluate import perplexity
from supertiny.gguf_file import GGUFFile
from supertiny.models import describe, load_model
from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf


def edit_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    f = folder / "model.safetensors"
    state = load_file(str(f))
    edit(state)
    save_file(state, str(f), metadata={"format": "pt"})
    return folder


def set_layers(folder, n):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = n
    if "layer_types" in cfg:  # qwen2 lists one attention type per layer
        cfg["layer_types"] = cfg["layer_types"][:1] * n
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def one_line(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_config_claiming_more_layers_than_the_weights_hold(make_tiny_dir, tmp_path):
    src = set_layers(make_tiny_dir("llama"), 5)  # weights hold 2 layers
    assert describe(src).layers == 5  # metadata alone cannot tell
    with pytest.raises(BrokenCheckpointError) as e:
        load_model(src)
    assert "missing model.layers.2-4.* (27 tensors)" in one_line(e)
    with pytest.raises(BrokenCheckpointError, match=r"model\.layers\.2-4\.\*"):  # the export streams, same check
        export_gguf(src, tmp_path / "m.gguf", GGUFExportConfig(verify=False))
    assert not (tmp_path / "m.gguf").exists()


def test_config_claiming_fewer_layers(make_tiny_dir):
    src = set_layers(make_tiny_dir("qwen2", tied=False), 1)
    with pytest.raises(BrokenCheckpointError) as e:
        load_model(src)
    assert "unexpected model.layers.1.* (12 tensors)" in one_line(e)


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update({"model.layers.0.mlp.upp_proj.weight": s.pop("model.layers.0.mlp.up_proj.weight")}),
     "missing model.layers.0.mlp.up_proj.weight (1 tensor); unexpected model.layers.0.mlp.upp_proj.weight (1 tensor)"),
    (lambda s: s.update({"model.extra.weight": torch.zeros(3)}), "unexpected model.extra.weight (1 tensor)"),
    (lambda s: s.update({"model.layers.1.self_attn.k_proj.weight": torch.zeros(16, 64)}),
     "mis-shaped model.layers.1.self_attn.k_proj.weight [16, 64] (expected [32, 64])"),
    (lambda s: s.pop("model.norm.weight"), "missing model.norm.weight (1 tensor)"),
])
def test_renamed_extra_reshaped_and_missing_tensors(make_tiny_dir, tmp_path, edit, message):
    src = edit_weights(make_tiny_dir("llama"), edit)
    with pytest.raises(BrokenCheckpointError) as e:
        load_model(src)
    assert message in one_line(e) and str(src) in one_line(e)
    with pytest.raises(BrokenCheckpointError, match="does not hold the model"):
        export_gguf(src, tmp_path / "m.gguf", GGUFExportConfig(verify=False))


def test_tied_lm_head_may_be_absent_but_untied_may_not(make_tiny_dir):
    assert load_model(make_tiny_dir("llama", tied=True)).info.tied_embeddings  # saved without lm_head
    src = edit_weights(make_tiny_dir("llama", tied=False), lambda s: s.pop("lm_head.weight"))
    with pytest.raises(BrokenCheckpointError, match=r"missing lm_head\.weight \(1 tensor\)"):
        load_model(src)


def test_non_finite_weights_in_a_hf_directory(make_tiny_dir, tmp_path):
    def poison(state):
        state["model.layers.1.mlp.down_proj.weight"][3, :5] = float("nan")
        state["model.layers.0.self_attn.o_proj.weight"][0, 0] = float("inf")

    src = edit_weights(make_tiny_dir("llama"), poison)
    with pytest.raises(BrokenCheckpointError) as e:
        load_model(src)
    assert ("non-finite weights (NaN/Inf) in model.layers.0.self_attn.o_proj.weight (1 values), "
            "model.layers.1.mlp.down_proj.weight (5 values)") in one_line(e)
    with pytest.raises(BrokenCheckpointError, match=r"o_proj\.weight \(1 values\)"):  # as the export streams
        export_gguf(src, tmp_path / "m.gguf", GGUFExportConfig(verify=False))
    assert not (tmp_path / "m.gguf").exists()


def nan_gguf(make_tiny_dir, tmp_path, tensor="blk.1.ffn_up.weight"):
    out = tmp_path / "nan.gguf"
    export_gguf(make_tiny_dir("llama"), out, GGUFExportConfig(dtype="f32", verify=False))
    t = next(t for t in GGUFFile(out).tensors if t.name == tensor)
    with open(out, "r+b") as fh:  # a run of NaN and Inf floats; the metadata still parses
        fh.seek(int(t.data_offset) + 40)
        fh.write(struct.pack("<4f", float("nan"), float("inf"), float("nan"), float("-inf")) * 4)
    return out


def test_non_finite_bytes_in_a_gguf(make_tiny_dir, tmp_path):
    path = nan_gguf(make_tiny_dir, tmp_path)
    with pytest.raises(BrokenCheckpointError) as e:
        load_model(path)
    assert "blk.1.ffn_up.weight (model.layers.1.mlp.up_proj.weight) (16 values)" in one_line(e)


def test_gguf_tensor_table_is_checked_after_the_name_mapping(make_tiny_dir, tmp_path):
    import gguf

    out = tmp_path / "m.gguf"
    export_gguf(make_tiny_dir("llama"), out, GGUFExportConfig(dtype="f32", verify=False))
    src = GGUFFile(out)
    bad = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(bad), "llama")
    for key, field in src.reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(key, field.contents())
        else:
            w.add_key_value(key, field.contents(), vtype)
    for t in src.tensors:
        if t.name == "blk.0.ffn_gate.weight":
            continue  # missing
        data = np.array(t.data)
        name = {"blk.1.attn_v.weight": "blk.1.attn_vv.weight"}.get(t.name, t.name)  # renamed
        if t.name == "output_norm.weight":
            data = np.zeros(63, dtype=np.float32)  # reshaped
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(BrokenCheckpointError) as e:
        load_model(bad)
    text = one_line(e)
    assert "missing model.layers.0.mlp.gate_proj.weight, model.layers.1.self_attn.v_proj.weight (2 tensors)" in text
    assert "unexpected blk.1.attn_vv.weight (1 tensor)" in text
    assert "mis-shaped model.norm.weight [63] (expected [64])" in text


def test_perplexity_on_non_finite_logits_is_an_error_not_nan():
    fn = lambda ids: torch.full((len(ids), 8), float("nan"))  # noqa: E731
    with pytest.raises(BrokenCheckpointError, match="non-finite logits"):
        perplexity(fn, [1, 2, 3, 4, 5])
    masked = lambda ids: torch.tensor([[0.0, float("-inf"), 0.0, 0.0]] * len(ids))  # noqa: E731
    assert perplexity(masked, [0, 2, 3, 0]).perplexity == pytest.approx(3.0)  # -inf is a masked token, fine


def test_eval_on_a_nan_gguf_exits_2_with_one_line(make_tiny_dir, tmp_path):
    path = nan_gguf(make_tiny_dir, tmp_path)
    assert_one_line_error(run("eval", path, "--backend", "torch", "--no-generate"), "blk.1.ffn_up.weight")
    assert_one_line_error(run("eval", path, "--no-generate"), "non-finite logits")  # llama.cpp runs it


def test_eval_on_a_hf_dir_with_missing_layers_exits_2(make_tiny_dir):
    src = set_layers(make_tiny_dir("llama"), 4)
    assert_one_line_error(run("eval", src, "--no-generate"), "missing model.layers.2-3.* (18 tensors)")


def test_summary_collapses_whole_layers_and_counts():
    expected = {f"model.layers.{i}.{p}.weight": (2,) for i in range(40) for p in ("a", "b")}
    found = {k: v for k, v in expected.items() if int(k.split(".")[2]) < 30 or k == "model.layers.35.a.weight"}
    with pytest.raises(BrokenCheckpointError) as e:
        check_tensors(found, expected, (), "ckpt")
    assert ("missing model.layers.{30-34,36-39}.*, model.layers.35.b.weight (19 tensors)") in one_line(e)
