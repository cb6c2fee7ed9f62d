"""supertiny distill on tiny random models: KD moves the student, exact resume, 2-process DDP, clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from supertiny.cli import main
from supertiny.errors import InvalidInputError
from supertiny.stages.transfer.distill import DistillConfig, distill

from conftest import Killed, kill_at, read_metrics_lines, write_color_task

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup(tmp_path, make_tiny_dir):
    """A short task, 8 labelled records, a dev file, a tiny teacher and a different tiny student."""
    write_color_task(tmp_path, records=8, dev=2)
    teacher = make_tiny_dir(tied=False, seed=1, name="teacher")
    student = make_tiny_dir(tied=False, seed=2, name="student")
    return tmp_path, teacher, student


def _cfg(**kw):
    base = dict(loss="fkl", alpha=1.0, steps=6, batch_size=2, lr=3e-3, save_every=2, dev_limit=1, max_length=256)
    return DistillConfig(**{**base, **kw})


def test_kd_moves_the_student_toward_the_teacher(setup):
    tmp, teacher, student = setup
    m = distill(student, tmp / "out", tmp / "task.toml", tmp / "data.jsonl", _cfg(steps=8), teacher=str(teacher),
                dev=tmp / "dev.jsonl")
    kd = [r["kd"] for r in read_metrics_lines(tmp / "out") if "kd" in r]
    assert len(kd) == 8 and kd[-1] < 0.7 * kd[0], kd
    assert m.stage == "distill" and m.details["steps"] == 8 and m.details["cache"]["k"] == 32
    assert m.details["cache"]["bytes_per_token"] < 400  # 32 x (2 + 4) bytes plus the header
    assert {"task_score", "top1_agreement", "kl_mean"} <= set(m.quality)
    files = {p.name for p in (tmp / "out").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "supertiny.json",
            "metrics.jsonl", "training.png"} <= files
    assert not (tmp / "out.work").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp / "out", use_safetensors=True)  # a plain HF directory


def test_resume_after_interruption_is_bit_identical(setup):
    tmp, teacher, student = setup
    cache = tmp / "cache"
    distill(student, tmp / "a", tmp / "task.toml", tmp / "data.jsonl", _cfg(), teacher=str(teacher), cache_dir=cache)
    with pytest.raises(Killed):
        distill(student, tmp / "b", tmp / "task.toml", tmp / "data.jsonl", _cfg(), teacher=str(teacher),
                cache_dir=cache, callbacks=[kill_at(3)])
    assert (tmp / "b.work" / "checkpoint-2" / "model.safetensors").is_file() and not (tmp / "b").exists()
    with pytest.raises(InvalidInputError, match="pass --resume"):
        distill(student, tmp / "b", tmp / "task.toml", tmp / "data.jsonl", _cfg(), teacher=str(teacher),
                cache_dir=cache)
    with pytest.raises(InvalidInputError, match="other settings.*lr"):
        distill(student, tmp / "b", tmp / "task.toml", tmp / "data.jsonl", _cfg(lr=1e-3), teacher=str(teacher),
                cache_dir=cache, resume=True)
    m = distill(student, tmp / "b", tmp / "task.toml", tmp / "data.jsonl", _cfg(), teacher=str(teacher),
                cache_dir=cache, resume=True)
    assert "build_seconds" not in m.details["cache"]  # the cache was reused, not rebuilt
    a, b = load_file(tmp / "a" / "model.safetensors"), load_file(tmp / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics_lines(tmp / "b") if "loss" in r] == [1, 2, 3, 4, 5, 6]
    s = load_file(student / "model.safetensors")
    assert not all(torch.equal(a[k], s[k]) for k in a)  # it did train


def test_tokenizer_mismatch_is_one_clear_error(setup, tiny_tokenizer):
    tmp, teacher, student = setup
    tok = tiny_tokenizer.__class__.from_pretrained(teacher)
    tok.add_tokens(["<extra_token>"])
    tok.save_pretrained(teacher)
    with pytest.raises(InvalidInputError, match="use different tokenizers .401 vs 400 tokens"):
        distill(student, tmp / "out", tmp / "task.toml", tmp / "data.jsonl", _cfg(), teacher=str(teacher))


def test_bad_data_gives_file_and_line(setup):
    tmp, teacher, student = setup
    bad = tmp / "bad.jsonl"
    runs = {
        "": "holds no records",
        '{"input": "x", "label": {"color": "red", "bright": true}}\n{"input": "y", \n': r"bad.jsonl:2: not valid JSON",
        '{"input": "x"}\n': r"bad.jsonl:1: needs \"response\"",
        '{"input": "x", "label": {"color": "pink", "bright": true}}\n': r"bad.jsonl:1: label.color",
        '{"input": "x", "response": null}\n': "none has a response",
    }
    for text, match in runs.items():
        bad.write_text(text)
        with pytest.raises(InvalidInputError, match=match):
            distill(student, tmp / "out", tmp / "task.toml", bad, _cfg(loss="sft"))
    long = json.dumps({"input": "word " * 300, "label": {"color": "red", "bright": True}})
    bad.write_text(long + "\n")
    with pytest.raises(InvalidInputError, match=r"all 1 are longer than --max-length 256 \(first: .*bad.jsonl:1"):
        distill(student, tmp / "out", tmp / "task.toml", bad, _cfg(loss="sft"))
    # a long example among good ones is skipped and counted
    bad.write_text((tmp / "data.jsonl").read_text() + long + "\n")
    m = distill(student, tmp / "out", tmp / "task.toml", bad, _cfg(loss="sft", steps=1, save_every=0))
    assert m.details["data"]["too_long"] == 1 and "skipped 1 examples longer" in m.notes[0]


def test_kd_needs_a_teacher_and_cli_errors_are_one_line(setup):
    tmp, teacher, student = setup
    r = CliRunner().invoke(main, ["distill", str(student), "--task", str(tmp / "task.toml"), "--data",
                                  str(tmp / "data.jsonl"), "--out", str(tmp / "o"), "--loss", "jsd"])
    assert r.exit_code == 2 and r.output.strip() == "error: --loss jsd distils a teacher's logits: pass --teacher"


def test_cli_sft_writes_a_student(setup):
    tmp, teacher, student = setup
    r = CliRunner().invoke(main, ["distill", str(student), "--task", str(tmp / "task.toml"), "--data",
                                  str(tmp / "data.jsonl"), "--out", str(tmp / "o"), "--steps", "2", "--batch-size",
                                  "2", "--teacher", str(teacher), "--dev", str(tmp / "dev.jsonl"), "--dev-limit", "1",
                                  "--bf16", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output[r.output.index("{"):])
    assert m["stage"] == "distill" and m["details"]["steps"] == 2 and m["settings"]["bf16"] is True
    assert m["quality"]["n"] == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:  # a port nothing else holds now (a fixed one clashes with parallel runs)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_process_data_parallel_run(setup):
    tmp, teacher, student = setup
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    logs = tmp / "rank-logs"  # each rank's own stdout/stderr (teed): a failure shows which rank died, and where
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "--log-dir", str(logs), "--tee", "3",
           "-m", "supertiny", "distill", str(student), "--task", str(tmp / "task.toml"), "--data",
           str(tmp / "data.jsonl"), "--out", str(tmp / "ddp"), "--teacher", str(teacher), "--loss", "fkl",
           "--steps", "3", "--batch-size", "2", "--save-every", "2", "--json"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=290)
    assert p.returncode == 0, p.stderr[-2000:] + "".join(
        f"\n--- {f.relative_to(logs)}:\n{f.read_text(errors='replace')[-1500:]}" for f in sorted(logs.rglob("*.log")))
    m = json.loads((tmp / "ddp" / "supertiny.json").read_text())
    assert m["details"]["world_size"] == 2 and m["details"]["steps"] == 3
    assert [x.name for x in tmp.iterdir() if x.name.startswith("ddp")] == ["ddp"]  # one output, no leftovers


def test_a_student_trimmed_from_the_teachers_vocabulary_distils_from_it(setup):
    """Trim before KD: the teacher is seen through the student's vocabulary (ids mapped, logits cut to the kept
    tokens), its cache holds only kept ids, and the distilled student stays linked to the teacher (its id map)."""
    from supertiny.models import load_model
    from supertiny.stages.transfer.trainer import TrimmedTeacher
    from supertiny.stages.transfer.training import teacher_view
    from supertiny.stages.trim.stage import TrimVocabConfig, trim_vocab
    from supertiny.stages.trim.vocab import ID_MAP

    tmp, teacher, student = setup
    trim_vocab(student, tmp / "trimmed", TrimVocabConfig(keep=0), task=tmp / "task.toml", data=tmp / "data.jsonl")
    old_ids = json.loads((tmp / "trimmed" / ID_MAP).read_text())["old_ids"]
    t, s = load_model(str(teacher)), load_model(str(tmp / "trimmed"))
    view = teacher_view(t.tokenizer, s.tokenizer, t.model, s.model, tmp / "trimmed", ("t", "s"))
    assert isinstance(view, TrimmedTeacher)
    ids = s.tokenizer("the red one, dark", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        got = view(input_ids=torch.tensor([ids])).logits[0]
        want = t.model(input_ids=torch.tensor([[old_ids[i] for i in ids]])).logits[0][:, old_ids]
    assert got.shape[-1] == len(old_ids) < 400 and torch.equal(got, want)
    # the untrimmed student of the same teacher sees the teacher itself
    full = load_model(str(student))
    assert teacher_view(t.tokenizer, full.tokenizer, t.model, full.model, student, ("t", "s")) is t.model

    m = distill(tmp / "trimmed", tmp / "out", tmp / "task.toml", tmp / "data.jsonl", _cfg(steps=8),
                teacher=str(teacher), dev=tmp / "dev.jsonl", cache_dir=tmp / "cache")
    kd = [r["kd"] for r in read_metrics_lines(tmp / "out") if "kd" in r]
    assert len(kd) == 8 and kd[-1] < 0.7 * kd[0], kd
    from supertiny.stages.transfer.kdcache import TopKCache

    (cache,) = (tmp / "cache").glob("kd-*.safetensors")
    assert int(TopKCache.load(cache).indices.max()) < len(old_ids)
    assert json.loads((tmp / "out" / ID_MAP).read_text())["old_ids"] == old_ids
    assert {"top1_agreement", "kl_mean"} <= set(m.quality) and m.details["attention"] == "eager"
    # the untrimmed student's cache is another one (the teacher over the whole vocabulary)
    distill(student, tmp / "full", tmp / "task.toml", tmp / "data.jsonl", _cfg(steps=1, save_every=0),
            teacher=str(teacher), cache_dir=tmp / "cache")
    assert len(list((tmp / "cache").glob("kd-*.safetensors"))) == 2


def test_a_student_trimmed_from_another_vocabulary_is_one_clear_error(setup, make_tiny_dir):
    from supertiny.stages.trim.stage import TrimVocabConfig, trim_vocab

    tmp, _, student = setup
    trim_vocab(student, tmp / "trimmed", TrimVocabConfig(keep=0), task=tmp / "task.toml", data=tmp / "data.jsonl")
    teacher = make_tiny_dir(tied=False, seed=3, name="wide", vocab_size=512)  # 512 logits: not the trimmed source
    with pytest.raises(InvalidInputError, match="trimmed from another vocabulary"):
        distill(tmp / "trimmed", tmp / "out", tmp / "task.toml", tmp / "data.jsonl", _cfg(), teacher=str(teacher))
    (tmp / "trimmed" / "vocab_map.json").write_text('{"old_ids": [3, 3], "source_vocab_size": 400}')
    with pytest.raises(InvalidInputError, match="not a trim-vocab id map"):
        distill(tmp / "trimmed", tmp / "out", tmp / "task.toml", tmp / "data.jsonl", _cfg(), teacher=str(teacher))


def test_length_grouped_batches_cover_the_epoch_in_batches_of_one_length():
    from supertiny.stages.transfer.trainer import LengthGroupedBatches

    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(20, 400, (203,), generator=g).tolist()
    sampler = LengthGroupedBatches(lengths, batch=8, seed=5, group=4)
    first = list(sampler)
    assert sorted(first) == list(range(203)) and list(sampler) == first  # a permutation, the same on a resume
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(203)) and second != first

    def padding(order):  # the share of padded positions when every 8 in a row make a left-padded batch
        batches = [order[i:i + 8] for i in range(0, len(order), 8)]
        return 1 - sum(lengths) / sum(max(lengths[i] for i in b) * len(b) for b in batches)

    shuffled = torch.randperm(203, generator=g).tolist()
    assert padding(first) < 0.5 * padding(shuffled)
    # the DataLoader's batches (every 8 in a row; the 3 left over last) are the sampler's: each one a run cut from
    # a group sorted longest first
    for order in (first, second):
        for i in range(0, 203, 8):
            b = [lengths[j] for j in order[i:i + 8]]
            assert b == sorted(b, reverse=True), (i, b)


def test_input_kd_aligns_the_teachers_rows_with_the_inputs_tokens(setup):
    """--input-kd: the cache holds each example's rows from its input's first token, the collator hands them to the
    logits at those positions (the teacher distilled into itself scores ~0 KL there: any shift of one position
    would not), and a student moves toward the teacher on its inputs as on its answers."""
    from supertiny.models import load_model
    from supertiny.stages.transfer.examples import load_examples
    from supertiny.stages.transfer.kdcache import TopKCache
    from supertiny.stages.transfer.trainer import Collator
    from supertiny.tasks import task_for

    tmp, teacher, student = setup
    tok = load_model(str(student)).tokenizer
    examples, _ = load_examples(tmp / "data.jsonl", task_for(str(tmp / "task.toml"), str(student)), tok, 256)
    for e, line in zip(examples, (tmp / "data.jsonl").read_text().splitlines(), strict=True):
        text = tok.decode(e.ids[e.input_start:e.prompt_len])
        assert text.startswith(json.loads(line)["input"]), text  # the input, then the template's turn end
        assert e.rows_from(True) == e.input_start < e.prompt_len == e.rows_from(False)

    cfg = dict(alpha=1.0, input_kd=1.0, lr=1e-12, steps=2, save_every=0, dev_limit=1)
    m = distill(teacher, tmp / "self", tmp / "task.toml", tmp / "data.jsonl", _cfg(**cfg), teacher=str(teacher),
                cache_dir=tmp / "cache")
    rows = [r for r in read_metrics_lines(tmp / "self") if "loss" in r]
    assert all(r["kd_input"] < 1e-3 and r["kd"] < 1e-3 for r in rows), rows
    (path,) = (tmp / "cache").glob("kd-*.safetensors")
    cache = TopKCache.load(path)
    assert m.details["cache"]["tokens"] == sum(len(e.ids) - e.input_start for e in examples) == len(cache.values)
    batch = Collator(examples, tok.pad_token_id, cache, inputs=True)([{"index": 0}, {"index": 3}])
    n_input = sum(examples[i].prompt_len - examples[i].input_start for i in (0, 3))
    assert int(batch["kd_input_mask"].sum()) == n_input == len(batch["kd_input_values"])
    assert len(batch["kd_values"]) == int((batch["labels"] != -100).sum())
    assert batch["logits_to_keep"] == max(len(examples[i].ids) - examples[i].input_start for i in (0, 3)) + 1

    distill(student, tmp / "out", tmp / "task.toml", tmp / "data.jsonl", _cfg(steps=8, input_kd=1.0),
            teacher=str(teacher), cache_dir=tmp / "cache")
    kd_in = [r["kd_input"] for r in read_metrics_lines(tmp / "out") if "kd_input" in r]
    assert len(kd_in) == 8 and kd_in[-1] < 0.7 * kd_in[0], kd_in
    with pytest.raises(InvalidInputError, match="--input-kd distils the teacher's logits"):
        distill(student, tmp / "o2", tmp / "task.toml", tmp / "data.jsonl", _cfg(loss="sft", input_kd=1.0))


def test_hidden_kd_maps_a_depth_pruned_students_layers_and_pulls_its_states_to_the_teachers(tmp_path, make_tiny_dir):
    """--hidden-kd: the student's layers are matched to the teacher's they were kept from (by the weights), a model
    distilled into itself scores 0 on the hidden states, a depth-pruned student trained with it ends with
    states nearer the teacher's than the same run without it, and a student that is no copy of the teacher (or not
    its width) is refused in one line."""
    from supertiny.models import load_model
    from supertiny.stages.prune import PruneConfig
    from supertiny.stages.prune.stage import prune
    from supertiny.stages.transfer.distill import layer_map
    from supertiny.stages.transfer.examples import load_examples
    from supertiny.stages.transfer.trainer import Collator, HiddenTeacher, _forward, hidden_state_loss
    from supertiny.tasks import task_for

    tmp = tmp_path
    write_color_task(tmp, records=8, dev=2)
    # layers that move the residual stream (the default init barely does), so that dropping three shows
    teacher = make_tiny_dir(tied=False, seed=1, name="teacher", num_hidden_layers=6, initializer_range=0.3)
    m = prune(teacher, tmp / "pruned", PruneConfig(layers=3, calib_tokens=256, eval_tokens=128, window=64))
    kept = m.details["pruned"]["layers"]["kept"]
    t = load_model(str(teacher))
    assert layer_map(load_model(str(tmp / "pruned")).model, t.model) == (kept, 0.0)
    assert layer_map(t.model, t.model) == (list(range(6)), 0.0)

    # the states line up: a model distilled into itself scores 0 (a model of the default init, whose outputs do not
    # swing with the order of a sum as the large-weight teacher's do from one thread count to another)
    plain = make_tiny_dir(tied=False, seed=1, name="plain", num_hidden_layers=3)
    distill(plain, tmp / "self", tmp / "task.toml", tmp / "data.jsonl",
            _cfg(alpha=1.0, hidden_kd=1.0, lr=1e-12, steps=2, save_every=0, dev_limit=1), teacher=str(plain))
    assert all(r["kd_hidden"] < 1e-9 for r in read_metrics_lines(tmp / "self") if "loss" in r)

    examples, _ = load_examples(tmp / "data.jsonl", task_for(str(tmp / "task.toml"), str(teacher)), t.tokenizer, 256)
    batch = Collator(examples, t.tokenizer.pad_token_id, hidden=True)([{"index": i} for i in range(len(examples))])
    reference = HiddenTeacher(t.model, kept).states(batch)

    def distance(student: Path) -> float:
        with torch.no_grad():
            states = _forward(load_model(str(student)).model, batch, True).hidden_states
        return float(hidden_state_loss(states, reference, kept, batch["hidden_mask"]))

    runs = {w: distill(tmp / "pruned", tmp / f"w{w}", tmp / "task.toml", tmp / "data.jsonl",
                       _cfg(steps=10, lr=1e-3, hidden_kd=w, save_every=0, dev_limit=1), teacher=str(teacher))
            for w in (0.0, 100.0)}
    assert runs[100.0].details["hidden_kd"]["layer_map"] == kept and "hidden_kd" not in runs[0.0].details
    logged = [r["kd_hidden"] for r in read_metrics_lines(tmp / "w100.0") if "kd_hidden" in r]
    assert len(logged) == 10 and runs[100.0].details["final"]["kd_hidden"] == logged[-1]
    before, without, with_ = distance(tmp / "pruned"), distance(tmp / "w0.0"), distance(tmp / "w100.0")
    assert before > 0.01 and with_ < 0.9 * without, (before, without, with_)
    assert layer_map(load_model(str(tmp / "w100.0")).model, t.model)[0] == kept  # still maps after training

    cfg = _cfg(hidden_kd=1.0, dev_limit=1)
    other = make_tiny_dir(tied=False, seed=2, name="other", num_hidden_layers=3, initializer_range=0.3)
    with pytest.raises(InvalidInputError, match="not a depth-pruned copy of this teacher"):
        distill(other, tmp / "o1", tmp / "task.toml", tmp / "data.jsonl", cfg, teacher=str(teacher))
    assert not list((tmp / "o1.work").glob("kd-*"))  # refused before the teacher's top-k cache was built
    r = CliRunner().invoke(main, ["distill", str(other), "--task", str(tmp / "task.toml"), "--data",
                                  str(tmp / "data.jsonl"), "--out", str(tmp / "o4"), "--teacher", str(teacher),
                                  "--hidden-kd", "1"])
    last = r.output.strip().splitlines()[-1]  # after the progress lines, one line of error
    assert r.exit_code == 2 and last.startswith("error: --hidden-kd: student layer ") and "from every teacher" in last
    assert "Traceback" not in r.output
    assert not (tmp / "o4").exists()  # nothing installed (o4.work holds the run's settings alone, no checkpoint)
    wide = make_tiny_dir(tied=False, seed=2, name="wide", hidden_size=32)
    with pytest.raises(InvalidInputError, match="compares hidden states"):
        distill(wide, tmp / "o2", tmp / "task.toml", tmp / "data.jsonl", cfg, teacher=str(teacher))
    with pytest.raises(InvalidInputError, match="--hidden-kd distils a teacher's hidden states"):
        distill(tmp / "pruned", tmp / "o3", tmp / "task.toml", tmp / "data.jsonl", _cfg(loss="sft", hidden_kd=1.0))
