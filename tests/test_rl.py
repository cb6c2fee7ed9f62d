"""supertiny rl on tiny random models: advantages and the loss by hand, a reward moves the policy,
exact resume, clean errors, the CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from supertiny.cli import main
from supertiny.errors import InvalidInputError
from supertiny.stages.transfer.policy import (
    answer_mask,
    group_advantages,
    policy_loss,
    rollout,
    rollout_logits,
    task_reward,
)
from supertiny.stages.transfer.rl import RLConfig, rl
from supertiny.tasks import load_task

from conftest import COLOR_TASK, Killed, kill_at, read_metrics_lines, write_color_task


@pytest.fixture
def setup(tmp_path, make_tiny_dir):
    """A short task, 6 labelled records, a dev file and a tiny student."""
    write_color_task(tmp_path, records=6, dev=1)
    return tmp_path, make_tiny_dir(tied=False, seed=2, name="student")


def _cfg(**kw):
    base = dict(group=3, steps=4, batch_prompts=2, lr=1e-3, max_new_tokens=6, save_every=2, dev_limit=1,
                max_length=256, kl_coef=0.1)
    return RLConfig(**{**base, **kw})


def test_task_reward_is_the_fraction_of_fields_right(tmp_path):
    (tmp_path / "task.toml").write_text(COLOR_TASK)
    task = load_task(tmp_path / "task.toml")
    label = {"color": "red", "bright": True}
    assert task_reward(task, '{"color": "red", "bright": true}', label) == 1.0
    assert task_reward(task, 'sure: {"color": "blue", "bright": true}', label) == 0.5
    assert task_reward(task, '{"color": "pink"}', label) == 0.0
    assert task_reward(task, "red, bright", label) == 0.0  # no JSON at all


def test_group_advantages_by_hand():
    adv = group_advantages([[1.0, 0.0, 0.5], [0.25, 0.25, 0.25]], eps=1e-4)
    std = math.sqrt(((0.5) ** 2 + (0.5) ** 2 + 0.0) / 2)  # the sample std of (1, 0, 0.5): 0.5
    want = [[0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0], [0.0, 0.0, 0.0]]  # an all-equal group: zeros
    assert torch.allclose(adv, torch.tensor(want), atol=1e-6)


def _by_hand(logits, ref, tokens, mask, adv, coef, kl):
    pg = kls = n = 0.0
    for i in range(len(tokens)):
        for t in range(len(tokens[i])):
            if not mask[i][t]:
                continue
            p = [math.exp(x) for x in logits[i][t]]
            q = [math.exp(x) for x in ref[i][t]]
            p = [x / sum(p) for x in p]
            q = [x / sum(q) for x in q]
            a = tokens[i][t]
            pg += -adv[i] * math.log(p[a])
            if kl == "k3":
                d = math.log(q[a]) - math.log(p[a])
                kls += math.exp(d) - d - 1
            else:
                kls += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
            n += 1
    return pg / n + coef * kls / n, pg / n, kls / n


@pytest.mark.parametrize("kl", ["k3", "full"])
def test_policy_loss_by_hand_and_zero_kl_against_itself(kl):
    logits = [[[0.1, 1.0, -0.5], [2.0, 0.0, 0.3]], [[-1.0, 0.5, 0.5], [0.0, 0.0, 1.5]]]
    ref = [[[0.3, 0.2, 0.1], [1.0, 1.0, -1.0]], [[0.0, 0.0, 0.0], [0.5, -0.5, 2.0]]]
    tokens, mask, adv = [[1, 0], [2, 1]], [[1, 1], [1, 0]], [0.7, -1.2]
    loss, parts = policy_loss(torch.tensor(logits), torch.tensor(ref), torch.tensor(tokens), torch.tensor(mask),
                              torch.tensor(adv), 0.3, kl)
    want, pg, kls = _by_hand(logits, ref, tokens, mask, adv, 0.3, kl)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert parts["pg"] == pytest.approx(pg, rel=1e-5) and parts["kl"] == pytest.approx(kls, rel=1e-5) and kls > 0
    _, same = policy_loss(torch.tensor(logits), torch.tensor(logits), torch.tensor(tokens), torch.tensor(mask),
                          torch.tensor(adv), 0.3, kl)
    assert same["kl"] == pytest.approx(0.0, abs=1e-7)


def test_answer_mask_keeps_the_first_eos_and_drops_what_follows():
    got = answer_mask(torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2]]), 2)
    assert got.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_a_reward_for_one_answer_raises_its_log_probability(tiny_tokenizer):
    from conftest import build_tiny_model

    model = build_tiny_model(tied=False, seed=3).train()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # a random head is near uniform over 400 tokens; sharpen it a little
    reference = copy.deepcopy(model).eval()
    prompt = tiny_tokenizer("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
                            add_special_tokens=False)["input_ids"]
    x = torch.tensor([prompt])

    def logp(token):
        with torch.no_grad():
            return torch.log_softmax(model(x).logits[0, -1], -1)[token].item()

    with torch.no_grad():
        probs = torch.softmax(model(x).logits[0, -1], -1)
    target = int(probs.argsort(descending=True)[2])  # a plausible (p ~ 0.06) but not the likeliest first token
    before = logp(target)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(8):
        ro = rollout(model, tiny_tokenizer, [prompt], 16, 1.0, 2, seed=step)
        rewards = (ro.completions[:, 0] == target).float()  # a scripted reward on the sampled tokens
        adv = group_advantages(rewards.view(1, -1)).flatten()
        with torch.no_grad():
            ref = rollout_logits(reference, ro, 1.0)
        loss, _ = policy_loss(rollout_logits(model, ro, 1.0), ref, ro.completions, ro.mask, adv, 0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logp(target) > before + 1.0, (before, logp(target))


def test_rollout_is_deterministic_for_a_seed(tiny_tokenizer):
    from conftest import build_tiny_model

    model = build_tiny_model(tied=False, seed=4)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    prompts = [[5, 6, 7], [8, 9]]
    a, b = (rollout(model, tiny_tokenizer, prompts, 3, 1.0, 5, seed=11) for _ in range(2))
    c = rollout(model, tiny_tokenizer, prompts, 3, 1.0, 5, seed=12)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    assert a.input_ids.shape[0] == 6 and a.attention_mask[3, 0] == 0 == a.attention_mask[5, 0]  # left padding


def test_rl_writes_a_plain_hf_student_withread_metrics_lines(setup):
    tmp, student = setup
    m = rl(student, tmp / "out", tmp / "task.toml", tmp / "data.jsonl", _cfg(steps=2), dev=tmp / "dev.jsonl")
    logs = [r for r in read_metrics_lines(tmp / "out") if "loss" in r]
    assert [r["step"] for r in logs] == [1, 2]
    assert {"reward_mean", "reward_std", "kl", "pg", "tokens_per_s", "rollout_share"} <= set(logs[0])
    assert 0 < m.details["rollout_share"] <= 1
    assert m.stage == "rl" and m.details["steps"] == 2 and m.details["reference"] == "initial student"
    assert m.quality["n"] == 1 and "task_score" in m.quality
    files = {p.name for p in (tmp / "out").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "supertiny.json", "metrics.jsonl",
            "training.png"} <= files and not (tmp / "out.work").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp / "out", use_safetensors=True)


def test_resume_after_interruption_is_bit_identical(setup, make_tiny_dir):
    tmp, student = setup
    teacher = make_tiny_dir(tied=False, seed=5, name="teacher")
    kw = dict(teacher=str(teacher))
    rl(student, tmp / "a", tmp / "task.toml", tmp / "data.jsonl", _cfg(), **kw)
    with pytest.raises(Killed):
        rl(student, tmp / "b", tmp / "task.toml", tmp / "data.jsonl", _cfg(), callbacks=[kill_at(3)], **kw)
    assert (tmp / "b.work" / "checkpoint-2" / "model.safetensors").is_file() and not (tmp / "b").exists()
    with pytest.raises(InvalidInputError, match="pass --resume"):
        rl(student, tmp / "b", tmp / "task.toml", tmp / "data.jsonl", _cfg(), **kw)
    m = rl(student, tmp / "b", tmp / "task.toml", tmp / "data.jsonl", _cfg(), resume=True, **kw)
    assert m.details["reference"] == "teacher"
    a, b = load_file(tmp / "a" / "model.safetensors"), load_file(tmp / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics_lines(tmp / "b") if "loss" in r] == [1, 2, 3, 4]
    s = load_file(student / "model.safetensors")
    assert not all(torch.equal(a[k], s[k]) for k in a)  # it did train


def _half_solved(task, text, label):
    """Every answer to a 'red' prompt gets 1 (a solved prompt: no signal); others get 1 for an even length."""
    return 1.0 if label["color"] == "red" else float(len(text) % 2 == 0)


def test_dynamic_sampling_replaces_solved_groups_and_resumes_exactly(setup):
    tmp, student = setup
    args = (tmp / "task.toml", tmp / "data.jsonl")
    plain = rl(student, tmp / "plain", *args, _cfg(steps=4), reward=_half_solved)
    dyn = rl(student, tmp / "dyn", *args, _cfg(steps=4, resample=4), reward=_half_solved)
    logs = [r for r in read_metrics_lines(tmp / "dyn") if "loss" in r]
    assert all(r["groups_sampled"] >= 2 for r in logs)
    assert dyn.details["informative_share"] > plain.details["informative_share"]
    assert dyn.details["informative_share"] >= 0.75 and dyn.details["groups_sampled_per_step"] > 2
    with pytest.raises(Killed):
        rl(student, tmp / "b", *args, _cfg(steps=4, resample=4), reward=_half_solved, callbacks=[kill_at(3)])
    rl(student, tmp / "b", *args, _cfg(steps=4, resample=4), reward=_half_solved, resume=True)
    a, b = load_file(tmp / "dyn" / "model.safetensors"), load_file(tmp / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InvalidInputError, match="resample: expected an integer >= 0, got -1"):
        _cfg(resample=-1)


def test_bad_data_and_settings_are_one_line_errors(setup):
    tmp, student = setup
    bad = tmp / "bad.jsonl"
    bad.write_text('{"input": "x", "label": {"color": "red", "bright": true}}\n{"input": "y"}\n')
    with pytest.raises(InvalidInputError, match=r"bad.jsonl:2: label: required \(rl rewards"):
        rl(student, tmp / "out", tmp / "task.toml", bad, _cfg())
    bad.write_text('{"input": "x", "label": {"color": "pink", "bright": true}}\n')
    with pytest.raises(InvalidInputError, match=r"bad.jsonl:1: label.color"):
        rl(student, tmp / "out", tmp / "task.toml", bad, _cfg())
    with pytest.raises(InvalidInputError, match="group: expected an integer, at least 2, got 1"):
        _cfg(group=1)
    r = CliRunner().invoke(main, ["rl", str(student), "--task", str(tmp / "task.toml"), "--data", str(bad),
                                  "--out", str(tmp / "o")])
    assert r.exit_code == 2 and r.output.strip().startswith("error: ") and r.output.count("\n") == 1


def test_cli_rl_writes_a_student(setup):
    tmp, student = setup
    r = CliRunner().invoke(main, ["rl", str(student), "--task", str(tmp / "task.toml"), "--data",
                                  str(tmp / "data.jsonl"), "--out", str(tmp / "o"), "--steps", "1", "--group", "2",
                                  "--batch-prompts", "2", "--max-new-tokens", "4", "--kl", "full", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output[r.output.index("{"):])
    assert m["stage"] == "rl" and m["details"]["steps"] == 1 and m["settings"]["kl"] == "full"
    assert m["settings"]["group"] == 2


def test_constrained_rl_rewards_content_not_format(setup):
    """--constrained: every sampled answer is schema-valid, so the reward (the fraction of fields right) is
    never 0 for a format slip; free, the random student's answers are not JSON and earn nothing."""
    tmp, student = setup
    rewards = {}
    for constrained in (False, True):
        out = tmp / f"out-{constrained}"
        rl(student, out, tmp / "task.toml", tmp / "data.jsonl", _cfg(steps=1, max_new_tokens=60, group=2,
                                                                      constrained=constrained))
        rewards[constrained] = [r["reward_mean"] for r in read_metrics_lines(out) if "loss" in r]
    assert rewards[False] == [0.0] and rewards[True][0] > 0


def test_a_trimmed_student_takes_its_teacher_as_reference_through_its_vocabulary(setup, make_tiny_dir):
    from supertiny.stages.trim.stage import TrimVocabConfig, trim_vocab

    tmp, student = setup
    teacher = make_tiny_dir(tied=False, seed=5, name="teacher")
    trim_vocab(student, tmp / "trimmed", TrimVocabConfig(keep=0), task=tmp / "task.toml", data=tmp / "data.jsonl")
    m = rl(tmp / "trimmed", tmp / "out", tmp / "task.toml", tmp / "data.jsonl", _cfg(steps=2, save_every=0),
           teacher=str(teacher))
    logs = [r for r in read_metrics_lines(tmp / "out") if "loss" in r]
    assert m.details["reference"] == "teacher" and len(logs) == 2
    assert all(math.isfinite(r["kl"]) for r in logs) and (tmp / "out" / "vocab_map.json").is_file()
