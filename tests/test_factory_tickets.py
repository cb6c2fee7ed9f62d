"""The factory-tickets example: the generator is deterministic, its splits disjoint and its labels valid."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from supertiny.tasks import load_task, read_task_data, score

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "factory_tickets"
TAG = re.compile(r"\b[A-Za-z]{2,6}-[0-9]{1,4}\b")


@pytest.fixture(scope="module")
def gen():
    """examples/factory_tickets/generate.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("factory_tickets_generate", EXAMPLE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def task():
    return load_task("factory-tickets")


@pytest.fixture(scope="module")
def splits(gen):
    return gen.generate(0, gen.DEFAULT_SIZES)


def test_deterministic_for_a_seed(gen, splits):
    assert gen.generate(0, gen.DEFAULT_SIZES) == splits
    small = gen.generate(1, {"train": 50, "dev": 10, "test": 10})
    assert small != gen.generate(2, {"train": 50, "dev": 10, "test": 10})
    assert [len(v) for v in small.values()] == [50, 10, 10]


def test_a_larger_split_leaves_the_others_as_they_were(gen):
    """Tickets beyond a split's first share come after every split's first share: more train tickets keep dev,
    test and rl (and the first train tickets) unchanged."""
    sizes = {"train": 30, "dev": 5, "test": 5, "rl": 5}
    small = gen.generate(3, sizes, first_share=sizes)
    larger = gen.generate(3, {**sizes, "train": 40, "rl": 8}, first_share=sizes)
    assert larger["dev"] == small["dev"] and larger["test"] == small["test"]
    assert larger["train"][:30] == small["train"] and larger["rl"][:5] == small["rl"]
    assert len(larger["train"]) == 40 and len(larger["rl"]) == 8
    texts = [r["input"] for split in larger.values() for r in split]
    assert len(set(texts)) == len(texts)


def test_splits_are_disjoint(splits):
    texts = {name: {" ".join(r["input"].lower().split()) for r in records} for name, records in splits.items()}
    assert sum(len(t) for t in texts.values()) == sum(len(r) for r in splits.values())
    names = list(texts)
    assert names == ["train", "dev", "test", "rl"]
    assert not any(texts[a] & texts[b] for i, a in enumerate(names) for b in names[i + 1:])


def test_every_label_is_valid_and_the_asset_is_in_the_text(task, splits):
    for records in splits.values():
        for r in records:
            label, problems = task.check_label(r["label"])
            assert label == r["label"], problems
            tags = {t.upper() for t in TAG.findall(r["input"])}
            assert label["asset"] in tags and len(tags) <= 2, r["input"]  # the asset and at most one bystander


def test_labels_cover_every_value(task, splits):
    records = [r for split in splits.values() for r in split]
    for f in task.fields[1:]:
        counts = Counter(r["label"][f.name] for r in records)
        values = f.values or (True, False)
        assert set(counts) == set(values), f.name
        assert min(counts.values()) >= 0.04 * len(records), (f.name, counts)  # no value is starved


def test_the_label_follows_the_rules(gen):
    Facts = gen.Facts
    # danger to people is safety and critical whatever the fault looks like
    assert Facts("Cnc-07", "electrical", "danger", False).label() == {
        "asset": "CNC-07", "category": "safety", "severity": "critical", "line_stopped": False}
    assert Facts("cnc-07", "sensor", "S", True).label()["category"] == "sensor"
    assert Facts("cnc-07", "sensor", "S", True).label()["severity"] == "high"
    assert [gen.SEVERITY[k] for k in ("L", "S", "X", "XS", "D", "R")] == ["low", "high", "high", "high", "medium",
                                                                           "medium"]
    for _ in range(300):  # "stopped now" is exactly the stopped impacts; recovered is not stopped
        text, facts = gen.make_ticket(gen.random.Random(_))
        assert facts.stopped_now == (facts.kind in ("S", "XS") or (facts.kind == "danger" and facts.stopped_now))
        assert facts.kind != "R" or not facts.stopped_now


def test_long_form_tickets_keep_the_label(gen):
    """``make_ticket(rng, long, long_form)`` (``generate.py --long-form``): a share of the tickets with an impact gets
    sentences of what was seen and tried before or after it; the facts, and every ticket it leaves short, are what
    ``rng`` alone gives; by default no ticket is long-form."""
    P = gen.P
    changed = 0
    for i in range(400):
        short, facts = gen.make_ticket(gen.random.Random(i))
        text, long_facts = gen.make_ticket(gen.random.Random(i), gen.random.Random(10_000 + i), 0.35)
        assert long_facts == facts
        assert gen.make_ticket(gen.random.Random(i), gen.random.Random(10_000 + i)) == (short, facts)
        if text != short:
            changed += 1
            assert facts.kind != "L"  # a ticket without an impact stays as it is
            assert len(text) > len(short)
    assert 0.2 * 400 < changed < 0.4 * 400  # 0.35 of the ~80% with an impact
    # the added sentences say nothing about the line, the urgency or the category
    words = re.compile(r"\b(stop|down|run|running|broke|broken|hurt|fire|smoke|scrap|leak|urgent|electric|sensor|"
                       r"hydraulic|pneumatic|air|oil|plc|hmi)\w*", re.IGNORECASE)
    assert not [x for x in P.ELABORATION if words.search(x)]


def test_committed_splits_are_the_default_generation(task, gen, splits):
    for name, records in splits.items():
        path = EXAMPLE / "data" / f"{name}.jsonl"
        assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == records
        assert len(read_task_data(path, task, labelled=True)) == gen.DEFAULT_SIZES[name]


def test_handwritten_tickets(task, splits):
    """Tickets written by hand, not by the generator: valid, tricky, and not in the generated splits."""
    records = read_task_data(EXAMPLE / "data" / "handwritten.jsonl", task, labelled=True)
    assert len(records) >= 20
    generated = {r["input"] for split in splits.values() for r in split}
    assert not generated & {r.input for r in records}
    by_asset = {r.label["asset"]: r.label for r in records}
    assert by_asset["BOX-12"]["category"] == "mechanical"  # gearbox seal oil leak
    assert by_asset["PRESS-3"]["category"] == "hydraulic"  # split hydraulic hose
    assert by_asset["CNC-07"]["category"] == "sensor" and by_asset["CNC-07"]["line_stopped"]  # encoder stops the cell
    assert by_asset["CONV-115"] == {"asset": "CONV-115", "category": "safety", "severity": "critical",
                                    "line_stopped": True}  # a smoking VFD is danger first
    assert by_asset["CHL-2"]["line_stopped"] is False  # tripped earlier, running again
    assert by_asset["WELD-19"]["asset"] == "WELD-19"  # WELD-20 is only where the fuse came from
    # gold answers score 1, and the whole set is a usable eval file
    assert score(task, [task.format_answer(r.label) for r in records], [r.label for r in records]).task_score == 1


def test_cli_writes_splits_and_prints_the_distribution(gen, tmp_path, capsys):
    gen.main(["--out", str(tmp_path), "--seed", "3", "--train", "20", "--dev", "5", "--test", "5"])
    out = capsys.readouterr().out
    assert "train: 20 tickets" in out and "severity" in out and "line_stopped" in out
    assert len((tmp_path / "test.jsonl").read_text().splitlines()) == 5
