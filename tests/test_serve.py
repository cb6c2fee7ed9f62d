"""The OpenAI-compatible server on a tiny GGUF model: the official client over a real socket,
raw HTTP for malformed requests, concurrency, overload, timeouts, shutdown and metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import openai
import pytest
from click.testing import CliRunner

from supertiny.cli import main
from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.base import EngineOptions, open_engine
from supertiny.runtime.serving.scheduler import Scheduler
from supertiny.runtime.serving.server import ServeConfig, bind_socket, build_server, create_app

from conftest import start_server

KEY = "test-key"
CHAT = [{"role": "user", "content": "Alice was beginning to get very tired"}]



def engine(path, delay: float = 0.0):
    e = open_engine(path, n_ctx=256, threads=1)
    if delay:  # a slow model: every token takes `delay` seconds
        fast = e.stream

        def slow(*args, **kw):
            tokens = fast(*args, **kw)
            try:
                for token in tokens:
                    time.sleep(delay)
                    yield token
            finally:
                tokens.close()

        e.stream = slow
    return e


@pytest.fixture(scope="module")
def reference(gguf_path):
    return engine(gguf_path)


@contextlib.contextmanager
def running(engines, **kw):
    """A real uvicorn server on a free loopback port, in a thread."""
    config = ServeConfig(port=0, model_name="tiny", **kw)
    scheduler = Scheduler(engines, config.max_queue, config.request_timeout_s)
    app = create_app(scheduler, "tiny", config)
    sock = bind_socket("127.0.0.1", 0)
    server = build_server(app, config)
    thread = start_server(server, sock)
    port = sock.getsockname()[1]
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, scheduler=scheduler, server=server,
                              app=app, thread=thread)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def srv(gguf_path):
    with running([engine(gguf_path), engine(gguf_path)], api_key=KEY, max_body_bytes=4096,
                 max_tokens_limit=64) as s:
        yield s


def client(s, key: str = KEY, timeout: float = 30) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{s.url}/v1", api_key=key, max_retries=0, timeout=timeout)


def raw(s, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
        key: str | None = KEY) -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    hdrs = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}),
            **(headers or {})}
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    return resp.status, dict(resp.getheaders()), text


def error_of(status_body) -> dict:
    status, headers, text = status_body
    assert headers["content-type"].startswith("application/json"), (status, text)
    err = json.loads(text)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


# -- the official client ---------------------------------------------------------------------------

def test_chat_completion_equals_engine_greedy(srv, reference):
    r = client(srv).chat.completions.create(model="tiny", messages=CHAT, max_tokens=16, temperature=0, user="u1",
                                            presence_penalty=0)
    expected = reference.complete(CHAT, max_tokens=16)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected.text
    assert r.choices[0].finish_reason == expected.finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (expected.prompt_tokens, 16)
    assert r.usage.total_tokens == expected.prompt_tokens + 16


def test_streaming_chat_equals_the_whole_reply(srv):
    c = client(srv)
    whole = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=20, temperature=0)
    chunks = list(c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [ch for ch in chunks if ch.choices]
    assert "".join(ch.choices[0].delta.content or "" for ch in with_choices) == whole.choices[0].message.content
    assert with_choices[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    # without stream_options there is no usage chunk; the stream still ends with [DONE]
    status, headers, text = raw(srv, "POST", "/v1/chat/completions", json.dumps(
        {"model": "tiny", "messages": CHAT, "max_tokens": 5, "temperature": 0, "stream": True}))
    events = [e for e in text.split("\n\n") if e]
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert all(json.loads(e[6:])["choices"] for e in events[:-1])


def test_completions_endpoint(srv, reference):
    c = client(srv)
    r = c.completions.create(model="tiny", prompt="Alice was", max_tokens=12, temperature=0)
    expected = reference.complete("Alice was", max_tokens=12)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert r.choices[0].text == expected.text and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == expected.prompt_tokens
    streamed = list(c.completions.create(model="tiny", prompt=["Alice was"], max_tokens=12, temperature=0,
                                         stream=True))
    assert "".join(ch.choices[0].text for ch in streamed) == expected.text
    assert streamed[-1].choices[0].finish_reason == "length"


def test_models_and_unknown_model(srv):
    c = client(srv)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    assert c.models.retrieve("tiny").owned_by == "supertiny"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4")
    with pytest.raises(openai.NotFoundError) as exc:
        c.chat.completions.create(model="gpt-4", messages=CHAT, max_tokens=2)
    assert exc.value.body["code"] == "model_not_found"


def test_stop_strings(srv, reference):
    full = reference.complete("Alice was", max_tokens=24).text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    r = client(srv).completions.create(model="tiny", prompt="Alice was", max_tokens=24, temperature=0,
                                       stop=[stop, "never-there"])
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    chunks = list(client(srv).completions.create(model="tiny", prompt="Alice was", max_tokens=24, temperature=0,
                                                 stop=stop, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == full[: full.index(stop)]


def test_api_key_is_required(srv):
    with pytest.raises(openai.AuthenticationError):
        client(srv, key="wrong").models.list()
    err = error_of(raw(srv, "POST", "/v1/chat/completions", json.dumps({"messages": CHAT}), key=None))
    assert err["code"] == "invalid_api_key"
    assert raw(srv, "GET", "/metrics", key=None)[0] == 401
    assert raw(srv, "GET", "/health", key=None)[:3:2] == (200, '{"status":"ok"}')


@pytest.mark.parametrize("kw, param", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 2}, "n"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1.0}, "frequency_penalty"),
    ({"max_tokens": 65}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"logprobs": True}, "logprobs"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x " * 400}]}, "messages"),  # longer than the context
    ({"extra_body": {"top_k": -1}}, "top_k"),
    ({"extra_body": {"temperature": "hot"}}, "temperature"),
])
def test_bad_parameters_are_400(srv, kw, param):
    args = {"model": "tiny", "messages": CHAT, "max_tokens": 4, **kw}
    with pytest.raises(openai.BadRequestError) as exc:
        client(srv).chat.completions.create(**args)
    assert exc.value.body["param"] == param, exc.value.body


def test_completions_rejects_echo_and_bad_prompts(srv):
    c = client(srv)
    for kw in ({"echo": True}, {"prompt": ["a", "b"]}, {"prompt": ""}, {"prompt": 5}):
        with pytest.raises(openai.BadRequestError):
            c.completions.create(**{"model": "tiny", "prompt": "Alice", "max_tokens": 2, **kw})


@pytest.mark.parametrize("method, path, body, status", [
    ("POST", "/v1/chat/completions", "{not json", 400),
    ("POST", "/v1/chat/completions", b"\xff\xfe", 400),
    ("POST", "/v1/chat/completions", "[1, 2]", 400),
    ("POST", "/v1/chat/completions", '{"messages": "hi"}', 400),
    ("POST", "/v1/chat/completions", '{"messages": [1, 2]}', 400),
    ("POST", "/v1/chat/completions", json.dumps({"messages": CHAT, "max_tokens": "many"}), 400),
    ("POST", "/v1/chat/completions", json.dumps({"messages": CHAT, "stream": "yes"}), 400),
    ("POST", "/v1/chat/completions", json.dumps({"messages": CHAT, "stop": 3}), 400),
    ("POST", "/v1/chat/completions", json.dumps({"messages": CHAT, "seed": 1.5}), 400),
    ("POST", "/v1/chat/completions", json.dumps({"messages": CHAT, "model": 3}), 400),
    ("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": 3}]}), 400),
    ("POST", "/v1/chat/completions", json.dumps({"messages": CHAT, "temperature": float("nan")}), 400),
    ("POST", "/v1/completions", json.dumps({"prompt": "hi", "stream_options": 1}), 400),
    ("POST", "/v1/chat/completions", json.dumps({"messages": CHAT, "pad": "x" * 5000}), 413),
    ("GET", "/v1/nothing", None, 404),
    ("GET", "/v1/chat/completions", None, 405),
    ("POST", "/health", "{}", 405),
])
def test_malformed_requests_get_json_errors(srv, method, path, body, status):
    got = raw(srv, method, path, body)
    assert got[0] == status
    error_of(got)


def test_request_body_declared_too_large(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Length", str(10**9))
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.endheaders()  # no body sent: the server refuses on the header alone
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "request_too_large"
    conn.close()


# -- load, time and shutdown -------------------------------------------------------------------------

def test_concurrent_clients_get_their_own_replies(srv, reference):
    prompts = ["Alice was", "The Rabbit", "Down the rabbit hole", "Curiouser and curiouser", "The Queen",
               "Off with", "The Hatter", "tea party"]
    expected = [reference.complete(p, max_tokens=10 + i).text for i, p in enumerate(prompts)]
    expected_chat = [reference.complete(CHAT, max_tokens=4 + i).text for i in range(8)]

    def ask(i):
        c = client(srv)
        text = c.completions.create(model="tiny", prompt=prompts[i], max_tokens=10 + i, temperature=0)
        chat = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4 + i, temperature=0)
        return text.choices[0].text, chat.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, range(8)))
    assert got == list(zip(expected, expected_chat, strict=True))
    assert len(set(expected)) == 8  # the replies differ, so a mix-up would show


def test_overload_gets_429_and_nothing_hangs(gguf_path, reference):
    expected = reference.complete("Alice was", max_tokens=15).text
    with running([engine(gguf_path, delay=0.02)], max_queue=1) as s:
        def ask(_):
            try:
                stream = client(s, timeout=20).completions.create(model="tiny", prompt="Alice was", max_tokens=15,
                                                                  temperature=0, stream=True)
                return "".join(ch.choices[0].text for ch in stream)
            except openai.RateLimitError as exc:
                assert exc.response.headers["retry-after"] == "1"
                return 429

        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(ask, range(8)))
        assert time.monotonic() - start < 15
        assert 429 in got and 1 <= len([g for g in got if g != 429]) <= 7
        assert all(g == expected for g in got if g != 429)
        assert s.scheduler.stats().rejected == got.count(429)


def test_timeout_is_504_and_the_slot_recovers(gguf_path):
    with running([engine(gguf_path, delay=0.05)], request_timeout_s=0.4) as s:
        with pytest.raises(openai.APIStatusError) as exc:
            client(s).completions.create(model="tiny", prompt="Alice", max_tokens=100, temperature=0)
        assert exc.value.status_code == 504 and exc.value.body["code"] == "timeout"
        stream = client(s).completions.create(model="tiny", prompt="Alice", max_tokens=100, temperature=0,
                                              stream=True)
        with pytest.raises(openai.APIError, match="longer than 0.4 s"):  # headers were sent: an SSE error
            list(stream)
        r = client(s).completions.create(model="tiny", prompt="Alice", max_tokens=2, temperature=0)
        assert r.choices[0].finish_reason == "length"
        assert s.scheduler.stats().timed_out == 2


def test_client_disconnect_cancels_the_job(gguf_path):
    with running([engine(gguf_path, delay=0.02)]) as s:
        for stream in (True, False):
            sock = socket.create_connection(("127.0.0.1", s.port))
            body = json.dumps({"prompt": "Alice", "max_tokens": 200, "temperature": 0, "stream": stream})
            sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            end = time.monotonic() + 5
            while s.scheduler.stats().in_flight == 0:
                assert time.monotonic() < end
                time.sleep(0.01)
            if stream:
                assert sock.recv(100).startswith(b"HTTP/1.1 200")
            sock.close()
            end = time.monotonic() + 2  # 200 tokens would take 4 s
            while s.scheduler.stats().in_flight:
                assert time.monotonic() < end, "the job ran on after the client left"
                time.sleep(0.01)
        assert s.scheduler.stats().cancelled == 2


def test_engine_failure_is_500_and_the_server_keeps_serving(gguf_path):
    e = engine(gguf_path)
    fine = e.stream
    calls = []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("kaboom")
        return fine(*args, **kw)

    e.stream = flaky
    with running([e]) as s:
        err = error_of(raw(s, "POST", "/v1/completions", json.dumps({"prompt": "Alice", "max_tokens": 3}), key=None))
        assert err["type"] == "server_error" and "RuntimeError" in err["message"]
        r = client(s).completions.create(model="tiny", prompt="Alice", max_tokens=3, temperature=0)
        assert r.usage.completion_tokens == 3


def test_graceful_shutdown_finishes_requests_in_flight(gguf_path, reference):
    expected = reference.complete("Alice", max_tokens=40).text
    with running([engine(gguf_path, delay=0.02)]) as s:
        s.app.state.draining = True  # what a signal sets: new requests and /health get 503
        assert raw(s, "GET", "/health")[0] == 503
        assert error_of(raw(s, "POST", "/v1/completions", '{"prompt": "a"}'))["code"] == "shutting_down"
        s.app.state.draining = False
        result = {}
        worker = threading.Thread(target=lambda: result.update(r=client(s).completions.create(
            model="tiny", prompt="Alice", max_tokens=40, temperature=0)))
        worker.start()
        while s.scheduler.stats().in_flight == 0:
            time.sleep(0.01)
        s.server.handle_exit(signal.SIGTERM, None)  # what SIGTERM does
        s.thread.join(20)
        worker.join(5)
        assert not s.thread.is_alive()
        assert result["r"].choices[0].text == expected  # finished, not cut off
        assert s.scheduler.closing
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", s.port), timeout=2)


def test_metrics_count_requests_and_tokens(srv):
    c = client(srv)
    c.completions.create(model="tiny", prompt="Alice", max_tokens=5, temperature=0)
    c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=3, temperature=0)
    status, headers, text = raw(srv, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['supertiny_requests_total{endpoint="/v1/completions",code="200"}'] >= 1
    assert values['supertiny_requests_total{endpoint="/v1/chat/completions",code="200"}'] >= 1
    assert values["supertiny_completion_tokens_total"] >= 8 and values["supertiny_prompt_tokens_total"] >= 2
    assert values["supertiny_time_to_first_token_seconds_count"] >= 2
    assert values['supertiny_request_duration_seconds_count{endpoint="/v1/completions"}'] >= 1
    assert values["supertiny_queue_depth"] == 0 and values["supertiny_requests_in_flight"] == 0
    assert values["supertiny_slots"] == 2


# -- config and CLI ---------------------------------------------------------------------------------

def test_config_defaults_and_validation():
    config = ServeConfig()
    assert (config.host, config.port, config.api_key, config.slots) == ("127.0.0.1", 8000, None, 1)
    for bad in ({"slots": 0}, {"port": 70000}, {"max_queue": -1}, {"request_timeout_s": 0}, {"backend": "vllm"},
                {"default_max_tokens": 4096}, {"api_key": ""}, {"max_body_bytes": 10}):
        with pytest.raises(InvalidInputError, match="must"):
            ServeConfig(**bad)
    for bad in ({"device": "tpu"}, {"dtype": "int8"}, {"provider": "tpu"}, {"threads": 0}, {"gpu_layers": -2}):
        with pytest.raises(InvalidInputError, match="must"):
            ServeConfig(engine=EngineOptions(**bad))
    with pytest.raises(InvalidInputError, match="n_ctx must be >= 16"):
        ServeConfig(engine=EngineOptions(n_ctx=8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1


def test_cli_defaults_to_loopback_and_checks_options_first(monkeypatch, tmp_path):
    import supertiny.runtime.serving.server as serve_module

    seen = {}
    monkeypatch.setattr(serve_module, "serve", lambda artifact, config, log: seen.update(config=config))
    monkeypatch.setenv("SUPERTINY_API_KEY", "from-env")
    assert CliRunner().invoke(main, ["serve", "model.gguf"]).exit_code == 0
    assert seen["config"].host == "127.0.0.1" and seen["config"].api_key == "from-env"
    # --parallel auto: a GGUF file with one slot is batched, everything else is not
    from supertiny.runtime.serving.server import AUTO_PARALLEL, parallel_for

    auto = seen["config"]
    assert auto.parallel is None and parallel_for(auto, "gguf") == AUTO_PARALLEL == 4
    assert parallel_for(auto, "onnx") == parallel_for(auto, "hf") == 0
    assert parallel_for(dataclasses.replace(auto, slots=2), "gguf") == 0
    assert parallel_for(dataclasses.replace(auto, backend="torch"), "gguf") == 0
    assert CliRunner().invoke(main, ["serve", "model.gguf", "--parallel", "0"]).exit_code == 0
    assert seen["config"].parallel == 0
    monkeypatch.undo()
    result = CliRunner().invoke(main, ["serve", "model.gguf", "--parallel", "x"])
    assert result.exit_code == 2 and "--parallel takes auto or a whole number" in result.output
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "missing.gguf"), "--slots", "0"])
    assert result.exit_code == 2 and "slots must be >= 1" in result.output
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "missing.gguf"), "--port", "0"])
    assert result.exit_code == 2 and "missing.gguf" in result.output
