"""The measuring stick, checked against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from supertiny import evaluate as ev
from supertiny.errors import InvalidInputError

from conftest import build_tiny_model


@pytest.mark.parametrize("n", [2, 3, 7, 64, 65, 100, 513])
@pytest.mark.parametrize("window,stride", [(2, 1), (4, 2), (8, 8), (16, 5), (32, 31), (512, 256)])
def test_windows_score_every_token_once(n, window, stride):
    scored = []
    for begin, end, first in ev.windows(n, window, stride):
        assert 0 <= begin < first <= end <= n
        assert end - begin <= window
        scored.extend(range(first, end))
    assert scored == list(range(1, n))


def test_windows_keep_context_after_the_first():
    for begin, _end, first in list(ev.windows(1000, 64, 16))[1:]:
        assert first - begin >= 64 - 16
    for begin, _end, first in list(ev.windows(1000, 64, 64))[1:]:
        assert first - begin == 1


@pytest.mark.parametrize("window,stride", [(1, 1), (8, 0), (8, 9), (8, -1)])
def test_windows_reject_bad_options(window, stride):
    with pytest.raises(InvalidInputError):
        list(ev.windows(10, window, stride))


def direct_nll(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    lp = torch.log_softmax(logits.double(), -1)
    return -lp[:-1].gather(1, torch.tensor(ids[1:])[:, None]).sum().item() / (len(ids) - 1)


def test_perplexity_equals_direct_computation_when_one_window_covers_the_text():
    model = build_tiny_model()
    ids = torch.randint(0, 400, (50,), generator=torch.Generator().manual_seed(1)).tolist()
    score = ev.perplexity(ev.torch_logits(model), ids, window=64, stride=32)
    expected = direct_nll(model, ids)
    assert score.tokens_scored == 49 and score.tokens == 50
    assert score.nll_mean == pytest.approx(expected, rel=1e-5)
    assert score.perplexity == pytest.approx(math.exp(expected), rel=1e-5)


def test_perplexity_sums_the_same_targets_across_strides():
    """With a context-free model (logits depend only on the current token), every window
    layout gives the same NLL: proves each target is scored once, with the right row."""
    table = torch.randn(400, 400, generator=torch.Generator().manual_seed(0))

    def bigram(ids):
        return table[torch.tensor(list(ids))]

    ids = torch.randint(0, 400, (300,), generator=torch.Generator().manual_seed(2)).tolist()
    lp = torch.log_softmax(table.double(), -1)
    expected = -sum(lp[a, b].item() for a, b in zip(ids[:-1], ids[1:], strict=True)) / 299
    for window, stride in [(300, 300), (64, 64), (64, 16), (10, 3), (2, 1)]:
        assert ev.perplexity(bigram, ids, window, stride).nll_mean == pytest.approx(expected, rel=1e-6)


def test_perplexity_accepts_numpy_logits_and_reports_progress():
    calls = []
    uniform = lambda ids: np.zeros((len(ids), 16), dtype=np.float32)  # noqa: E731
    score = ev.perplexity(uniform, list(range(10)), window=4, stride=2, progress=lambda d, t: calls.append((d, t)))
    assert score.perplexity == pytest.approx(16.0)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_wrongly_shaped_backend_is_reported():
    with pytest.raises(InvalidInputError, match="shape"):
        ev.perplexity(lambda ids: torch.zeros(len(ids) - 1, 8), [1, 2, 3])


def test_agreement_of_a_model_with_itself_is_perfect():
    model = build_tiny_model()
    ids = torch.randint(0, 400, (80,), generator=torch.Generator().manual_seed(3)).tolist()
    fn = ev.torch_logits(model)
    a = ev.agreement(fn, fn, ids, window=32, stride=16)
    assert a.top1_agreement == 1.0
    assert a.kl_mean == pytest.approx(0.0, abs=1e-6)
    assert a.student.perplexity == pytest.approx(a.teacher.perplexity)


def test_agreement_kl_has_the_teacher_first():
    """KL(teacher||student) against a hand computation; the reverse direction differs."""
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    teacher = lambda ids: p.log().expand(len(ids), 3)  # noqa: E731
    student = lambda ids: q.log().expand(len(ids), 3)  # noqa: E731
    a = ev.agreement(teacher, student, [0, 1, 2, 0, 1])
    forward = float((p * (p / q).log()).sum())
    backward = float((q * (q / p).log()).sum())
    assert a.kl_mean == pytest.approx(forward, rel=1e-5)
    assert abs(forward - backward) > 0.04
    assert a.top1_agreement == 0.0  # argmax 0 vs argmax 2


def test_agreement_counts_disagreements():
    base = torch.eye(4)
    teacher = lambda ids: base[torch.tensor(list(ids))] * 5  # noqa: E731
    flipped = lambda ids: base[(torch.tensor(list(ids)) + torch.tensor([0, 1] * 10)[: len(ids)]) % 4] * 5  # noqa: E731
    a = ev.agreement(teacher, flipped, list(range(4)) * 2 + [0, 1], window=10, stride=10)
    # positions 0..8 predict tokens 1..9; the student is shifted on odd positions
    assert a.top1_agreement == pytest.approx(5 / 9)


def test_agreement_rejects_different_vocabularies():
    with pytest.raises(InvalidInputError, match="vocabularies differ"):
        ev.agreement(lambda ids: torch.zeros(len(ids), 8), lambda ids: torch.zeros(len(ids), 9), [1, 2, 3])


def test_read_text_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="no such text file"):
        ev.read_text(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        ev.read_text(tmp_path / "bin.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InvalidInputError, match="empty"):
        ev.read_text(tmp_path / "empty.txt")


def test_bundled_corpus_is_real_text_with_its_provenance():
    text = ev.read_text(ev.default_corpus_path())
    assert text.startswith("CHAPTER I.") and "Alice" in text and len(text) > 30_000
    readme = (ev.default_corpus_path().parent / "README.md").read_text()
    assert "public domain" in readme.lower()


def test_tokenize_text_counts_and_limits(tiny_tokenizer):
    ids = ev.tokenize_text(tiny_tokenizer, "Alice was beginning to get very tired")
    assert ids == tiny_tokenizer("Alice was beginning to get very tired")["input_ids"]
    assert len(ev.tokenize_text(tiny_tokenizer, "Alice " * 50, max_tokens=7)) == 7
    with pytest.raises(InvalidInputError):
        ev.tokenize_text(tiny_tokenizer, "a")


def test_generate_applies_the_chat_template(tiny_tokenizer):
    ids = ev.build_prompt(tiny_tokenizer, "Hi")
    assert tiny_tokenizer.decode(ids) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    model = build_tiny_model()
    greedy = ev.torch_generate(model, tiny_tokenizer)
    out = ev.generate(greedy, tiny_tokenizer, ["Hi", "Who are you?"], max_new_tokens=5)
    assert [g.prompt for g in out] == ["Hi", "Who are you?"]
    for g in out:
        assert 0 <= g.new_tokens <= 5 and g.seconds > 0 and isinstance(g.completion, str)
    # Greedy is deterministic.
    again = ev.generate(greedy, tiny_tokenizer, ["Hi"], max_new_tokens=5)
    assert again[0].completion == out[0].completion
