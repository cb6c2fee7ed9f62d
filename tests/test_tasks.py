"""Structured-output tasks: file validation, prompt, parsing, the metric, data files and evaluate_task."""

from __future__ import annotations

import json
import re

import pytest

from supertiny.errors import InvalidInputError, TaskError, UserError
from supertiny.tasks import (
    TaskRecord,
    engine_complete,
    evaluate_task,
    extract_json,
    list_tasks,
    load_task,
    parse_task,
    read_task_data,
    score,
)

GOLD = {"asset": "CNC-07", "category": "electrical", "severity": "high", "line_stopped": True}


def valid(**top) -> dict:
    """A minimal valid task as a dict, with top-level keys replaced or added."""
    data = {"schema_version": 1, "name": "demo", "input": "text", "instruction": "Classify the text.",
            "output": {"label": {"type": "enum", "values": ["yes", "no"]}, "ok": {"type": "bool"},
                       "code": {"type": "string", "pattern": "[A-Z]{2}", "normalize": "upper"}}}
    return {**data, **top}


def errors(data: dict) -> str:
    with pytest.raises(TaskError) as info:
        parse_task(data, "t.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("t.toml: ")
    assert isinstance(info.value, UserError)
    return message


@pytest.fixture(scope="module")
def task():
    return load_task("factory-tickets")


# -- task files --

def test_shipped_task_loads_by_name_and_path(task, tmp_path):
    assert "factory-tickets" in list_tasks()
    assert task.field_names == ("asset", "category", "line_stopped", "severity")
    assert task.fields[1].values == ("electrical", "mechanical", "hydraulic", "pneumatic", "control", "sensor",
                                     "safety")
    assert task.fields[3].values == ("critical", "high", "medium", "low")
    assert load_task(task.source).to_dict()["output"] == task.to_dict()["output"]
    with pytest.raises(TaskError, match=r"unknown task 'factory-ticket'; shipped: .*factory-tickets"):
        load_task("factory-ticket")
    with pytest.raises(TaskError, match=r"nope\.toml: no such file"):
        load_task(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(TaskError, match=r"bad\.toml: not valid TOML"):
        load_task(tmp_path / "bad.toml")


def test_minimal_task_is_valid():
    t = parse_task(valid(), "t.toml")
    assert [f.type for f in t.fields] == ["enum", "bool", "string"]
    assert t.description == "" and t.examples == ()


def test_unknown_key_suggests_the_known_one():
    msg = errors(valid(instructions="x"))
    assert "top level: unknown key 'instructions' (did you mean 'instruction'?" in msg
    msg = errors(valid(output={"x": {"type": "enum", "valus": ["a"]}}))
    assert "output.x: unknown key 'valus' (did you mean 'values'?" in msg


def test_wrong_types_and_missing_keys():
    assert "schema_version: expected 1, got 2" in errors(valid(schema_version=2))
    assert "instruction: expected a non-empty string, got ''" in errors(valid(instruction=""))
    assert "output.x.type: expected one of string, bool, enum, number, list, got 'int'" in errors(
        valid(output={"x": {"type": "int"}}))
    assert "output.x.type: required key is missing" in errors(valid(output={"x": {}}))
    assert "output: expected a table with at least one field" in errors(valid(output={}))
    assert "output.x.pattern: expected a valid regular expression" in errors(
        valid(output={"x": {"type": "string", "pattern": "[a-"}}))
    data = valid()
    del data["input"]
    assert "input: required key is missing" in errors(data)


def test_enum_needs_values_and_field_specific_keys():
    assert "output.x.values: an enum needs its allowed values" in errors(valid(output={"x": {"type": "enum"}}))
    assert "output.x.values: expected a non-empty list" in errors(valid(output={"x": {"type": "enum", "values": []}}))
    assert "expected no repeated values" in errors(valid(output={"x": {"type": "enum", "values": ["a", "a"]}}))
    assert "output.x.values: only enum or list fields take values, this one is bool" in errors(
        valid(output={"x": {"type": "bool", "values": ["a"]}}))
    assert "output.x.pattern: only string fields take pattern" in errors(
        valid(output={"x": {"type": "enum", "values": ["a"], "pattern": "a"}}))
    # normalize lower could never produce "Yes", so the schema would be unsatisfiable
    assert "output.x.values: 'Yes' is not in its normalized form" in errors(
        valid(output={"x": {"type": "enum", "values": ["Yes"], "normalize": "lower"}}))


def test_every_problem_in_one_line():
    msg = errors({"schema_version": 1, "name": "Bad Name", "instrucion": "x", "output": {
        "a": {"type": "enum"}, "b": {"type": "bool", "normalize": "upper"}}})
    for part in ("name: expected a name", "unknown key 'instrucion'", "input: required key is missing",
                 "instruction: required key is missing", "output.a.values", "output.b.normalize"):
        assert part in msg, part
    assert msg.count("; ") >= 5


def test_examples_are_checked_and_become_chat_turns():
    msg = errors(valid(examples=[{"input": "hi", "output": {"label": "maybe", "ok": True, "code": "AB"}},
                                 {"inptu": "x", "output": {"label": "yes"}}]))
    assert "examples[0].output.label: expected one of yes, no, got 'maybe'" in msg
    assert "examples[1]: unknown key 'inptu' (did you mean 'input'?" in msg
    assert "examples[1].output.ok: required key is missing" in msg
    t = parse_task(valid(examples=[{"input": "hi", "output": {"label": "yes", "ok": True, "code": "ab"}}]), "t")
    roles = [m["role"] for m in t.messages("text here")]
    assert roles == ["system", "user", "assistant", "user"]
    assert json.loads(t.messages("x")[2]["content"]) == {"label": "yes", "ok": True, "code": "AB"}


def test_prompt_states_instruction_and_exact_schema(task):
    system, user = task.messages("cnc-07 no power, line down")
    assert system["role"] == "system" and user == {"role": "user", "content": "Ticket:\ncnc-07 no power, line down"}
    text = system["content"]
    assert text.startswith(task.instruction.strip())
    for f in task.fields:
        assert f'"{f.name}"' in text
        for v in f.values:
            assert f'"{v}"' in text
    assert "[A-Z]{2,6}-[0-9]{1,4}" in text and "true or false" in text


def test_instruction_defines_every_category_and_severity(task):
    text = task.instruction
    for value in task.fields[1].values + task.fields[2].values:
        assert re.search(rf"^- {value}: ", text, re.M), value
    # the tricky rules the labels follow are spelled out for the model
    for rule in ("gearbox oil seal", "hydraulic hose", "even when that stops the line or raises a PLC alarm",
                 "whatever else is true", "stopped, down, not running or locked out now", "in passing"):
        assert rule in text, rule


# -- parsing a model's answer --

@pytest.mark.parametrize("text", [
    '{"asset": "CNC-07", "category": "electrical", "severity": "high", "line_stopped": true}',
    '```json\n{"asset": "CNC-07", "category": "electrical", "severity": "high", "line_stopped": true}\n```',
    'Sure! Here is the JSON:\n{"asset": "cnc-07", "category": "Electrical", "severity": " high ", '
    '"line_stopped": true}\nLet me know if you need more. {"asset": "X"}',
    'The answer {is}: {"asset": "Cnc-07", "category": "electrical", "severity": "high", "line_stopped": true}',
])
def test_parse_finds_the_first_json_object(task, text):
    p = task.parse(text)
    assert p.json_valid and p.schema_valid and p.answer == GOLD


@pytest.mark.parametrize("text", [
    None, "", "no json here", '{"asset": "CNC-07", "category": "electrical",}',
    "{'asset': 'CNC-07'}", '{"asset": "CNC-07", "category": "electrical", "severity": "hi',
    '["CNC-07", "electrical"]',
])
def test_malformed_output_is_json_invalid(task, text):
    p = task.parse(text)
    assert not p.json_valid and not p.schema_valid and p.answer is None and p.values == {}
    assert set(p.problems) == set(task.field_names)


def test_schema_problems_are_per_field(task):
    p = task.parse('{"asset": "CNC07", "category": "wiring", "severity": "HIGH", "line_stopped": "true", "x": 1}')
    assert p.json_valid and not p.schema_valid
    assert p.values == {"severity": "high"}  # normalize = "lower" on the enum
    assert "expected a string matching" in p.problems["asset"]
    assert p.problems["category"].startswith("expected one of electrical, mechanical")
    assert p.problems["line_stopped"] == "expected true or false, got 'true'"
    assert p.extra == ("x",)
    p = task.parse('{"asset": 7, "category": null}')
    assert p.problems == {"asset": "expected a string, got 7", "category": "expected a string, got None",
                          "severity": "missing", "line_stopped": "missing"}


def test_extract_json_edge_cases():
    assert extract_json('x {"a": {"b": [1, 2]}} y') == {"a": {"b": [1, 2]}}
    assert extract_json('{"a": 1}{"a": 2}') == {"a": 1}
    assert extract_json('{bad} {"ok": true}') == {"ok": True}
    assert extract_json("{" * 10000) is None
    assert extract_json('{"a": ' + "[" * 100000) is None


# -- the metric --

def test_score_by_hand(task):
    other = {"asset": "PRESS-3", "category": "hydraulic", "severity": "medium", "line_stopped": False}
    preds = [
        task.format_answer(GOLD),                                            # 4/4 right
        '{"asset": "cnc-07", "category": "mechanical", "severity": "high", "line_stopped": false}',  # 2/4
        "I cannot answer that.",                                             # invalid: 0/4
        '{"asset": "PRESS-3", "category": "hydraulic", "severity": "critical"}',  # 2/4, schema-invalid
        None,                                                                # no output: 0/4
    ]
    s = score(task, preds, [GOLD, GOLD, other, other, GOLD])
    assert s.n == 5 and s.json_valid == 3 / 5 and s.schema_valid == 2 / 5
    assert s.fields == {"asset": 3 / 5, "category": 2 / 5, "severity": 2 / 5, "line_stopped": 1 / 5}
    assert s.task_score == pytest.approx((3 + 2 + 2 + 1) / 20)
    d = s.to_dict()
    assert d["task_score"] == pytest.approx(0.4) and d["fields"]["asset"] == 0.6
    json.dumps(d)


def test_score_normalizes_labels_and_rejects_bad_ones(task):
    assert score(task, [task.format_answer(GOLD)], [{**GOLD, "asset": "cnc-07"}]).task_score == 1.0
    with pytest.raises(TaskError, match=r"labels\[0\]\.category: expected one of"):
        score(task, ["{}"], [{**GOLD, "category": "wiring"}])
    with pytest.raises(TaskError, match="2 predictions for 1 labels"):
        score(task, ["{}", "{}"], [GOLD])
    with pytest.raises(TaskError, match="no records"):
        score(task, [], [])


# -- data files --

def write_lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_read_task_data(task, tmp_path):
    f = write_lines(tmp_path / "d.jsonl", json.dumps({"input": "cnc-07 down", "label": {**GOLD, "asset": "cnc-07"}}),
                    "", json.dumps({"input": "unlabelled"}))
    records = read_task_data(f, task)
    assert records[0] == TaskRecord("cnc-07 down", GOLD, 1, str(f))
    assert records[1].label is None and records[1].line == 3
    with pytest.raises(InvalidInputError, match=r"d\.jsonl:3: label: required here"):
        read_task_data(f, task, labelled=True)


@pytest.mark.parametrize("lines, message", [
    ([], r"bad\.jsonl: no records \(the file is empty\)"),
    (["", "  "], r"bad\.jsonl: no records"),
    (['{"input": "a"}', '{"input": "b"'], r"bad\.jsonl:2: not valid JSON: Expecting ',' delimiter"),
    (['["a"]'], r"bad\.jsonl:1: expected an object like"),
    (['{"label": {}}'], r"bad\.jsonl:1: input: expected a non-empty string, it is missing"),
    (['{"input": ""}'], r"bad\.jsonl:1: input: expected a non-empty string, got \"\""),
    (['{"input": "a", "lable": {}}'], r"bad\.jsonl:1: unknown key 'lable' \(did you mean 'label'\?"),
    (['{"input": "a"}', '{"input": "b", "label": {"asset": "CNC-07"}}'],
     r"bad\.jsonl:2: label\.category: required key is missing; label\.line_stopped"),
    (['{"input": "a", "label": {"asset": "CNC-07", "category": "wiring", "severity": "high", '
      '"line_stopped": true, "plant": 2}}'],
     r"bad\.jsonl:1: label: unknown key 'plant' .*; label\.category: expected one of electrical"),
    (['{"input": "a", "label": "electrical"}'], r"bad\.jsonl:1: label: expected an object with keys asset"),
])
def test_data_errors_name_file_and_line(task, tmp_path, lines, message):
    with pytest.raises(InvalidInputError, match=message):
        read_task_data(write_lines(tmp_path / "bad.jsonl", *lines), task)


def test_data_file_missing_or_not_utf8(task, tmp_path):
    with pytest.raises(InvalidInputError, match=r"nope\.jsonl: no such file"):
        read_task_data(tmp_path / "nope.jsonl", task)
    (tmp_path / "bom.jsonl").write_bytes('\ufeff{"input": "caf\u00e9"}\n'.encode())
    assert read_task_data(tmp_path / "bom.jsonl", task)[0].input == "caf\u00e9"
    (tmp_path / "latin.jsonl").write_bytes(b'{"input": "caf\xe9"}\n')
    with pytest.raises(InvalidInputError, match=r"latin\.jsonl: not UTF-8 text"):
        read_task_data(tmp_path / "latin.jsonl", task)


# -- evaluating a model --

def test_evaluate_task_with_a_scripted_model(task):
    other = {"asset": "PRESS-3", "category": "hydraulic", "severity": "medium", "line_stopped": False}
    records = [TaskRecord("cnc-07 no power, line down", GOLD, 1), TaskRecord("press-3 hose weeping", other, 2)]
    replies = {"cnc-07 no power, line down": "```json\n" + task.format_answer(GOLD) + "\n```",
               "press-3 hose weeping": "It is hydraulic."}
    seen, ticks = [], []

    def complete(messages):
        seen.append(messages)
        return replies[messages[-1]["content"].split("\n", 1)[1]]

    result = evaluate_task(complete, task, records, progress=lambda k, n: ticks.append((k, n)))
    assert seen[0] == task.messages("cnc-07 no power, line down")
    assert ticks == [(1, 2), (2, 2)]
    assert result.score.task_score == 0.5 and result.score.json_valid == 0.5
    assert result.outputs[1] == "It is hydraulic." and not result.parsed[1].json_valid
    d = result.to_dict()
    assert d["task_score"] == 0.5 and d["predictions"][0]["values"] == GOLD
    json.dumps(d)
    with pytest.raises(InvalidInputError, match=r"d\.jsonl:4: label: required for evaluation"):
        evaluate_task(complete, task, [TaskRecord("x", None, 4, "d.jsonl")])


def test_engine_complete_is_greedy_chat(task):
    class Reply:
        text = "{}"

    class StubEngine:
        def complete(self, prompt, max_tokens=256, **kw):
            self.call = (prompt, max_tokens, kw)
            return Reply()

    engine = StubEngine()
    assert engine_complete(engine, max_tokens=64)(task.messages("x")) == "{}"
    assert engine.call == (task.messages("x"), 64, {})
