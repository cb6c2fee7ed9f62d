"""The llama.cpp engine on a tiny exported model: logits, streaming, stops, validation."""

from __future__ import annotations

import numpy as np
import pytest

from supertiny.errors import InvalidGGUFError, InvalidInputError, NotAModelError
from supertiny.runtime.engines.base import open_engine
from supertiny.runtime.engines.llamacpp import LlamaCppEngine
from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf


@pytest.fixture
def tiny_gguf(make_tiny_dir, tmp_path):
    src = make_tiny_dir()
    out = tmp_path / "m.gguf"
    export_gguf(src, out, GGUFExportConfig(dtype="f32", verify=False))
    return src, out


def test_stream_counts_and_stops(tiny_gguf):
    _, path = tiny_gguf
    engine = LlamaCppEngine(path, n_ctx=128)
    prompt = engine.tokenize("Alice was beginning")
    greedy = engine.generate(prompt, 12, stop_ids=[])
    assert len(greedy) == 12
    assert engine.generate(prompt, 12, stop_ids=[]) == greedy  # greedy is deterministic
    assert list(engine.stream(prompt, 5, stop_ids=[])) == greedy[:5]
    assert engine.generate(prompt, 12, stop_ids=[greedy[3]]) == greedy[: greedy.index(greedy[3])]
    assert engine.generate(prompt, 0) == []


def test_logits_match_torch_greedy(tiny_gguf):
    src, path = tiny_gguf
    cpp = open_engine(path, n_ctx=128, logits=True)
    ref = open_engine(src)
    assert cpp.name == "llama.cpp" and ref.name == "torch"
    ids = cpp.tokenizer("Alice was beginning to get very tired")["input_ids"]
    np.testing.assert_allclose(cpp.logits(ids), ref.logits(ids), rtol=1e-3, atol=1e-3)
    assert list(cpp.generate(ids, 8)) == list(ref.generate(ids, 8))


def test_logits_need_logits_all_and_fit_the_context(tiny_gguf):
    _, path = tiny_gguf
    with pytest.raises(InvalidInputError, match="logits=True"):
        LlamaCppEngine(path, n_ctx=64).logits([1, 2, 3])
    with pytest.raises(InvalidInputError, match="exceeds n_ctx"):
        LlamaCppEngine(path, n_ctx=64, logits_all=True).logits(list(range(3, 80)))


def test_engine_validates_before_native_code(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(InvalidGGUFError):
        LlamaCppEngine(bad)


def test_a_file_llama_cpp_refuses_is_a_one_line_error(tmp_path):
    import gguf

    path = tmp_path / "incomplete.gguf"  # valid GGUF, but no norm epsilon and no layers
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_context_length(16)
    w.add_head_count(2)
    w.add_feed_forward_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(NotAModelError, match="llama.cpp cannot load .*key not found in model"):
        LlamaCppEngine(path)


def test_torch_backend_keeps_dtype(make_tiny_dir):
    b = open_engine(make_tiny_dir(), "torch", dtype="bfloat16")
    assert b.info["dtype"] == "bfloat16"
    out = b.logits([1, 2, 3])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, 400)
