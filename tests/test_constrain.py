"""Constrained decoding (issue 24): a task's JSON schema, the grammar's masks, and every engine held to it."""

import contextlib
import json
import re
import urllib.error
import urllib.request

import openai
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from supertiny.cli import main
from supertiny.errors import InvalidInputError, TaskError
from supertiny.models import resolve
from supertiny.runtime.engines.base import EngineOptions, open_engine
from supertiny.runtime.engines.batched import BatchedLlamaEngine
from supertiny.runtime.engines.constrain import Constraint, Grammar, Vocabulary, answer_grammar
from supertiny.runtime.serving.app import create_app
from supertiny.runtime.serving.pool import open_engines
from supertiny.runtime.serving.server import ServeConfig, bind_socket, build_server, served_task
from supertiny.stages.transfer.policy import sample_answers
from supertiny.tasks import load_task, parse_task, read_task_data, task_json_schema, trained_on

from conftest import build_tiny_model, start_server, write_color_task

TICKETS = load_task("factory-tickets")
SCHEMA = Grammar.from_json_schema(task_json_schema(TICKETS))
ANSWER = {"asset": "CNC-07", "category": "electrical", "line_stopped": True, "severity": "high"}


def accepts(grammar, text, vocab):
    """Whether ``grammar`` lets ``text`` through token by token (each token in its step's mask) and
    ends there (a stop token allowed, or nothing more)."""
    c, tok = Constraint(grammar, vocab), vocab.tokenizer
    width = len(tok)
    for t in tok.encode(text, add_special_tokens=False):
        if not c.allowed(width)[t]:
            return False
        c.accept(t)
    return c.finished or bool(c.allowed(width)[vocab.stop_ids[0]])


@pytest.fixture(scope="module")
def vocab(tiny_tokenizer):
    return Vocabulary(tiny_tokenizer, [tiny_tokenizer.eos_token_id])


def test_the_task_schema_takes_every_labelled_answer(vocab):
    records = read_task_data("examples/factory_tickets/data/test.jsonl", TICKETS, labelled=True)[:40]
    for r in records:
        text = TICKETS.format_answer(r.label)
        assert TICKETS.parse(text).schema_valid and accepts(SCHEMA, text, vocab), text


@pytest.mark.parametrize("text", [
    json.dumps(ANSWER),
    json.dumps(ANSWER, separators=(",", ":")),
    json.dumps(ANSWER, indent=2),
    json.dumps({**ANSWER, "asset": " cnc-07 ", "severity": "High"}),  # the parser normalizes these
])
def test_what_the_parser_takes_the_grammar_takes(vocab, text):
    assert TICKETS.parse(text).schema_valid
    assert accepts(SCHEMA, text, vocab)


@pytest.mark.parametrize("text", [
    json.dumps({**ANSWER, "note": "x"}),
    json.dumps({k: v for k, v in ANSWER.items() if k != "severity"}),
    json.dumps({**ANSWER, "asset": "CNC07"}),
    json.dumps({**ANSWER, "category": "wiring"}),
    json.dumps({**ANSWER, "line_stopped": "true"}),
    "Sure! " + json.dumps(ANSWER),
])
def test_what_the_grammar_refuses(vocab, text):
    assert not accepts(SCHEMA, text, vocab)


def test_an_extractive_field_takes_only_what_the_input_holds(vocab):
    """factory-tickets' asset is copied from the ticket: per record, the grammar allows the tags found there
    (in any case, normalized), not the ones a model might invent; with none found, any tag."""
    text = "Press-3 leaks oil, the feed conveyor conv-12 is fine; XCNC-0712345 is not a tag"
    grammar = answer_grammar(TICKETS)
    assert accepts(grammar(text), json.dumps({**ANSWER, "asset": "PRESS-3"}), vocab)
    assert accepts(grammar(text), json.dumps({**ANSWER, "asset": "conv-12"}), vocab)
    for invented in ("PRS-3", "CNC-07", "CNC-0712345", "PRESS-33"):
        assert not accepts(grammar(text), json.dumps({**ANSWER, "asset": invented}), vocab), invented
    assert accepts(grammar("no tag at all here"), json.dumps(ANSWER), vocab)
    assert grammar(text) is grammar(text)  # compiled once per distinct schema


