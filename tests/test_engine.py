"""One engine API over three backends: parity on a tiny model, prompt and budget checks,
the backend registry. The text level is tested in test_text.py, chat messages in
test_chat.py, the process guard in test_process.py."""

from __future__ import annotations

import numpy as np
import pytest

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.base import ENGINES, open_engine
from supertiny.runtime.engines.sampling import Sampling

CHAT = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Who is Alice?"}]


@pytest.fixture(scope="module")
def engines(tiny_exports):
    opened = {name: open_engine(path, threads=2, n_ctx=256, logits=True) for name, path in tiny_exports.items()}
    yield opened
    for e in opened.values():
        e.close()


def test_auto_picks_the_native_backend(engines):
    assert {name: e.name for name, e in engines.items()} == {n: n for n in engines}
    assert set(ENGINES) >= {"torch", "llama.cpp", "onnxruntime"}
    for e in engines.values():
        assert e.info["backend"].startswith(e.name) and e.info["n_ctx"] == 256


def test_same_greedy_tokens_and_logits_on_every_backend(engines):
    ref = engines["torch"]
    ids = ref.encode("Alice was beginning to get very tired of sitting")
    want = ref.generate(ids, 24, stop_ids=[])
    for name, e in engines.items():
        assert e.encode("Alice was beginning to get very tired of sitting") == ids, name
        assert e.generate(ids, 24, stop_ids=[]) == want, name
        # float32 everywhere: llama.cpp and onnxruntime reorder sums, nothing more
        np.testing.assert_allclose(e.logits(ids), ref.logits(ids), atol=2e-3, rtol=0, err_msg=name)


def test_same_chat_reply_on_every_backend(engines):
    replies = {name: e.complete(CHAT, max_tokens=16, ignore_eos=True) for name, e in engines.items()}
    ref = replies["torch"]
    assert ref.prompt_tokens == len(engines["torch"].chat_ids(CHAT)) and ref.completion_tokens == 16
    for name, r in replies.items():
        assert (r.text, r.token_ids, r.finish_reason) == (ref.text, ref.token_ids, "length"), name
        assert r.ttft_s is not None and 0 < r.ttft_s <= r.total_s


def test_chunks_add_up_to_the_decoded_reply(engines):
    e = engines["llama.cpp"]
    chunks = list(e.stream_text("The Rabbit", max_tokens=20, ignore_eos=True))
    ids = [t for c in chunks for t in c.token_ids]
    assert len(ids) == 20 and [c.finish_reason for c in chunks][-1] == "length"
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == e.tokenizer.decode(ids)


def test_sampling_is_seeded_and_greedy_at_top_k_1(engines):
    for name, e in engines.items():
        s = Sampling(temperature=1.0, top_k=20, top_p=0.9, seed=7)
        ids = e.encode("Alice")
        assert e.generate(ids, 12, sampling=s, stop_ids=[]) == e.generate(ids, 12, sampling=s, stop_ids=[]), name
        one = Sampling(temperature=1.0, top_k=1, seed=3)
        assert e.generate(ids, 12, sampling=one, stop_ids=[]) == e.generate(ids, 12, stop_ids=[]), name


def test_prompt_and_budget_errors(engines):
    e = engines["onnxruntime"]
    with pytest.raises(InvalidInputError, match="context holds 256"):
        list(e.stream_text(list(range(3, 300)), max_tokens=4))
    with pytest.raises(InvalidInputError, match="empty"):
        list(e.stream_text("", max_tokens=4))
    with pytest.raises(InvalidInputError, match="max_tokens"):
        list(e.stream_text("Hi", max_tokens=-1))
    with pytest.raises(InvalidInputError, match="prompt is a string"):
        e.prompt_ids([1.5, 2])
    assert list(e.stream_text("Hi", max_tokens=0))[-1].finish_reason == "length"
    # the context cuts max_tokens: 250 prompt tokens leave 6
    assert e.complete(list(range(3, 253)), max_tokens=50, ignore_eos=True).completion_tokens == 6


def test_open_engine_errors(tiny_exports):
    artifacts = tiny_exports
    with pytest.raises(InvalidInputError, match="unknown backend 'vllm'"):
        open_engine(artifacts["torch"], "vllm")
    with pytest.raises(InvalidInputError, match="llama.cpp backend runs GGUF files"):
        open_engine(artifacts["torch"], "llama.cpp")
    with pytest.raises(InvalidInputError, match="threads must be >= 1"):
        open_engine(artifacts["torch"], threads=0)
