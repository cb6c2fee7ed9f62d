"""The OpenAI API's wire format, without a web framework: request parsing and
validation into :class:`Params`, OpenAI-shaped errors (:class:`ApiError`), and the
Prometheus metrics (:class:`Metrics`, the :class:`CountRequests` ASGI middleware).

Pure Python on purpose: :mod:`.app` wires these into starlette, and they are
tested without a socket.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.constrain import Grammar, schema_grammar
from supertiny.runtime.engines.sampling import Sampling
from supertiny.runtime.serving.scheduler import Job, SchedulerStats

if TYPE_CHECKING:
    from supertiny.runtime.serving.server import ServeConfig

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")


# -- errors and request parsing (pure: no starlette) ------------------------------------

class ApiError(Exception):
    """An HTTP error with OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


MAX_JSON_DEPTH = 32  # OpenAI's bodies nest 5 deep at most; deeper is an attack on the parser


def check_json(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse (400) a decoded body nested deeper than ``max_depth`` or holding a string
    that is not valid Unicode (a lone UTF-16 surrogate such as ``"\\ud800"``, which JSON
    allows but no tokenizer can encode). Iterative, so no body can exhaust the stack."""
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "the request holds a string that is not valid Unicode (a lone surrogate)",
                               code="invalid_unicode") from None
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > max_depth:
            raise ApiError(400, f"the request body is nested deeper than {max_depth} levels", code="invalid_json")
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        todo.extend((child, depth + 1) for child in children)


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(name, f"{name} must be a number")
    if value > hi or value < lo or (lo_open and value == lo):
        raise _bad(name, f"{name} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value}")
    return float(value)


def _int(body: dict, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"{name} must be an integer")
    if value < lo or (hi is not None and value > hi):
        raise _bad(name, f"{name} must be {f'in {lo}..{hi}' if hi is not None else f'>= {lo}'}, got {value}")
    return value


def _bool(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is not None and not isinstance(value, bool):
        raise _bad(name, f"{name} must be true or false")
    return bool(value)


@dataclass
class Params:
    """A request's generation settings after validation."""

    prompt: Any
    max_tokens: int
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False
    grammar: Grammar | None = None  # response_format's, when it asks for JSON


def parse_request(body: Any, chat: bool, config: ServeConfig, model_name: str) -> Params:
    """Validate a chat or text completion request body; raises :class:`ApiError` (400/404)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", "model must be a string")
    if model is not None and model != model_name:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {model_name!r}",
                       param="model", code="model_not_found")
    if chat:
        prompt = body.get("messages")
        if not isinstance(prompt, list):
            raise _bad("messages", "messages must be a list of {role, content} objects")
        if not prompt or any(not isinstance(m, dict) for m in prompt):
            raise _bad("messages", "messages must be a non-empty list of objects with role and content")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise _bad("prompt", "prompt must be a string (or a list of one string)")
    for name, neutral in (("frequency_penalty", 0.0), ("presence_penalty", 0.0), ("repetition_penalty", 1.0)):
        if _number(body, name, neutral, -2.0, 2.0) != neutral:
            raise _bad(name, f"{name} is not supported; leave it unset")
    unsupported = {"logit_bias": bool(body.get("logit_bias")), "tools": bool(body.get("tools")),
                   "functions": bool(body.get("functions")), "top_logprobs": body.get("top_logprobs") is not None,
                   "logprobs": body.get("logprobs") not in (None, False),
                   "echo": bool(body.get("echo")), "suffix": bool(body.get("suffix")),
                   "best_of": body.get("best_of") not in (None, 1)}
    for name, used in unsupported.items():
        if used:
            raise _bad(name, f"{name} is not supported by this server")
    if _int(body, "n", 1, 1) != 1:
        raise _bad("n", "n must be 1: this server returns one choice")
    limit = config.max_tokens_limit
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, key, config.max_tokens_default, 1)
    if max_tokens > limit:
        raise _bad(key, f"{key} must be <= {limit} on this server, got {max_tokens}")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [] if stop is None else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise _bad("stop", "stop must be a string or a list of at most 4 strings")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("seed", "seed must be an integer")
    sampling = Sampling(temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
                        top_k=_int(body, "top_k", 0, 0),  # an extension, as llama.cpp's server has
                        seed=None if seed is None else seed & 0xFFFFFFFF)  # backends take 32-bit seeds
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options", "stream_options must be an object")
    return Params(prompt, max_tokens, sampling, stops, stream=_bool(body, "stream"),
                  include_usage=_bool(options or {}, "include_usage"), ignore_eos=_bool(body, "ignore_eos"),
                  grammar=response_grammar(body.get("response_format")))


def response_grammar(response_format: Any) -> Grammar | None:
    """The grammar of OpenAI's ``response_format`` (None for ``text`` or none): ``json_object`` is any JSON
    object, ``json_schema`` the value of ``json_schema.schema``. A schema that cannot be enforced is a 400
    naming what is unsupported, never a free decode."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return schema_grammar('{"type": "object"}')  # any JSON object, compiled once
    if kind != "json_schema":
        raise _bad("response_format", "response_format.type must be text, json_object or json_schema")
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise _bad("response_format", "response_format.json_schema.schema must be a JSON Schema object")
    try:
        return schema_grammar(json.dumps(schema))  # key order kept: it is the order written
    except InvalidInputError as exc:
        raise _bad("response_format", str(exc)) from None


# -- metrics ----------------------------------------------------------------------------

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum, self.n = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[next((i for i, b in enumerate(LATENCY_BUCKETS) if value <= b), len(LATENCY_BUCKETS))] += 1
        self.sum, self.n = self.sum + value, self.n + 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, total = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), self.counts, strict=True):
            total += count
            out.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{bound}"}} {total}')
        tag = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{tag} {self.sum:.6f}", f"{name}_count{tag} {self.n}"]