@pytest.mark.parametrize("field,why", [
    ({"type": "string", "source": "input"}, "output.a.source: a value taken from the input needs the pattern"),
    ({"type": "enum", "values": ["x"], "source": "input"}, "output.a.source: only string fields take source"),
    ({"type": "string", "pattern": "x", "source": "output"}, "output.a.source: expected one of input, got 'output'"),
])
def test_an_extractive_field_is_checked_when_the_task_loads(field, why):
    spec = {"schema_version": 1, "name": "t", "input": "text", "instruction": "Do it.", "output": {"a": field}}
    with pytest.raises(TaskError, match=re.escape(why)):
        parse_task(spec, "t.toml")


@pytest.mark.parametrize("schema,why", [
    ({"type": "object", "properties": {"a": {"type": "string", "format": "bogus"}}}, "Unknown format: bogus"),
    ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
    ({"type": "strang"}, "Invalid type: strang"),
])
def test_a_schema_that_cannot_be_enforced_is_a_one_line_error(schema, why):
    with pytest.raises(InvalidInputError, match=re.escape(why)) as e:
        Grammar.from_json_schema(schema)
    assert "\n" not in str(e.value) and str(e.value).startswith("cannot constrain decoding to this JSON schema")


@pytest.fixture(scope="module")
def engines(tiny_exports):
    opened = {name: open_engine(path, threads=2, n_ctx=256) for name, path in tiny_exports.items()}
    yield opened
    for e in opened.values():
        e.close()


CHATS = [[{"role": "user", "content": f"Ticket: {t}"}] for t in
         ("CNC-07 stopped, smoke from the drive", "press 3 leaks oil", "conveyor noisy", "e-stop broken on WLD-2")]


def test_every_engine_answers_in_the_schema(engines):
    """A random tiny model never writes the schema's JSON freely; held to the grammar it always does,
    and stops once the object is closed."""
    for name, e in engines.items():
        free = [e.complete(c, max_tokens=150).text for c in CHATS]
        held = [e.complete(c, max_tokens=150, grammar=SCHEMA) for c in CHATS]
        assert not any(TICKETS.parse(t).schema_valid for t in free), name
        for r in held:
            assert TICKETS.parse(r.text).schema_valid, (name, r.text)
            assert r.finish_reason == "stop" and r.text.rstrip().endswith("}"), (name, r.text)


def test_a_greedy_reply_the_grammar_allows_is_unchanged(engines, tiny_tokenizer):
    """Masking only removes tokens: where the free reply is allowed throughout, the held one is the same."""
    specials = set(tiny_tokenizer.all_special_ids)
    for name, e in engines.items():
        ids = e.encode("Alice was beginning to get very tired of sitting")
        free = e.generate(ids, 20, stop_ids=[])
        free = free[:next((i for i, t in enumerate(free) if t in specials), len(free))]
        text = tiny_tokenizer.decode(free)
        grammar = Grammar.from_regex(re.escape(text) + "|" + re.escape(text) + "x{2,5}")
        held = list(e.stream(ids, 20, stop_ids=[], constraint=e.constraint(grammar)))
        assert held == free, name


def test_batched_sequences_each_hold_to_their_own_grammar(engines, tiny_exports):
    """Three sequences in one llama.cpp batch, two grammars: each reply equals the single engine's."""
    single = engines["llama.cpp"]
    prompts = [single.chat_ids(c) for c in CHATS[:3]]
    grammars = [SCHEMA, Grammar.from_regex("(yes|no), because [a-z ]{1,30}\\."), SCHEMA]
    want = [list(single.stream(p, 150, stop_ids=single.stop_ids, constraint=single.constraint(g)))
            for p, g in zip(prompts, grammars, strict=True)]
    batched = BatchedLlamaEngine(tiny_exports["llama.cpp"], n_ctx=256, n_threads=1, parallel=3, n_batch=16)
    try:
        slots = {batched.add(p, 150, None, batched.stop_ids, batched.constraint(g)): i
                 for i, (p, g) in enumerate(zip(prompts, grammars, strict=True))}
        got: dict[int, list[int]] = {i: [] for i in slots.values()}
        while batched.active:
            for slot, token, _ in batched.step():
                if token is not None:
                    got[slots[slot]].append(token)
    finally:
        batched.close()
    assert [got[i] for i in range(3)] == want
    assert re.fullmatch("(yes|no), because [a-z ]{1,30}\\.", single.tokenizer.decode(want[1]))


