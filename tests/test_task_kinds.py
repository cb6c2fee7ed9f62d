"""The field kinds a user's task needs (issue 24): number, list (multi-label), nullable; each with its
prompt text, parser, scorer, schema (and so its constraint) and MiniLM-baseline head."""

import json

import numpy as np
import pytest
from test_constrain import accepts

from supertiny.baselines.minilm import ListHead, RidgeHead, SoftmaxHead, first_span, fit_field
from supertiny.runtime.engines.constrain import Grammar, Vocabulary, answer_grammar
from supertiny.tasks import parse_task, score, task_json_schema

EMAILS = {
    "schema_version": 1, "name": "support-emails", "input": "email", "instruction": "Triage the email.",
    "output": {
        "intent": {"type": "enum", "values": ["refund", "question", "complaint"], "normalize": "lower"},
        "topics": {"type": "list", "values": ["billing", "delivery", "product"], "normalize": "lower"},
        "items": {"type": "number", "tolerance": 0.5, "nullable": True},
        "order_id": {"type": "string", "pattern": "[A-Z]{2}-[0-9]{5}", "normalize": "upper", "source": "input",
                     "nullable": True},
        "urgent": {"type": "bool"},
    },
}
TASK = parse_task(EMAILS, "emails.toml")
GOLD = {"intent": "refund", "topics": ["billing", "delivery"], "items": 2, "order_id": "AB-12345", "urgent": False}


@pytest.fixture(scope="module")
def vocab(tiny_tokenizer):
    return Vocabulary(tiny_tokenizer, [tiny_tokenizer.eos_token_id])


def test_the_prompt_describes_each_kind():
    lines = [f.schema_line() for f in TASK.fields]
    assert lines[1] == '- "topics": a list of any of "billing", "delivery", "product" (JSON array, [] for none).'
    assert lines[2] == '- "items": a number (JSON number), or null when the text has none.'
    assert lines[3].endswith(", or null when the text has none.")


@pytest.mark.parametrize("answer,values,problems", [
    (GOLD, GOLD, {}),
    ({**GOLD, "topics": ["Delivery", "billing", "billing"], "items": 2.0, "order_id": None},
     {**GOLD, "items": 2.0, "order_id": None}, {}),  # a list is a set in values order; null where allowed
    ({**GOLD, "topics": "billing", "items": "2", "urgent": None},
     {k: GOLD[k] for k in ("intent", "order_id")},
     {"topics": 'expected a list of strings, got \'billing\'', "items": "expected a number, got '2'",
      "urgent": "expected true or false, got None"}),
    ({**GOLD, "topics": ["refunds"], "items": float("nan")}, {k: GOLD[k] for k in ("intent", "order_id", "urgent")},
     {"topics": "expected items from billing, delivery, product, got 'refunds'",
      "items": "expected a number, got nan"}),
])
def test_the_parser_checks_each_kind(answer, values, problems):
    p = TASK.parse(json.dumps(answer))
    assert p.values == values and p.problems == problems


def test_numbers_score_within_their_tolerance_and_lists_by_set_with_f1():
    preds = [json.dumps({**GOLD, "items": 2.4}), json.dumps({**GOLD, "items": 3, "topics": ["billing"]}),
             json.dumps({**GOLD, "items": None, "topics": []})]
    s = score(TASK, preds, [GOLD, GOLD, {**GOLD, "items": None, "topics": []}])
    assert s.fields["items"] == pytest.approx(2 / 3) and s.fields["topics"] == pytest.approx(2 / 3)
    assert s.f1 == {"topics": pytest.approx((1 + 2 / 3 + 1) / 3)}
    assert s.to_dict()["f1"] == s.f1
    no_lists = parse_task({**EMAILS, "output": {"urgent": EMAILS["output"]["urgent"]}}, "u.toml")
    assert "f1" not in score(no_lists, ['{"urgent": true}'], [{"urgent": True}]).to_dict()


def test_the_schema_of_each_kind_is_enforced_token_by_token(vocab):
    text = "Refund for order ab-12345 please, two parcels"
    grammar = answer_grammar(TASK)(text)
    for ok in (GOLD, {**GOLD, "items": None, "topics": []}, {**GOLD, "items": 2.5, "order_id": "ab-12345"}):
        assert TASK.parse(json.dumps(ok)).schema_valid and accepts(grammar, json.dumps(ok), vocab), ok
    for bad in ({**GOLD, "order_id": "CD-99999"},  # not in this email
                {**GOLD, "topics": ["billing", "billing", "billing", "billing"]},  # more items than values
                {**GOLD, "items": "2"}, {**GOLD, "urgent": None}):
        assert not accepts(grammar, json.dumps(bad), vocab), bad
    # no order id in the email: the nullable extractive field can only be null
    assert task_json_schema(TASK, "where is my parcel?")["properties"]["order_id"]["type"] == "null"
    assert accepts(answer_grammar(TASK)("where is my parcel?"), json.dumps({**GOLD, "order_id": None}), vocab)
    assert Grammar.from_json_schema(task_json_schema(TASK))  # the schema without an input compiles too


def test_the_baseline_has_a_head_for_each_kind():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x_dev = rng.normal(size=(20, 8)).astype(np.float32)
    fields = {f.name: f for f in TASK.fields}

    def items(m):  # a number the features determine, null where the first feature is negative
        return [None if r[0] < 0 else float(2 * r[1] + 1) for r in m]

    ridge = fit_field(fields["items"], x, items(x), x_dev, items(x_dev))
    assert isinstance(ridge, RidgeHead)
    got, want = ridge.predict(x_dev), items(x_dev)
    assert all(abs(g - w) < 0.05 for g, w in zip(got, want, strict=True) if w is not None)

    def topics(m):
        return [[v for v, on in zip(("billing", "delivery", "product"), r[:3] > 0, strict=True) if on] for r in m]

    heads = fit_field(fields["topics"], x, topics(x), x_dev, topics(x_dev))
    assert isinstance(heads, ListHead) and np.mean([a == b for a, b in zip(heads.predict(x_dev), topics(x_dev),
                                                                            strict=True)]) > 0.8
    intents = fit_field(fields["intent"], x, ["refund"] * 30 + ["question"] * 30, x_dev, ["refund"] * 20)
    assert isinstance(intents, SoftmaxHead) and intents.classes == ("refund", "question", "complaint")
    urgent = fit_field(TASK.fields[4], x, [bool(r[0] > 0) for r in x], x_dev, [bool(r[0] > 0) for r in x_dev])
    assert urgent.classes == (False, True)
    maybe = parse_task({**EMAILS, "output": {"u": {"type": "bool", "nullable": True}}}, "m.toml").fields[0]
    labels = [None if r[0] < 0 else bool(r[1] > 0) for r in x]
    assert fit_field(maybe, x, labels, x_dev, labels[:20]).classes == (False, True, None)  # null is a class
    assert fit_field(fields["order_id"], x, [None] * 60, x_dev, [None] * 20) is None  # a rule answers it
    rule = first_span(fields["order_id"])
    assert rule("re ab-12345 and CD-99999") == "AB-12345" and rule("no order") is None