class Metrics:
    """Request, latency and token counters rendered in Prometheus text format 0.0.4."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.ttft = _Histogram()
        self.prompt_tokens = self.completion_tokens = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[endpoint, status] = self.requests.get((endpoint, status), 0) + 1
            self.latency.setdefault(endpoint, _Histogram()).observe(seconds)

    def job(self, job: Job) -> None:
        with self._lock:
            self.prompt_tokens += job.prompt_tokens
            self.completion_tokens += job.completion_tokens
            if job.ttft_s is not None:
                self.ttft.observe(job.ttft_s)

    def render(self, stats: SchedulerStats) -> str:
        p = "supertiny"
        lines = [f"# HELP {p}_requests_total HTTP requests by endpoint and status code.",
                 f"# TYPE {p}_requests_total counter"]
        with self._lock:
            lines += [f'{p}_requests_total{{endpoint="{e}",code="{c}"}} {n}'
                      for (e, c), n in sorted(self.requests.items())]
            lines += [f"# HELP {p}_request_duration_seconds Time from request to the last byte of the response.",
                      f"# TYPE {p}_request_duration_seconds histogram"]
            for endpoint, hist in sorted(self.latency.items()):
                lines += hist.lines(f"{p}_request_duration_seconds", f'endpoint="{endpoint}"')
            lines += [f"# HELP {p}_time_to_first_token_seconds Time from submission (queueing included) to "
                      "the first generated token.", f"# TYPE {p}_time_to_first_token_seconds histogram",
                      *self.ttft.lines(f"{p}_time_to_first_token_seconds")]
            counters = {"prompt_tokens_total": ("Prompt tokens processed.", self.prompt_tokens),
                        "completion_tokens_total": ("Tokens generated.", self.completion_tokens)}
        gauges = {"queue_depth": ("Requests waiting for a slot.", stats.queued),
                  "requests_in_flight": ("Requests generating on a slot.", stats.in_flight),
                  "slots": ("Engines decoding in parallel.", stats.slots)}
        for kind, table in (("counter", counters), ("gauge", gauges)):
            for name, (help_, value) in table.items():
                lines += [f"# HELP {p}_{name} {help_}", f"# TYPE {p}_{name} {kind}", f"{p}_{name} {value}"]
        for name in ("rejected", "timed_out", "cancelled", "failed"):
            lines += [f"# TYPE {p}_jobs_{name}_total counter", f"{p}_jobs_{name}_total {getattr(stats, name)}"]
        return "\n".join(lines) + "\n"


class CountRequests:
    """ASGI middleware: every response's status and duration, by endpoint (unknown paths: "other")."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "/v1/models" if path.startswith("/v1/models/") else "other"
        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.request(endpoint, status[0], time.perf_counter() - start)