def test_eval_decodes_constrained_on_request_and_free_by_default(tmp_path, tiny_exports):
    write_color_task(tmp_path, records=4, dev=0)
    run = CliRunner().invoke
    base = ["eval", str(tiny_exports["llama.cpp"]), "--task", str(tmp_path / "task.toml"), "--data",
            str(tmp_path / "data.jsonl"), "--max-new-tokens", "40", "--threads", "1", "--json"]
    for flag, decoding, valid in (([], "free", None), (["--constrained"], "constrained", 1.0)):
        result = run(main, base + flag)
        assert result.exit_code == 0, result.output
        report = json.loads(result.output[result.output.index("{"):])
        assert report["decoding"] == decoding
        if valid is not None:
            assert report["schema_valid"] == valid
    assert not trained_on(tiny_exports["llama.cpp"], TICKETS)  # no manifest: not trained on the task


@pytest.mark.parametrize("kind,batched", [("torch", False), ("llama.cpp", False), ("llama.cpp", True)])
def test_teach_held_to_the_schema_accepts_what_a_free_teacher_cannot_write(tmp_path, tiny_exports, kind, batched):
    """A random tiny teacher writes no JSON freely (0 accepted); held to the task's schema every answer is
    valid, and without labels or a judge schema validity accepts it."""
    write_color_task(tmp_path, records=4, dev=0)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input": f"the thing number {i}"}) + "\n" for i in range(4)))
    args = ["teach", str(tiny_exports[kind]), "--task", str(tmp_path / "task.toml"), "--prompts", str(prompts),
            "--samples", "2", "--max-new-tokens", "80", "--concurrency", "2", "--threads", "1", "--json",
            *(["--batched"] if batched else [])]
    run = CliRunner().invoke
    free = run(main, [*args, "--out", str(tmp_path / "free.jsonl")])
    held = run(main, [*args, "--out", str(tmp_path / "held.jsonl"), "--constrained"])
    assert free.exit_code == 0 and held.exit_code == 0, free.output + held.output
    assert json.loads(free.stdout)["accepted"] == 0 and json.loads(held.stdout)["accepted"] == 4
    task = load_task(tmp_path / "task.toml")
    for line in (tmp_path / "held.jsonl").read_text().splitlines():
        assert task.parse(json.loads(line)["response"]).schema_valid


@contextlib.contextmanager
def served(artifact, backend, parallel, task=None):
    """A server on ``artifact`` (``parallel`` > 0: one batched engine) over loopback; yields its ``/v1`` URL."""
    kind, path = resolve(artifact)
    config = ServeConfig(port=0, model_name="tiny", parallel=parallel, max_tokens_limit=150)
    pool = open_engines(path, kind, backend, EngineOptions(threads=1, n_ctx=256), parallel=parallel)
    scheduler = pool.scheduler()
    sock = bind_socket("127.0.0.1", 0)
    server = build_server(create_app(scheduler, "tiny", config, task), config)
    thread = start_server(server, sock)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        scheduler.close()
        pool.close()


@pytest.mark.parametrize("kind,parallel", [("llama.cpp", 0), ("llama.cpp", 2), ("onnxruntime", 2), ("torch", 0)])
def test_the_server_speaks_openai_structured_outputs(tiny_exports, kind, parallel):
    """response_format through the official client on every scheduler (engine copies, continuous batches,
    static batches): json_schema answers validate, json_object ones parse, an unenforceable schema is a 400."""
    ticket = {"type": "json_schema", "json_schema": {"name": "ticket", "strict": True,
                                                     "schema": task_json_schema(TICKETS)}}

    class Verdict(BaseModel):
        ok: bool
        reason: str

    with served(tiny_exports[kind], kind, parallel) as base:
        client = openai.OpenAI(base_url=base, api_key="-", max_retries=0, timeout=60)
        for chat in CHATS[:2]:
            r = client.chat.completions.create(model="tiny", messages=chat, max_tokens=150, temperature=0,
                                               response_format=ticket)
            assert TICKETS.parse(r.choices[0].message.content).schema_valid, r.choices[0].message.content
            assert r.choices[0].finish_reason == "stop"
            r = client.chat.completions.create(model="tiny", messages=chat, max_tokens=150, temperature=0,
                                               response_format={"type": "json_object"})
            assert isinstance(json.loads(r.choices[0].message.content), dict)
        parsed = client.chat.completions.parse(model="tiny", messages=CHATS[0], max_tokens=150, temperature=0,
                                               response_format=Verdict)  # the client's pydantic helper
        assert isinstance(parsed.choices[0].message.parsed, Verdict)
        bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "bogus"}}}
        with pytest.raises(openai.BadRequestError, match="Unknown format: bogus"):
            client.chat.completions.create(model="tiny", messages=CHATS[0], response_format=bad)


