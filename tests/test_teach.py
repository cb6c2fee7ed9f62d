"""supertiny teach: rejection sampling against a stub OpenAI-compatible server over loopback,
a tiny local model end to end, the judge parser, resuming, bad data files, an unreachable server."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from supertiny.cli import main
from supertiny.errors import InvalidInputError
from supertiny.manifest import read_manifest, verify_artifact
from supertiny.stages.transfer import teach as teach_mod
from supertiny.stages.transfer.judge import parse_judgement
from supertiny.stages.transfer.teach import TeachConfig, progress_path, sample_seed, teach
from supertiny.stages.transfer.teachers import LocalTeacher, PromptError, Teacher, TeacherOptions, json_done
from supertiny.tasks import load_task

TASK = load_task("factory-tickets")
GOLD = {  # input -> label (from the shipped handwritten tickets' style)
    "A: press-3 hose split, press off": {"asset": "PRESS-3", "category": "hydraulic", "severity": "high",
                                         "line_stopped": True},
    "B: CNC-07 encoder dead, cell stopped": {"asset": "CNC-07", "category": "sensor", "severity": "high",
                                             "line_stopped": True},
}


def answer(**kw) -> str:
    base = {"asset": "BOX-12", "category": "mechanical", "line_stopped": False, "severity": "medium"}
    return json.dumps({**base, **kw})


X = answer()
Y = answer(severity="low")
# What the stub teacher says to each input, sample by sample (samples of a prompt run in order).
SCRIPT = {
    # labelled: the first answer gets 3 of 4 fields, the second all of them -> accepted, score 1
    "A: press-3 hose split, press off": [answer(asset="PRESS-3", category="hydraulic", severity="high"),
                                         "Sure!\n```json\n" + json.dumps(GOLD["A: press-3 hose split, press off"])
                                         + "\n```"],
    # labelled: malformed JSON, then half right -> rejected, best score 0.5
    "B: CNC-07 encoder dead, cell stopped": ['{"asset": "CNC-07", "category": sensor', answer(asset="cnc-07",
                                                                                            severity="high")],
    # unlabelled: X graded 3 (rejected), Y graded 5 (accepted)
    "C: box-12 seal leak": [X, Y],
    # unlabelled: X graded unparseably (rejected, recorded), then no JSON at all
    "D: box-12 noisy": [X, "I don't know."],
    # unlabelled: both accepted, the better grade wins
    "E: box-12 oil": [X, Y],
}
GRADES = {  # (input, answer) -> the judge's reply
    ("C: box-12 seal leak", X): "The severity is off.\nScore: 3/5",
    ("C: box-12 seal leak", Y): '```json\n{"score": 5, "reason": "all right"}\n```',
    ("D: box-12 noisy", X): "I cannot grade this one.",
    ("E: box-12 oil", X): '{"score": 4, "reason": "debatable"}',
    ("E: box-12 oil", Y): "5",
}


def _field(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


class StubServer:
    """An OpenAI-compatible teacher and judge over loopback that plays SCRIPT and GRADES."""

    def __init__(self, delay: float = 0.0, fail_first: int = 0):
        self.delay, self.fail_first = delay, fail_first
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.in_flight = self.peak = self.requests = self.failed = 0
        self.bodies: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests += 1
                    if stub.failed < stub.fail_first:  # the server is overloaded for a moment
                        stub.failed += 1
                        self._send(503, {"error": {"message": "busy"}})
                        return
                    stub.in_flight += 1
                    stub.peak = max(stub.peak, stub.in_flight)
                    stub.bodies.append(body)
                try:
                    time.sleep(stub.delay)
                    self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                                          "content": stub.reply(body)}}]})
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reply(self, body: dict) -> str:
        text = body["messages"][-1]["content"]
        if text.startswith("You grade answers"):
            return GRADES[(_field(text, "<input>", "</input>"), _field(text, "<answer>", "</answer>"))]
        ticket = text.split("\n", 1)[1]
        with self.lock:
            k = self.calls.get(ticket, 0)
            self.calls[ticket] = k + 1
        return SCRIPT[ticket][min(k, len(SCRIPT[ticket]) - 1)]  # past the script: its last reply again

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_prompts(path: Path, inputs, labelled=True) -> Path:
    with path.open("w") as fh:
        for x in inputs:
            fh.write(json.dumps({"input": x, **({"label": GOLD[x]} if labelled and x in GOLD else {})}) + "\n")
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- rejection sampling against a server ---------------------------------------------------

def test_stub_server_scores_accepts_and_keeps_the_best(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", SCRIPT)
    out = tmp_path / "d.jsonl"
    with StubServer(delay=0.2) as stub:
        runner = CliRunner()
        result = runner.invoke(main, ["teach", stub.url, "--task", "factory-tickets", "--prompts", str(prompts),
                                      "--out", str(out), "--samples", "2", "--concurrency", "4",
                                      "--judge", stub.url, "--json"])
        assert result.exit_code == 0, result.output
    lines = read_lines(out)
    assert [line["input"] for line in lines] == list(SCRIPT)  # file order, whatever finished first
    a, b, c, d, e = lines
    assert a == {"input": "A: press-3 hose split, press off", "accepted": True, "score": 1.0, "samples": 2,
                 "scores": [0.75, 1.0], "label": GOLD[a["input"]],
                 "response": TASK.format_answer(GOLD[a["input"]])}
    # b: labelled, no sample right: its gold answer is kept (distillation learns from every label)
    assert (b["accepted"], b["response"], b["from"], b["scores"], b["score"]) == \
        (False, TASK.format_answer(GOLD[b["input"]]), "label", [0.0, 0.5], 0.5)
    assert "from" not in a and "from" not in c and "from" not in d  # d: unlabelled, rejected: nothing kept
    assert "judge" not in a and "judge" not in b  # a label decides; the judge is not asked
    assert (c["accepted"], c["response"], c["scores"]) == (True, TASK.format_answer(json.loads(Y)), [0.5, 1.0])
    assert "label" not in c and c["judge"][1] == {"score": 5.0, "reason": "all right"}
    assert (d["accepted"], d["response"], d["scores"]) == (False, None, [0.0, 0.0])
    assert d["judge"][0] == {"score": None, "reason": "", "error": "no score in the reply"} and d["judge"][1] is None
    assert (e["accepted"], e["response"], e["scores"], e["score"]) == (True, TASK.format_answer(json.loads(Y)),
                                                                        [0.75, 1.0], 1.0)
    # N requests in flight: 5 prompts on 4 workers, each request taking 0.2 s
    assert stub.peak == 4
    teacher_calls = [b for b in stub.bodies if not b["messages"][-1]["content"].startswith("You grade")]
    assert all(b["n"] == 1 and b["model"] == "stub-model" and b["max_tokens"] == 128 for b in teacher_calls)
    assert sorted({b["temperature"] for b in teacher_calls}) == [0.0, 0.7]  # greedy first, then sampled
    seeds = {b["messages"][-1]["content"].split("\n", 1)[1]: b.get("seed") for b in teacher_calls
             if b["temperature"]}
    assert seeds["C: box-12 seal leak"] == sample_seed(0, 2, 1)
    report = json.loads(result.stdout)
    assert report["accepted"] == 3 and report["acceptance_rate"] == 3 / 5
    assert report["from_labels"] == 1 and report["training_examples"] == 4
    assert report["mean_score"] == pytest.approx((1.0 + 0.5 + 1.0 + 0.0 + 1.0) / 5)
    manifest = read_manifest(out)
    assert manifest.stage == "teach" and manifest.source == {"path": stub.url, "sha256": None,
                                                            "info": manifest.source["info"]}
    assert manifest.details["judge_unparseable"] == 1 and manifest.details["samples_generated"] == 10
    assert manifest.settings["samples"] == 2 and manifest.settings["judge_threshold"] == 4.0
    assert manifest.quality["samples_per_s"] > 0
    assert verify_artifact(out).ok
    assert not progress_path(out).exists()


def test_reject_wrong_keeps_only_the_teachers_answers_and_switching_reinstalls(tmp_path):
    """--reject-wrong: rejection sampling for labelled prompts too; the same finished output rerun with the other
    setting is rewritten from its recorded results, asking the teacher nothing."""
    prompts = write_prompts(tmp_path / "p.jsonl", list(SCRIPT)[:2])  # a: right on its 2nd sample, b: never right
    out = tmp_path / "d.jsonl"
    with StubServer() as stub:
        args = ["teach", stub.url, "--task", "factory-tickets", "--prompts", str(prompts), "--out", str(out),
                "--samples", "2"]
        assert CliRunner().invoke(main, [*args, "--reject-wrong"]).exit_code == 0
        a, b = read_lines(out)
        assert a["response"] == TASK.format_answer(GOLD[a["input"]]) and b["response"] is None
        assert "from" not in b and read_manifest(out).quality["from_labels"] == 0
        asked = len(stub.bodies)
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        assert len(stub.bodies) == asked and "1 labelled prompts the teacher got wrong" in r.output
        assert read_lines(out)[1]["response"] == TASK.format_answer(GOLD[b["input"]])
        assert CliRunner().invoke(main, [*args, "--reject-wrong"]).exit_code == 0
        assert read_lines(out)[1]["response"] is None and len(stub.bodies) == asked


@pytest.mark.parametrize("vote", [0.5, 0.75])
def test_vote_keeps_each_fields_majority_of_unlabelled_prompts(tmp_path, monkeypatch, vote):
    """--vote (self-consistency): an unlabelled prompt's K samples are all made and each field's majority kept,
    accepted when every field's majority holds >= vote of K (an invalid sample counts against it; a tie goes to
    the earlier sample); a labelled prompt is scored by its label as before."""
    monkeypatch.setitem(SCRIPT, "F: box-12 vote", [Y, X, X, "no json"])  # severity: medium 2/4, low 1/4
    monkeypatch.setitem(SCRIPT, "G: box-12 tie", [Y, X, Y, X])  # severity 2/4 each: the greedy one's (low) wins
    prompts = write_prompts(tmp_path / "p.jsonl", ["A: press-3 hose split, press off", "F: box-12 vote",
                                                   "G: box-12 tie"])
    out = tmp_path / "d.jsonl"
    with StubServer() as stub:
        r = CliRunner().invoke(main, ["teach", stub.url, "--task", "factory-tickets", "--prompts", str(prompts),
                                      "--out", str(out), "--samples", "4", "--vote", str(vote), "--json"])
        assert r.exit_code == 0, r.output
        assert stub.calls["F: box-12 vote"] == 4 and stub.calls["G: box-12 tie"] == 4
    a, f, g = read_lines(out)
    assert a["accepted"] and a["response"] == TASK.format_answer(GOLD[a["input"]]) and "agreement" not in a
    assert f["agreement"] == {"asset": 0.75, "category": 0.75, "severity": 0.5, "line_stopped": 0.75}
    assert f["scores"] == [1.0, 1.0, 1.0, 0.0] and f["score"] == 0.5
    assert g["agreement"]["severity"] == 0.5 and g["agreement"]["asset"] == 1.0
    if vote == 0.5:
        assert (f["accepted"], f["response"]) == (True, TASK.format_answer(json.loads(X)))
        assert (g["accepted"], g["response"]) == (True, TASK.format_answer(json.loads(Y)))
    else:
        assert (f["accepted"], f["response"], g["accepted"], g["response"]) == (False, None, False, None)
    quality = read_manifest(out).quality
    assert quality["voted"] == 2 and quality["vote_accepted"] == (2 if vote == 0.5 else 0)
    assert read_manifest(out).settings["vote"] == vote
    assert "self-consistency" in r.output


def test_constrained_teach_sends_each_prompt_its_schema(tmp_path):
    """--constrained: a server teacher gets OpenAI's response_format with the task's schema, its extractive
    asset narrowed to the tags of that prompt's ticket; the judge is asked freely."""
    prompts = write_prompts(tmp_path / "p.jsonl", list(SCRIPT)[:2])
    with StubServer() as stub:
        result = CliRunner().invoke(main, ["teach", stub.url, "--task", "factory-tickets", "--prompts", str(prompts),
                                           "--out", str(tmp_path / "d.jsonl"), "--samples", "1", "--constrained"])
        assert result.exit_code == 0, result.output
    formats = {b["messages"][-1]["content"].split("\n", 1)[1]: b["response_format"] for b in stub.bodies}
    for ticket, tag in (("A: press-3 hose split, press off", "PRESS\\-3"),
                        ("B: CNC-07 encoder dead, cell stopped", "CNC\\-07")):
        f = formats[ticket]
        assert f["type"] == "json_schema" and f["json_schema"]["strict"] is True
        schema = f["json_schema"]["schema"]
        assert list(schema["properties"]) == list(TASK.field_names) and schema["additionalProperties"] is False
        assert schema["properties"]["asset"]["pattern"] == f"^ {{0,2}}(?i:{tag}) {{0,2}}$"


