"""KD losses: hand-computed values on small tensors, zero when student = teacher, temperature scaling."""

from __future__ import annotations

import math

import pytest
import torch

from supertiny.errors import InvalidInputError
from supertiny.stages.transfer.losses import LOSSES, get_loss, mixed_loss, teacher_topk, topk_kd_loss

P = [0.5, 0.3, 0.2]  # teacher
Q = [0.2, 0.2, 0.6]  # student


def _lp(xs):
    return torch.log(torch.tensor([xs], dtype=torch.float64))


def test_forward_and_reverse_kl_match_hand_values():
    fkl = sum(p * math.log(p / q) for p, q in zip(P, Q, strict=True))
    rkl = sum(q * math.log(q / p) for p, q in zip(P, Q, strict=True))
    assert float(LOSSES["fkl"](_lp(Q), _lp(P), 0.5)[0]) == pytest.approx(fkl, abs=1e-12)
    assert float(LOSSES["rkl"](_lp(Q), _lp(P), 0.5)[0]) == pytest.approx(rkl, abs=1e-12)
    assert fkl == pytest.approx(0.3600624, abs=1e-6)  # 0.5 ln 2.5 + 0.3 ln 1.5 + 0.2 ln(1/3)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_hand_value(beta):
    m = [beta * p + (1 - beta) * q for p, q in zip(P, Q, strict=True)]
    want = beta * sum(p * math.log(p / x) for p, x in zip(P, m, strict=True)) + (1 - beta) * sum(
        q * math.log(q / x) for q, x in zip(Q, m, strict=True))
    assert float(LOSSES["jsd"](_lp(Q), _lp(P), beta)[0]) == pytest.approx(want, abs=1e-12)


def test_jsd_half_is_symmetric_and_vanishes_at_the_ends():
    assert float(LOSSES["jsd"](_lp(Q), _lp(P), 0.5)[0]) == pytest.approx(float(LOSSES["jsd"](_lp(P), _lp(Q), 0.5)[0]))
    assert float(LOSSES["jsd"](_lp(Q), _lp(P), 0.0)[0]) == 0.0
    assert float(LOSSES["jsd"](_lp(Q), _lp(P), 1.0)[0]) == 0.0


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_zero_when_student_equals_teacher(name, temperature):
    torch.manual_seed(0)
    logits = torch.randn(5, 50) * 3
    values, indices = teacher_topk(logits, 8, temperature)
    loss = topk_kd_loss(logits, values, indices, name, temperature)
    assert loss.shape == (5,)
    assert loss.abs().max().item() < 1e-6


def test_tail_bucket_and_temperature_by_hand():
    # vocab 4, top-2: teacher logits [2, 1, 0, 0], student [0, 0, 1, 1]; T = 2
    t_logits = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    s_logits = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    T = 2.0
    values, indices = teacher_topk(t_logits, 2, T)
    assert indices.tolist() == [[0, 1]]

    def soft(xs):
        e = [math.exp(x / T) for x in xs]
        return [v / sum(e) for v in e]

    p, q = soft([2, 1, 0, 0]), soft([0, 0, 1, 1])
    p3 = [p[0], p[1], p[2] + p[3]]  # tokens 0, 1, tail
    q3 = [q[0], q[1], q[2] + q[3]]
    want = T**2 * sum(a * math.log(a / b) for a, b in zip(p3, q3, strict=True))
    got = float(topk_kd_loss(s_logits, values, indices, "fkl", T)[0])
    assert got == pytest.approx(want, rel=1e-5)


def test_mixed_loss_is_alpha_weighted():
    torch.manual_seed(1)
    s, t = torch.randn(4, 20), torch.randn(4, 20)
    labels = torch.tensor([1, 2, 3, 4])
    values, indices = teacher_topk(t, 5)
    ce = torch.nn.functional.cross_entropy(s, labels)
    kd = topk_kd_loss(s, values, indices, "rkl").mean()
    total, parts = mixed_loss(s, labels, values, indices, "rkl", 0.25, 1.0, 0.5)
    assert float(total) == pytest.approx(float(0.25 * kd + 0.75 * ce), rel=1e-6)
    assert parts["ce"] == pytest.approx(float(ce), rel=1e-6)
    sft, _ = mixed_loss(s, labels, None, None, "sft", 0.25, 1.0, 0.5)
    assert float(sft) == pytest.approx(float(ce), rel=1e-6)


def test_unknown_loss_lists_the_known_ones():
    with pytest.raises(InvalidInputError, match="known: fkl, jsd, rkl"):
        get_loss("kl")
