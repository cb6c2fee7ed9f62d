"""The text level on scripted tokens, no backend and exact expectations: detokenization,
stop strings, finish reasons, cancellation."""

from __future__ import annotations

import threading

import pytest

from supertiny.runtime.engines.text import IncrementalDetokenizer, find_stop, held_back

from conftest import ScriptedEngine, train_tiny_tokenizer


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




def test_stop_string_search_and_hold_back():
    assert find_stop("off with her head", ["her", "with"]) == 4 and find_stop("abc", ["x"]) is None
    assert held_back("the Queen said wi", ["with her"]) == 2  # "wi" may become "with her"
    assert held_back("the Queen said", ["with her"]) == 0
    assert held_back("abab", ["abc", "babx"]) == 3  # the longest prefix that could still match