def test_stop_when_perfect_keeps_the_same_answer_with_fewer_samples(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["A: press-3 hose split, press off", "E: box-12 oil"])
    outs = {}
    for flag in ([], ["--stop-when-perfect"]):
        out = tmp_path / f"d{len(flag)}.jsonl"
        with StubServer() as stub:
            r = CliRunner().invoke(main, ["teach", stub.url, "--task", "factory-tickets", "--prompts", str(prompts),
                                          "--out", str(out), "--samples", "3", "--judge", stub.url, *flag])
            assert r.exit_code == 0, r.output
            outs[bool(flag)] = (read_lines(out), dict(stub.calls))
    (full, full_calls), (stopped, stopped_calls) = outs[False], outs[True]
    # each prompt's second sample is perfect (A: all fields, E: the judge's 5): with the flag the third is
    # never asked for (past its script the stub repeats the last reply)
    assert [x["response"] for x in stopped] == [x["response"] for x in full]
    assert [x["samples"] for x in full] == [3, 3] and [x["samples"] for x in stopped] == [2, 2]
    a = "A: press-3 hose split, press off"
    assert (stopped_calls[a], full_calls[a]) == (2, 3)


def test_server_errors_are_retried_then_reported(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["A: press-3 hose split, press off"])
    fast = TeachConfig(samples=2, backoff_s=0.01, retries=2)  # how to reach the teacher is part of teach's settings
    with StubServer(fail_first=2) as stub:  # two 503s, then answers
        teach(stub.url, "factory-tickets", prompts, tmp_path / "d.jsonl", fast)
        assert stub.failed == 2 and stub.requests == 4
    assert read_lines(tmp_path / "d.jsonl")[0]["accepted"] is True
    with StubServer(fail_first=10) as stub:
        with pytest.raises(Exception, match=r"HTTP 503: busy"):
            teach(stub.url, "factory-tickets", prompts, tmp_path / "e.jsonl", fast)
        assert stub.requests == 3  # one try and two retries


