"""The server never answers 5xx to what a client sent: property-based fuzzing of the request
parser through the ASGI app in-process (hypothesis), plus the two inputs that once gave 500."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from supertiny.runtime.serving.scheduler import Scheduler
from supertiny.runtime.serving.server import ServeConfig, create_app

from conftest import ScriptedEngine

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


class Echo(ScriptedEngine):
    """Replies with its script (a few tokens), so valid requests complete in microseconds."""

    def stream(self, prompt_ids, max_new_tokens, sampling=None, stop_ids=None):
        yield from self.script[:max_new_tokens]


@pytest.fixture(scope="module")
def app_client(tiny_tokenizer):
    script = tiny_tokenizer("Alice was beginning", add_special_tokens=False)["input_ids"]
    config = ServeConfig(model_name="tiny", max_tokens_limit=16, max_body_bytes=1 << 20)
    scheduler = Scheduler([Echo(tiny_tokenizer, script, n_ctx=64)], max_queue=64, request_timeout_s=30)
    with TestClient(create_app(scheduler, "tiny", config), raise_server_exceptions=False) as client:
        yield client


def error_of(response) -> dict:
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize("path", ENDPOINTS)
def test_deeply_nested_body_is_400(app_client, path):
    for depth in (40, 100_000):  # past our limit; past the JSON decoder's recursion limit
        r = app_client.post(path, content="[" * depth + "]" * depth, headers={"content-type": "application/json"})
        assert r.status_code == 400, (depth, r.text)
        assert "nested" in error_of(r)["message"]
    nested = {"model": "tiny", "prompt": "x", "messages": [{"role": "user", "content": "x"}],
              "stop": json.loads("[" * 40 + "]" * 40)}
    r = app_client.post(path, json=nested)
    assert r.status_code == 400 and "nested deeper than 32" in error_of(r)["message"]


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}'),
    ("/v1/completions", '{"prompt": "\\udfff"}'),
    ("/v1/completions", '{"prompt": "ok", "stop": ["\\ud83d"]}'),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x"}], "\\ud800": 1}'),
])
def test_lone_surrogates_are_400(app_client, path, body):
    r = app_client.post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert error_of(r)["code"] == "invalid_unicode"


def test_valid_requests_still_work(app_client):
    r = app_client.post("/v1/completions", json={"prompt": "Alice", "max_tokens": 3, "stop": "\U0001f600"})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    r = app_client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "caf\u00e9 \U0001f600"}],
                                                      "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


# Arbitrary JSON: scalars (lone surrogates included: hypothesis's text() draws them), lists, objects.
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])
                                            | _scalars, "content": _json}), max_size=3) | _json
_fields = {"model": st.sampled_from(["tiny", "other"]) | _json, "messages": _messages, "prompt": _json,
           "max_tokens": st.integers(-2, 40) | _json, "max_completion_tokens": _json,
           "temperature": st.floats(-1, 3) | _json, "top_p": st.floats(-1, 2) | _json, "top_k": _json,
           "stop": _json, "stream": _json, "stream_options": _json, "seed": _json, "n": _json,
           "logprobs": _json, "response_format": _json, "ignore_eos": _json, "presence_penalty": _json}
_bodies = (st.fixed_dictionaries({}, optional=_fields).map(lambda d: json.dumps(d).encode())
           | _json.map(lambda v: json.dumps(v).encode())
           | st.binary(max_size=64))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(path=st.sampled_from(ENDPOINTS), body=_bodies)
def test_fuzzed_bodies_never_get_5xx(app_client, path, body):
    r = app_client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code < 500, (body, r.status_code, r.text)
    if r.status_code >= 400:
        error_of(r)
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]")
    else:
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