def post(url, body):
    """``(status, JSON body)`` of a POST (an HTTP error's too)."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_served_task_answers_with_its_validated_object(tmp_path, tiny_exports):
    """POST /v1/task: the input text in, the task's JSON answer out (held to the schema); a bad body is a 400,
    an answer cut off before it is valid a 502, never an invalid object."""
    write_color_task(tmp_path, records=1, dev=0)
    task = load_task(tmp_path / "task.toml")
    with served(tiny_exports["llama.cpp"], "llama.cpp", 2, task) as base:
        url = f"{base}/task"
        for text in ("the red one, bright", "a dark blue one"):
            status, body = post(url, {"input": text})
            assert status == 200, body
            assert body["task"] == "tiny-colors" and task.parse(json.dumps(body["answer"])).schema_valid
            assert body["answer"] == task.parse(body["text"]).answer and body["usage"]["completion_tokens"] > 0
        assert post(url, {"text": "x"})[0] == 400
        status, body = post(url, {"input": "red", "max_tokens": 2})
        assert status == 502 and body["error"]["code"] == "invalid_answer"


def test_serving_a_bundle_answers_its_bundled_task(tmp_path, tiny_exports):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert served_task(bundle, tiny_exports["llama.cpp"], None) is None
    write_color_task(bundle, records=1, dev=0)  # writes bundle/task.toml
    assert served_task(bundle, tiny_exports["llama.cpp"], None).name == "tiny-colors"
    assert served_task(bundle, tiny_exports["llama.cpp"], "factory-tickets").name == "factory-tickets"


def test_rl_samples_held_to_the_schema(tmp_path, tiny_tokenizer):
    """Group sampling through generate with one constraint per answer: every sampled answer is valid, and
    the samples still differ (sampling among the allowed tokens, not a forced greedy path)."""
    write_color_task(tmp_path, records=1, dev=0)
    task = load_task(tmp_path / "task.toml")
    model = build_tiny_model(tied=False, seed=4)
    grammar = answer_grammar(task)("the red one")
    vocab = Vocabulary(tiny_tokenizer, [tiny_tokenizer.eos_token_id])
    prompts = [tiny_tokenizer.encode("the red one"), tiny_tokenizer.encode("a blue thing")]
    held = [Constraint(grammar, vocab) for _ in range(6)]
    answers = sample_answers(model, tiny_tokenizer, prompts, 3, 1.0, 60, seed=5, constraints=held)
    texts = tiny_tokenizer.batch_decode(answers, skip_special_tokens=True)
    assert all(task.parse(t).schema_valid for t in texts), texts
    assert len(set(texts)) > 1
    free = tiny_tokenizer.batch_decode(sample_answers(model, tiny_tokenizer, prompts, 3, 1.0, 60, seed=5),
                                       skip_special_tokens=True)
    assert not any(task.parse(t).schema_valid for t in free)


def test_torch_batched_task_eval_is_held_like_one_at_a_time(engines):
    """The torch engine's batched completion (task eval's fast path) with a grammar per row gives the replies
    of one-at-a-time constrained decoding."""
    e = engines["torch"]
    grammars = [SCHEMA, Grammar.from_regex("(yes|no), because [a-z ]{1,30}\\."), SCHEMA, None]
    batched = e.complete_batch(CHATS, max_tokens=150, grammars=grammars)
    alone = [e.complete(c, max_tokens=150, **({"grammar": g} if g else {})).text
             for c, g in zip(CHATS, grammars, strict=True)]
    assert batched == alone
    assert TICKETS.parse(batched[0]).schema_valid and TICKETS.parse(batched[2]).schema_valid
