"""supertiny's GGUF loader against transformers' own: the same config, bit-equal weights."""

from __future__ import annotations

import pytest
import torch

from supertiny.gguf_file import GGUFFile
from supertiny.gguf_load import hf_config, load_gguf
from supertiny.models import load_model
from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf


def transformers_load(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()


def assert_same_model(ours, theirs):
    assert ours.config.to_dict() == theirs.config.to_dict()
    assert type(ours) is type(theirs)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name  # bit-equal, not close
    for (name, x), (_, y) in zip(ours.named_buffers(), theirs.named_buffers(), strict=True):
        assert torch.equal(x, y), name
    tied = ours.config.tie_word_embeddings
    assert (ours.get_output_embeddings().weight is ours.get_input_embeddings().weight) is tied
    assert not any(p.is_meta for p in ours.parameters())


# (source arch, directory name, tied, export settings): mistral runs as llama.cpp's
# llama graph; transformers reads it back as mistral only when general.name is "mistral".
CASES = [
    ("llama", "llama", True, dict(dtype="f32")),
    ("llama", "llama", False, dict(dtype="f16")),
    ("mistral", "mistral", False, dict(dtype="f32")),
    ("mistral", "my-mistral", True, dict(dtype="f16")),
    ("qwen2", "qwen2", True, dict(dtype="f32")),
    ("qwen2", "qwen2", False, dict(dtype="f16")),
    ("llama", "llama", True, dict(quant="Q8_0")),
    ("llama", "llama", False, dict(quant="Q4_0")),
    ("qwen2", "qwen2", True, dict(quant="Q4_1")),
    ("mistral", "my-mistral", True, dict(quant="Q8_0")),
]


@pytest.mark.parametrize("arch,name,tied,settings", CASES, ids=lambda v: str(v))
def test_bit_equal_to_transformers(make_tiny_dir, tmp_path, arch, name, tied, settings):
    src = make_tiny_dir(arch, tied=tied, name=name)
    out = tmp_path / f"{name}.gguf"
    export_gguf(src, out, GGUFExportConfig(verify=False, **settings))
    ours = load_gguf(GGUFFile(out), torch.float32).eval()
    if name != "mistral":
        assert_same_model(ours, transformers_load(out))
        return
    # general.name "mistral" makes transformers build a mistral config, whose GGUF
    # tensor names it then cannot find in gguf-py; supertiny maps them through the
    # llama row and loads the exact source weights.
    with pytest.raises(NotImplementedError, match="Unknown gguf model_type: mistral"):
        transformers_load(out)
    from transformers import AutoModelForCausalLM

    assert ours.config.model_type == "mistral"
    source = AutoModelForCausalLM.from_pretrained(str(src)).state_dict()
    assert ours.state_dict().keys() == source.keys()
    assert all(torch.equal(t, source[k]) for k, t in ours.state_dict().items())


def test_half_precision_loads_match(make_tiny_dir, tmp_path):
    out = tmp_path / "m.gguf"
    export_gguf(make_tiny_dir("llama", tied=False), out, GGUFExportConfig(dtype="f32", verify=False))
    for dtype in (torch.bfloat16, torch.float16):
        assert_same_model(load_gguf(GGUFFile(out), dtype).eval(), transformers_load(out, dtype))


def test_config_matches_transformers_auto_config(make_tiny_dir, tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "q.gguf"
    export_gguf(make_tiny_dir("qwen2", tied=True), out, GGUFExportConfig(dtype="f32", verify=False))
    theirs = AutoConfig.from_pretrained(str(tmp_path), gguf_file=out.name)
    assert hf_config(GGUFFile(out)).to_dict() == theirs.to_dict()


@pytest.mark.slow
def test_default_teacher_is_bit_equal_to_transformers(teacher_path):
    ours = load_model("default").model
    theirs = transformers_load(teacher_path)
    # load_model aligns special ids with the tokenizer afterwards; compare the rest.
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(ours.config, key, getattr(theirs.config, key))
    assert_same_model(ours, theirs)
