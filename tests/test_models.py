"""Loading Hugging Face directories: exact weights, honest descriptions, clean errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from supertiny import archs
from supertiny.errors import (
    ModelNotFoundError,
    NotAModelError,
    UnsafeCheckpointError,
    UnsupportedArchitectureError,
    UserError,
)
from supertiny.models import describe, load_model, resolve

from conftest import build_tiny_model

SHARED = ("architecture", "layers", "heads", "kv_heads", "head_dim", "hidden", "intermediate", "vocab",
          "tied_embeddings", "parameters", "format", "source", "chat_template", "context_length")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("tied", [True, False])
def test_load_gives_the_saved_model_exactly(make_tiny_dir, arch, tied):
    path = make_tiny_dir(arch, tied=tied)
    lm = load_model(path)
    reference = build_tiny_model(arch, tied=tied)
    ids = torch.arange(20)[None] % 400
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert not lm.model.training
    info = lm.info
    assert info.architecture == arch and info.format == "hf"
    shape = (info.layers, info.heads, info.kv_heads, info.hidden, info.intermediate, info.vocab)
    assert shape == (2, 4, 2, 64, 128, 400)
    assert info.head_dim == 16 and info.tied_embeddings is tied and info.chat_template is True
    assert info.dtype == "float32"
    assert info.parameters == reference.num_parameters()


@pytest.mark.parametrize("tied", [True, False])
def test_describe_reads_metadata_only_and_agrees_with_the_loaded_model(make_tiny_dir, tied):
    path = make_tiny_dir("llama", tied=tied)
    meta = describe(path).to_dict()
    loaded = load_model(path).info.to_dict()
    assert {k: meta[k] for k in SHARED} == {k: loaded[k] for k in SHARED}
    assert meta["dtype"] == "F32"
    assert meta["file_bytes"] == (path / "model.safetensors").stat().st_size


def test_bfloat16_load(make_tiny_dir):
    lm = load_model(make_tiny_dir(), dtype="bfloat16")
    assert lm.model.dtype == torch.bfloat16 and lm.info.dtype == "bfloat16"
    with pytest.raises(UserError, match="unknown dtype"):
        load_model(make_tiny_dir(name="other"), dtype="int3")


def test_special_tokens_reach_generation(make_tiny_dir):
    lm = load_model(make_tiny_dir())
    assert lm.model.generation_config.eos_token_id == lm.tokenizer.eos_token_id
    assert lm.model.generation_config.pad_token_id == lm.tokenizer.pad_token_id


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file or directory"):
        resolve(tmp_path / "nope")


def test_directory_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(NotAModelError, match="config.json"):
        describe(tmp_path / "m")


def test_pickle_only_directory_is_refused_without_unpickling(make_tiny_dir):
    path = make_tiny_dir()
    (path / "model.safetensors").unlink()
    # A pickle that would run code if loaded: it must never be opened.
    (path / "pytorch_model.bin").write_bytes(b"cos\nsystem\n(S'touch /tmp/supertiny-pwned'\ntR.")
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
        load_model(path)
    with pytest.raises(UnsafeCheckpointError):
        resolve(path / "pytorch_model.bin")


def test_unsupported_architecture_lists_the_supported_ones(make_tiny_dir):
    path = make_tiny_dir()
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="llama, mistral, qwen2"):
        load_model(path)


def test_remote_code_is_never_run(make_tiny_dir):
    path = make_tiny_dir()
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "evil"
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(UnsupportedArchitectureError):
        load_model(path)


def test_truncated_safetensors(make_tiny_dir):
    path = make_tiny_dir()
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(NotAModelError, match="truncated"):
        describe(path)
    with pytest.raises(NotAModelError):
        load_model(path)


def test_sharded_index_with_missing_shard(make_tiny_dir):
    path = make_tiny_dir()
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(NotAModelError, match="missing"):
        describe(path)


def test_onnx_directories(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    assert resolve(tmp_path) == ("onnx", tmp_path)
    assert resolve(tmp_path / "model.onnx") == ("onnx", tmp_path)
    with pytest.raises(NotAModelError, match="no config.json"):
        describe(tmp_path)
    with pytest.raises(NotAModelError, match="runs in onnxruntime"):
        load_model(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "decoder_model.onnx").write_bytes(b"")
    with pytest.raises(NotAModelError, match="no model.onnx"):
        resolve(other)


def test_directory_with_gguf_points_at_it(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(NotAModelError, match="did you mean"):
        resolve(tmp_path)


def test_missing_tokenizer_is_a_clean_error(make_tiny_dir):
    path = make_tiny_dir()
    for f in path.glob("tokenizer*"):
        f.unlink()
    (path / "special_tokens_map.json").unlink(missing_ok=True)
    with pytest.raises(NotAModelError, match="tokenizer"):
        load_model(path)


def test_arch_table_lookups():
    assert archs.arch_for_model_type("qwen2").qkv_bias is True
    assert archs.arch_for_gguf("llama").model_type == "llama"
    assert archs.supported() == ["llama", "mistral", "qwen2"]
    with pytest.raises(UnsupportedArchitectureError, match="supported: llama, qwen2"):
        archs.arch_for_gguf("bert")


def test_copying_a_model_dir_keeps_it_loadable(make_tiny_dir, tmp_path):
    """A student is a plain directory: copying it around must not break it."""
    src = make_tiny_dir()
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    assert describe(dst).parameters == describe(src).parameters
