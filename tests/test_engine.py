"""One engine API over three backends: parity on a tiny model, and the text level
(chat template, detokenization, stop strings, finish reasons, cancellation)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from supertiny.errors import InvalidInputError
from supertiny.runtime.engine import ENGINES, IncrementalDetokenizer, check_messages, open_engine
from supertiny.runtime.sampling import Sampling

from conftest import ScriptedEngine, build_tiny_model, train_tiny_tokenizer

CHAT = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Who is Alice?"}]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The same tiny model as a Hugging Face directory, an F32 GGUF file and an fp32 ONNX export."""
    from supertiny.export.gguf import GGUFExportConfig, export_gguf
    from supertiny.export.onnx import OnnxExportConfig, export_onnx

    root = tmp_path_factory.mktemp("engines")
    src = root / "hf"
    build_tiny_model(seed=3).save_pretrained(src)
    train_tiny_tokenizer().save_pretrained(src)
    export_gguf(src, root / "m.gguf", GGUFExportConfig(dtype="f32", verify=False))
    export_onnx(src, root / "onnx", OnnxExportConfig(verify=False))
    return {"torch": src, "llama.cpp": root / "m.gguf", "onnxruntime": root / "onnx"}


@pytest.fixture(scope="module")
def engines(artifacts):
    opened = {name: open_engine(path, threads=2, n_ctx=256, logits=True) for name, path in artifacts.items()}
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


def test_open_engine_errors(artifacts):
    with pytest.raises(InvalidInputError, match="unknown backend 'vllm'"):
        open_engine(artifacts["torch"], "vllm")
    with pytest.raises(InvalidInputError, match="llama.cpp backend runs GGUF files"):
        open_engine(artifacts["torch"], "llama.cpp")
    with pytest.raises(InvalidInputError, match="threads must be >= 1"):
        open_engine(artifacts["torch"], threads=0)


@pytest.mark.parametrize("messages, match", [
    ([], "messages is empty"),
    (["hi"], r"messages\[0\] must be an object"),
    ([{"role": "robot", "content": "x"}], r"messages\[0\].role"),
    ([{"role": "user", "content": 3}], r"messages\[0\].content must be a string"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], "only text parts"),
])
def test_bad_messages(messages, match):
    with pytest.raises(InvalidInputError, match=match):
        check_messages(messages)


def test_text_parts_and_developer_role():
    got = check_messages([{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                             {"type": "text", "text": "b"}]}])
    assert got == [{"role": "system", "content": "ab"}]


# -- the text level on scripted tokens: no backend, exact expectations ---------------------


class Scripted(ScriptedEngine):
    """Plays its script back, then eos; notes whether the text level closed it early."""

    def __init__(self, tokenizer, script, n_ctx=1000):
        super().__init__(tokenizer, script, n_ctx)
        self.closed_early = False

    def stream(self, prompt_ids, max_new_tokens, sampling=None, stop_ids=None):
        stop = set(stop_ids or ())
        try:
            for i, t in enumerate([*self.script, self.tok.eos_token_id]):
                if i == max_new_tokens or t in stop:
                    return
                yield t
        except GeneratorExit:
            self.closed_early = True
            raise


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer()


def test_stop_strings_are_cut_and_never_leak(tok):
    script = tok("the Queen said off with her head", add_special_tokens=False)["input_ids"]
    e = Scripted(tok, script)
    chunks = list(e.stream_text("x", max_tokens=100, stop=["with her"]))
    assert "".join(c.text for c in chunks) == "the Queen said off "
    assert chunks[-1].finish_reason == "stop" and e.closed_early
    # a stop string that starts in one token and ends in a later one
    for c in chunks:
        assert "with" not in c.text
    # held back text comes out once it can no longer be a stop string
    out = e.complete("x", max_tokens=100, stop=["said offx"])
    assert out.text == "the Queen said off with her head" and out.finish_reason == "stop"  # eos


def test_finish_reasons(tok):
    script = tok("down the rabbit hole", add_special_tokens=False)["input_ids"]
    assert Scripted(tok, script).complete("x", max_tokens=2).finish_reason == "length"
    assert Scripted(tok, script).complete("x", max_tokens=100).finish_reason == "stop"  # eos, not yielded
    full = Scripted(tok, script).complete("x", max_tokens=100)
    assert full.token_ids == script and full.text == "down the rabbit hole"
    ignored = Scripted(tok, script).complete("x", max_tokens=100, ignore_eos=True)
    assert ignored.token_ids == [*script, tok.eos_token_id]
    cancel = threading.Event()
    cancel.set()
    e = Scripted(tok, script)
    last = list(e.stream_text("x", max_tokens=100, cancel=cancel))[-1]
    assert last.finish_reason == "cancelled" and e.closed_early


def test_multibyte_characters_are_never_split(tok):
    text = "Alice said: héllo 🐇 — «fin»"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [IncrementalDetokenizer(tok)]
    d = pieces[0]
    out = [d.add(t) for t in ids]
    assert "".join(out) + d.flush() == text
    assert all("\ufffd" not in piece for piece in out)
    assert len(ids) > len(text.encode("utf-8")) // 4  # byte-level tokens really do split the emoji
    chunks = list(Scripted(tok, ids).stream_text("x", max_tokens=100))
    assert "".join(c.text for c in chunks) == text


def test_a_gguf_process_keeps_torch_out(artifacts):
    import subprocess
    import sys

    code = ("import sys; from supertiny.runtime.engine import keep_torch_out, open_engine; "
            "print(keep_torch_out(sys.argv[1])); e = open_engine(sys.argv[1], n_ctx=64); "
            "print(e.complete('Alice', max_tokens=3, ignore_eos=True).completion_tokens, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(artifacts["llama.cpp"])], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "3", "False"]
    out = subprocess.run([sys.executable, "-c", code.split(";")[0] + "; from supertiny.runtime.engine import "
                          "keep_torch_out; print(keep_torch_out(sys.argv[1]))", str(artifacts["torch"])],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]  # a Hugging Face directory runs in torch