def test_unreachable_server_is_one_line(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["A: press-3 hose split, press off"])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(main, ["teach", f"http://127.0.0.1:{port}/v1", "--task", "factory-tickets",
                                       "--prompts", str(prompts), "--out", str(tmp_path / "d.jsonl"),
                                       "--retries", "0"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith(f"error: cannot reach the server at http://127.0.0.1:{port}/v1: ")
    assert "refused" in result.output and "(no retries)" in result.output


# -- the judge's parser ------------------------------------------------------------------

@pytest.mark.parametrize("text, score", [
    ('{"score": 4, "reason": "fine"}', 4.0),
    ('Here is my grade:\n```json\n{"reason": "severity is wrong", "score": 3}\n```', 3.0),
    ('{"Score": "4/5"}', 4.0),
    ('{"rating": 2.5, "reason": "x"}', 2.5),
    ('{"note": "no score here"} then Score: 2', 2.0),
    ("Score: 4/5", 4.0),
    ("The category is debatable. **Score:** 4", 4.0),
    ("A score of 5 needs every field right; this one misses one. Final score = 3", 3.0),
    ("rating: 5 out of 5", 5.0),
    ("I'd say 4/5.", 4.0),
    ("4", 4.0),
    ("**5**\n", 5.0),
    ('{"score": 4, "reason": "cut off', 4.0),  # truncated JSON: the grade was written before the cut
])
def test_judge_parser_finds_the_grade(text, score):
    j = parse_judgement(text)
    assert (j.score, j.error) == (score, None)
    assert j.normalized == (score - 1) / 4


@pytest.mark.parametrize("text, error", [
    (None, "empty reply"),
    ("   \n", "empty reply"),
    ("I cannot grade this.", "no score in the reply"),
    ('{"score": 9, "reason": "great"}', "score 9 is outside 1-5"),
    ('{"score": "excellent"}', 'score "excellent" is not a number'),
    ('{"score": true}', "score true is not a number"),
    ("Score: 0", "score 0 is outside 1-5"),
    ('{"reason": "the answer is cut', "no score in the reply"),  # truncated JSON, no grade in it
    ("12", "score 12 is outside 1-5"),
    ("3 or 4", "no score in the reply"),
])
def test_judge_parser_rejects_malformed_grades(text, error):
    j = parse_judgement(text)
    assert (j.score, j.error, j.normalized) == (None, error, 0.0)


# -- resuming ----------------------------------------------------------------------------

class FakeTeacher(Teacher):
    """Deterministic answers from (input, seed); raises after ``fail_after`` calls."""

    spec = "fake"

    def __init__(self, fail_after: int | None = None):
        self.fail_after, self.calls, self.lock = fail_after, 0, threading.Lock()

    def complete(self, messages, sampling, max_tokens, until_json=False):
        with self.lock:
            self.calls += 1
            if self.fail_after is not None and self.calls > self.fail_after:
                raise RuntimeError("teacher crashed")
        ticket = messages[-1]["content"].split("\n", 1)[1]
        n = int(ticket.split()[-1])
        right = (n + (sampling.seed or 0)) % 3 != 0
        return answer(asset=f"BOX-{n}", severity="medium" if right else "low")


def fake_prompts(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            label = {"asset": f"BOX-{i}", "category": "mechanical", "severity": "medium", "line_stopped": False}
            fh.write(json.dumps({"input": f"ticket {i}", "label": label}) + "\n")
    return path


@pytest.fixture
def fake(monkeypatch):
    made = []

    def use(fail_after=None):
        teacher = FakeTeacher(fail_after)
        made.append(teacher)
        monkeypatch.setattr(teach_mod, "open_teacher", lambda spec, options, workers: teacher)
        return teacher

    return use


def test_interrupted_run_resumes_to_the_same_result(tmp_path, fake):
    prompts = fake_prompts(tmp_path / "p.jsonl", 12)
    config = TeachConfig(samples=3, concurrency=3)
    fake()
    teach("default", "factory-tickets", prompts, tmp_path / "full.jsonl", config)

    out = tmp_path / "d.jsonl"
    fake(fail_after=14)  # dies during the 5th prompt or so, with others in flight
    with pytest.raises(RuntimeError, match="teacher crashed"):
        teach("default", "factory-tickets", prompts, out, config)
    assert not out.exists()
    kept = progress_path(out).read_text().splitlines()
    finished = len(kept) - 1  # after the header
    assert 1 <= finished < 12
    with progress_path(out).open("a") as fh:  # a kill in the middle of writing a line
        fh.write('{"index": 11, "input": "tick')

    with pytest.raises(InvalidInputError, match=r"other settings \(samples 3 -> 2\).*--overwrite"):
        teach("default", "factory-tickets", prompts, out, TeachConfig(samples=2, concurrency=3))

    again = fake()
    report = teach("default", "factory-tickets", prompts, out, TeachConfig(samples=3, concurrency=2))
    assert again.calls == 3 * (12 - finished) and report.resumed == finished
    assert out.read_bytes() == (tmp_path / "full.jsonl").read_bytes()
    assert not progress_path(out).exists()
    q_full, q = read_manifest(tmp_path / "full.jsonl").quality, read_manifest(out).quality
    assert {k: v for k, v in q.items() if k != "samples_per_s"} == \
        {k: v for k, v in q_full.items() if k != "samples_per_s"}
    # fields right: BOX-n always; severity when (n + seed) % 3 != 0 (greedy sample: seed 0)
    lines = read_lines(out)
    assert [line["accepted"] for line in lines][:3] == [any((i + s) % 3 for s in
                                                            [0, sample_seed(0, i, 1), sample_seed(0, i, 2)])
                                                        for i in range(3)]

    # a finished output with the same settings: a larger limit only adds the new prompts
    fake_prompts(tmp_path / "p20.jsonl", 20)
    more = fake()
    teach("default", "factory-tickets", tmp_path / "p20.jsonl", out, TeachConfig(samples=3, concurrency=2))
    assert more.calls == 3 * 8 and read_lines(out)[:12] == lines
    with pytest.raises(InvalidInputError, match="exists with other settings"):
        teach("default", "factory-tickets", prompts, out, TeachConfig(samples=3, seed=1))
    fake()
    teach("default", "factory-tickets", prompts, out, TeachConfig(samples=3, seed=1), overwrite=True)
    assert len(read_lines(out)) == 12


def test_a_prompt_the_server_refuses_names_its_line(tmp_path, fake):
    teacher = fake()
    teacher.complete = lambda *a, **k: (_ for _ in ()).throw(PromptError("HTTP 400: the prompt is too long"))
    prompts = fake_prompts(tmp_path / "p.jsonl", 1)
    with pytest.raises(PromptError, match=rf"^{tmp_path / 'p.jsonl'}:1: HTTP 400: the prompt is too long$"):
        teach("default", "factory-tickets", prompts, tmp_path / "d.jsonl", TeachConfig(samples=1))


# -- bad data files ----------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ("", "p.jsonl: no records (the file is empty)"),
    ('{"input": "CNC-1 down"}\n{"input": "x",\n', "p.jsonl:2: not valid JSON"),
    ('{"label": {}}\n', "p.jsonl:1: "),
    ('{"input": "CNC-1 down", "labl": {}}\n', "p.jsonl:1: unknown key 'labl' (did you mean 'label'?"),
])
def test_bad_data_files_are_one_line_errors(tmp_path, content, message):
    (tmp_path / "p.jsonl").write_text(content)
    result = CliRunner().invoke(main, ["teach", "default", "--task", "factory-tickets", "--prompts",
                                       str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "d.jsonl")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert message in result.output and "Traceback" not in result.output


# -- a local model as the teacher --------------------------------------------------------

TINY_TASK = """schema_version = 1
name = "tiny"
input = "text"
instruction = "Say if the text is long."
[output.long]
type = "bool"
"""


def test_local_tiny_model_end_to_end(tmp_path, make_tiny_dir):
    model = make_tiny_dir(tied=False)
    task = tmp_path / "tiny.toml"
    task.write_text(TINY_TASK)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"input": f"text number {i}", **({"label": {"long": False}} if i % 2
                                                                            else {})}) + "\n" for i in range(4)))
    out = tmp_path / "d.jsonl"
    runner = CliRunner()
    args = ["teach", str(model), "--task", str(task), "--prompts", str(prompts), "--out", str(out), "--samples",
            "2", "--max-new-tokens", "6", "--concurrency", "2", "--threads", "1"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "0/4 prompts accepted" in result.output  # a random model writes no JSON
    lines = read_lines(out)
    gold = '{"long": false}'  # the labelled prompts keep their gold answer
    assert [(line["samples"], line["scores"], line["accepted"], line["response"]) for line in lines] == \
        [(2, [0.0, 0.0], False, None), (2, [0.0, 0.0], False, gold)] * 2
    assert ["label" in line for line in lines] == [False, True, False, True]
    manifest = read_manifest(out)
    assert manifest.source["path"] == str(model.resolve()) and manifest.source["sha256"]
    assert manifest.source["info"]["backend"] == "torch"
    assert any("schema validity alone" in n for n in manifest.notes)
    # the same settings again: nothing left to generate, the same file
    before = out.read_bytes()
    result = runner.invoke(main, args)
    assert result.exit_code == 0 and "0 samples" in result.output and out.read_bytes() == before

    # a prompt longer than the context is named before anything runs
    with prompts.open("a") as fh:
        fh.write(json.dumps({"input": "word " * 1200}) + "\n")
    result = runner.invoke(main, [*args[:7], str(tmp_path / "e.jsonl"), *args[8:]])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {prompts}:5: the prompt has ")
    assert "the teacher's context holds 1024" in result.output
    assert not (tmp_path / "e.jsonl").exists() and not progress_path(tmp_path / "e.jsonl").exists()



@pytest.mark.parametrize("text, done", [
    ("no object yet", False),
    ('Sure: {"a": 1, "b": "x}"', False),  # a brace inside a string does not end the object
    ('Sure: {"a": 1, "b": "x}"}', True),
    ('{"a": {"b": 1}', False),  # the outer object is still open
    ("{not json} {\"a\": 1}", False),  # the first brace never starts JSON: run to the end
    ('```json\n{"a": true}\n``` and then some', True),
])
def test_json_done(text, done):
    assert json_done(text) is done


def test_local_teacher_stops_after_the_first_json_object(make_tiny_dir):
    from supertiny.runtime.engines.sampling import Sampling
    from supertiny.runtime.engines.text import Chunk

    teacher = LocalTeacher(str(make_tiny_dir()), TeacherOptions(threads=1))
    pieces = ["Sure: ", '{"long"', ": true", "}", " because", " it is long"]
    taken = []

    def stream_text(prompt, max_tokens, sampling=None, **kw):
        for p in pieces:
            taken.append(p)
            yield Chunk(p, [0], None)

    teacher._engines[0].stream_text = stream_text
    text = teacher.complete([{"role": "user", "content": "x"}], Sampling(), 32, until_json=True)
    assert text == 'Sure: {"long": true}' and taken == pieces[:4]
    teacher.close()
