"""The teacher top-k cache: exact round trip, keys, and rows that match the teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supertiny.errors import InvalidInputError
from supertiny.stages.transfer.kdcache import TopKCache, batch_rows, build_cache, cache_key, examples_hash, teacher_rows


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_round_trip_is_exact(tmp_path, dtype):
    rng = np.random.default_rng(0)
    c = TopKCache(rng.normal(size=(7, 4)).astype(dtype), rng.integers(0, 49152, (7, 4)).astype(np.int32),
                  np.array([0, 3, 3, 7], np.int64), {"teacher_sha256": "ab"})
    c.save(tmp_path / "c.safetensors")
    back = TopKCache.load(tmp_path / "c.safetensors")
    assert back.values.dtype == dtype and back.indices.dtype == np.int32
    assert np.array_equal(back.values, c.values) and np.array_equal(back.indices, c.indices)
    assert back.offsets.tolist() == [0, 3, 3, 7] and back.meta == {"teacher_sha256": "ab"}
    assert back.rows(1)[0].shape == (0, 4) and np.array_equal(back.rows(2)[1], c.indices[3:7])


def test_not_a_cache_is_a_clear_error(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(InvalidInputError, match="not a version-1 supertiny KD cache"):
        TopKCache.load(tmp_path / "x.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(InvalidInputError, match="unreadable KD cache"):
        TopKCache.load(tmp_path / "junk.safetensors")


def test_key_changes_with_every_input():
    base = cache_key("t", "d", 32, 1.0, "float16")
    assert len(base) == 24
    others = {cache_key("u", "d", 32, 1.0, "float16"), cache_key("t", "e", 32, 1.0, "float16"),
              cache_key("t", "d", 16, 1.0, "float16"), cache_key("t", "d", 32, 2.0, "float16"),
              cache_key("t", "d", 32, 1.0, "float32"), cache_key("t", "d", 32, 1.0, "float16", "m")}
    assert base not in others and len(others) == 6
    assert examples_hash([([1, 2, 3], 2)]) != examples_hash([([1, 2, 3], 1)])


def test_rows_are_the_teachers_top_k_on_answer_tokens():
    from conftest import build_tiny_model

    model = build_tiny_model(tied=False, seed=3)
    examples = [([5, 6, 7, 8, 9], 3), ([10, 11, 12], 1)]
    c = build_cache(model, examples, k=4, temperature=2.0, dtype="float32")
    assert c.offsets.tolist() == [0, 2, 4] and c.values.shape == (4, 4)
    with torch.inference_mode():
        full = model(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits[0, 2:4]  # predicting ids 8 and 9
    assert torch.allclose(teacher_rows(model, examples[0][0], 3), full, atol=1e-5)
    want = torch.log_softmax(full / 2.0, -1).topk(4, -1)
    assert np.allclose(c.values[:2], want.values.numpy(), atol=1e-5)
    assert c.indices[:2].tolist() == want.indices.tolist()


def test_the_key_names_a_bfloat16_teacher_and_keeps_float32_names():
    base = cache_key("t", "d", 32, 1.0, "float16", "m")
    assert cache_key("t", "d", 32, 1.0, "float16", "m", compute="float32") == base
    assert cache_key("t", "d", 32, 1.0, "float16", "m", compute="bfloat16") != base
    assert cache_key("t", "d", 32, 1.0, "float16", compute="bfloat16") != cache_key("t", "d", 32, 1.0, "float16")


def test_batches_give_each_examples_own_rows_in_order():
    """Left-padded batches of mixed lengths (and batch limits that split them) give every example the rows of its
    own forward pass, in the examples' order; bfloat16 autocast stays close to them."""
    from conftest import build_tiny_model

    model = build_tiny_model(tied=False, seed=4)
    rng = np.random.default_rng(1)
    examples = []
    for n, p in [(9, 6), (4, 1), (12, 3), (6, 5), (9, 8), (3, 2), (7, 7)]:  # the last one has no answer token
        examples.append((rng.integers(3, 200, n).tolist(), p))
    single = build_cache(model, examples, k=5, temperature=1.0, dtype="float32", max_batch=1)
    for max_batch, max_tokens in [(16, 4096), (3, 4096), (16, 20)]:
        c = build_cache(model, examples, k=5, temperature=1.0, dtype="float32", max_batch=max_batch,
                        max_tokens=max_tokens)
        assert c.offsets.tolist() == single.offsets.tolist() == [0, 3, 6, 15, 16, 17, 18, 18]
        assert np.allclose(c.values, single.values, atol=1e-5) and np.array_equal(c.indices, single.indices)
    for (ids, p), rows in zip(examples, batch_rows(model, examples), strict=True):
        assert torch.allclose(rows, teacher_rows(model, ids, p), atol=1e-5)
    low = build_cache(model, examples, k=5, temperature=1.0, dtype="float32", bf16=True)
    assert low.offsets.tolist() == single.offsets.tolist() and np.allclose(low.values, single.values, atol=0.1)
