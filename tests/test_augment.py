"""Label-preserving augmentation: spans rewritten with their labels, the other operations leaving labels alone,
determinism, and the stage's command."""

from __future__ import annotations

import json
import random
import re

import pytest
from click.testing import CliRunner

from supertiny.cli import main
from supertiny.manifest import read_manifest, verify_artifact
from supertiny.tasks import load_task, parse_task, read_task_data
from supertiny.tasks.augment import Augmenter, augment, rewrite_span

TICKETS = load_task("factory-tickets")
TAG = re.compile(r"(?<!\w)[A-Za-z]{2,6}-[0-9]{1,4}(?!\w)")
LABEL = {"asset": "PRESS-3", "category": "hydraulic", "severity": "high", "line_stopped": True}


def _records(tmp_path, lines):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return read_task_data(path, TICKETS)


def test_spans_are_rewritten_alike_everywhere_and_the_label_follows():
    aug = Augmenter(TICKETS, ("spans",))
    text = "Press-3 leaking hyd oil again, PRESS-3 stopped. CNC-07 next to it fine. JB3 ok."
    for seed in range(30):
        v = aug.variant(text, LABEL, random.Random(seed))
        tags = TAG.findall(v.input)
        assert len(tags) == 3 and "JB3" in v.input  # not a tag (no dash): left alone
        assert tags[0].upper() == tags[1].upper() == v.label["asset"] != "PRESS-3"
        assert tags[0][0].isupper() and tags[0][1:].split("-")[0].islower() and tags[1].isupper()  # case kept
        assert tags[2].upper() != v.label["asset"]  # the bystander is another tag
        assert {k: v.label[k] for k in ("category", "severity", "line_stopped")} == \
            {k: LABEL[k] for k in ("category", "severity", "line_stopped")}
        assert v.input.replace(tags[0], "X").replace(tags[1], "X").replace(tags[2], "Y") == \
            "X leaking hyd oil again, X stopped. Y next to it fine. JB3 ok."


def test_a_rewritten_span_keeps_the_fields_pattern():
    rng = random.Random(0)
    fits = lambda s: re.fullmatch("[A-Z]{2,6}-[0-9]{1,4}", s.upper()) is not None  # noqa: E731
    for span in ("AB-1", "ABCDEF-1234", "cnc-07", "Press-3"):
        for _ in range(50):
            new = rewrite_span(rng, span, fits)
            assert new is not None and fits(new) and new.lower() != span.lower()
    assert rewrite_span(rng, "AB-1", lambda s: False) is None  # nothing fits: None, not a wrong span


def test_other_operations_change_the_text_outside_spans_and_never_the_label():
    aug = Augmenter(TICKETS, ("typos", "abbrev", "punct"), typo_rate=0.3)
    text = "Please check PRESS-3 because the hydraulic pressure drops. Thanks, the line stopped with scrap."
    changed = 0
    for seed in range(40):
        v = aug.variant(text, LABEL, random.Random(seed))
        assert v.label == LABEL and "PRESS-3" in v.input
        changed += v.input != text
    assert changed >= 36  # at least one operation a variant (abbrev may find nothing to shorten)
    v = Augmenter(TICKETS, ("case",)).variant(text, LABEL, random.Random(1))
    assert v.input.lower() == text.lower() and v.label == LABEL  # the asset normalizes case


def test_case_moves_an_unnormalized_extractive_label_with_its_span():
    task = parse_task({"schema_version": 1, "name": "codes", "input": "text", "instruction": "Find the code.",
                       "output": {"code": {"type": "string", "pattern": "[A-Za-z]{2}[0-9]{2}", "source": "input"}}},
                      "codes.toml")
    aug = Augmenter(task, ("case",))
    seen = set()
    for seed in range(20):
        v = aug.variant("ref Ab12 please", {"code": "Ab12"}, random.Random(seed))
        assert v.label["code"] in v.input  # the label is the span as written
        seen.add(v.label["code"])
    assert {"ab12", "AB12"} <= seen


def test_augment_is_deterministic_drops_repeats_and_checks_labels(tmp_path):
    records = _records(tmp_path, [{"input": "PRESS-3 hose burst, line stopped", "label": LABEL},
                                  {"input": "no tag in this one at all, please check"},
                                  {"input": "ok", "label": {**LABEL, "asset": "OK-1"}}])
    a, counts = augment(TICKETS, records, copies=3, seed=7)
    b, _ = augment(TICKETS, records, copies=3, seed=7)
    c, _ = augment(TICKETS, records, copies=3, seed=8)
    assert a == b and a != c
    inputs = [v.input for v in a]
    assert len(set(x.lower() for x in inputs)) == len(inputs)  # no repeats, none equal to a record
    assert counts["variants"] == len(a) and sum(counts["dropped"].values()) == 9 - len(a)
    assert "same" in counts["dropped"]  # "ok" has nothing to change
    assert all(v.label is None for v in a if "tag" in v.input.lower() or "tga" in v.input.lower())
    for v in a:
        assert v.label is None or TICKETS.check_label(v.label)[0] is not None


def test_the_command_writes_records_then_variants_with_a_manifest(tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps({"input": f"Pump HPU-{i} leaking oil, line still running", "label":
                                       {**LABEL, "asset": f"HPU-{i}", "line_stopped": False}}) + "\n"
                           for i in range(1, 6)))
    out = tmp_path / "aug.jsonl"
    r = CliRunner().invoke(main, ["augment", str(src), "--task", "factory-tickets", "--out", str(out),
                                  "--copies", "2", "--operations", "spans,typos"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"wrote {out}: 5 records + 10 variants")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[:5] == [json.loads(x) for x in src.read_text().splitlines()]  # the records first, as they were
    assert len(lines) == 15 and all(x["label"]["asset"] in x["input"].upper() for x in lines)
    read_task_data(out, TICKETS, labelled=True)
    m = read_manifest(out)
    assert m.stage == "augment" and verify_artifact(out).ok
    assert m.quality["operations"]["spans"] == 10 and m.settings["operations"] == ["spans", "typos"]


@pytest.mark.parametrize("args, message", [
    (["--operations", "spans,shout"], "operations: expected a non-empty list of spans, case, typos"),
    (["--copies", "0"], "copies: expected a positive integer, got 0"),
    (["--typo-rate", "0.9"], "a number from 0 to 0.5"),
])
def test_bad_settings_are_one_line_errors(tmp_path, args, message):
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps({"input": "x PRESS-3", "label": LABEL}) + "\n")
    r = CliRunner().invoke(main, ["augment", str(src), "--task", "factory-tickets", "--out",
                                  str(tmp_path / "o.jsonl"), *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o.jsonl").exists()
