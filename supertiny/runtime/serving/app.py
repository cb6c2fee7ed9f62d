"""The ASGI app of :mod:`.server`: OpenAI's endpoints over a scheduler, and its error mapping.

Split from :mod:`.server` (which re-exports :func:`create_app`): the app answers requests;
``serve`` opens the engines, binds the socket and runs uvicorn.

The handlers are module-level coroutines; what they share lives on ``app.state``, filled by
:func:`create_app`: ``scheduler``, ``model_name``, ``config`` (:class:`~.server.ServeConfig`),
``metrics`` (:class:`~.openai_api.Metrics`), ``created`` (the Unix time ``/v1/models``
shows) and ``draining`` (set on SIGINT/SIGTERM: new requests get 503).

starlette is the ``serve`` extra, so this module imports without it: the handlers import
its names when a request arrives, after :func:`create_app` has checked it is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

from supertiny.errors import MissingExtraError, UserError
from supertiny.runtime.engines.constrain import answer_grammar
from supertiny.runtime.engines.sampling import Sampling
from supertiny.runtime.engines.text import Chunk
from supertiny.runtime.serving.openai_api import ApiError, CountRequests, Metrics, Params, check_json, parse_request
from supertiny.runtime.serving.scheduler import Job, JobTimeout, QueueFull, Scheduler, ShuttingDown
from supertiny.tasks import MAX_ANSWER_TOKENS, Task

if TYPE_CHECKING:
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response

    from supertiny.runtime.serving.server import ServeConfig

# the server's logger keeps the name operators configured before the runtime was split into folders
logger = logging.getLogger("supertiny.runtime.serve")


def require_extra() -> None:
    """Raise :class:`MissingExtraError` unless starlette and uvicorn (the ``serve`` extra) are installed."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MissingExtraError("supertiny serve needs starlette and uvicorn: pip install 'supertiny[serve]'") \
            from None


def create_app(scheduler: Scheduler, model_name: str, config: ServeConfig, task: Task | None = None) -> Any:
    """The ASGI app (a ``Starlette``) answering OpenAI's API from ``scheduler``.

    Args:
        scheduler: runs the jobs; the app's lifespan closes it (gracefully) on shutdown.
        model_name: the name ``/v1/models`` lists and requests must use.
        config: limits and the API key (the engine options in it are not used here).
        task: answered at ``POST /v1/task`` (``{"input": text}`` in, the task's validated JSON answer
            out), so a device-side program never builds prompts.
    """
    require_extra()
    from starlette.applications import Starlette  # the serve extra, checked just above
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Route

    metrics = Metrics()
    routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/v1/models/{name:path}", model, methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/metrics", prometheus, methods=["GET"])]
    if task is not None:
        routes.append(Route("/v1/task", task_answer, methods=["POST"]))
    app = Starlette(routes=routes, lifespan=_lifespan, middleware=[Middleware(CountRequests, metrics=metrics)],
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.scheduler, app.state.model_name, app.state.config = scheduler, model_name, config
    app.state.metrics, app.state.created, app.state.draining = metrics, int(time.time()), False
    app.state.task, app.state.task_grammar = task, answer_grammar(task) if task is not None else None
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    from starlette.concurrency import run_in_threadpool  # the serve extra, checked by create_app

    yield
    app.state.draining = True
    await run_in_threadpool(app.state.scheduler.close)  # in-flight and queued jobs finish first


# -- the endpoints -----------------------------------------------------------------------

async def chat_completions(request: Request) -> Response:
    return await _completion(request, chat=True)


async def completions(request: Request) -> Response:
    return await _completion(request, chat=False)


async def models(request: Request) -> Response:
    _check_auth(request)
    return _json({"object": "list", "data": [_model_card(request.app.state)]})


async def model(request: Request) -> Response:
    _check_auth(request)
    state, name = request.app.state, request.path_params["name"]
    if name != state.model_name:
        raise ApiError(404, f"the model {name!r} does not exist", code="model_not_found")
    return _json(_model_card(state))


async def health(request: Request) -> Response:
    if _refused(request.app.state) is not None:
        return _json({"status": "shutting_down"}, status=503)
    return _json({"status": "ok"})


async def prometheus(request: Request) -> Response:
    from starlette.responses import PlainTextResponse  # the serve extra, checked by create_app

    _check_auth(request)
    state = request.app.state
    return PlainTextResponse(state.metrics.render(state.scheduler.stats()), media_type="text/plain; version=0.0.4")


async def task_answer(request: Request) -> Response:
    """``{"input": text[, "max_tokens": n]}`` -> ``{"task", "answer", "text", "finish_reason", "usage"}``: the
    model's greedy answer held to the task's schema (its extractive fields to this input's spans), parsed
    and checked. An answer that still is not valid (cut off at ``max_tokens``) is a 502, never a bad object."""
    from starlette.concurrency import run_in_threadpool  # the serve extra, checked by create_app

    state = request.app.state
    _check_auth(request)
    if (error := _refused(state)) is not None:
        raise error
    body = await _read_json(request)
    text = body.get("input") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "the request body must be {\"input\": \"<the text>\"}", param="input",
                       code="invalid_value")
    limit = body.get("max_tokens", MAX_ANSWER_TOKENS)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= state.config.max_tokens_limit:
        raise ApiError(400, f"max_tokens must be an integer in 1..{state.config.max_tokens_limit}",
                       param="max_tokens", code="invalid_value")
    task: Task = state.task
    grammar = await run_in_threadpool(state.task_grammar, text)
    job = await _submit(state.scheduler, Params(task.messages(text), limit, Sampling(), grammar=grammar), True)
    try:
        chunks = await _until_disconnect(request, _collect(job.aiter()))
    except Exception as exc:
        raise _job_error(exc) from None
    finally:
        job.cancel()
        state.metrics.job(job)
    if chunks is None:
        from starlette.responses import Response

        return Response(status_code=499)
    reply, reason = "".join(c.text for c in chunks), chunks[-1].finish_reason
    parsed = task.parse(reply)
    if not parsed.schema_valid:
        raise ApiError(502, f"the model's answer is not a valid {task.name} answer ({reason}): "
                       + "; ".join(f"{k}: {v}" for k, v in parsed.problems.items()), code="invalid_answer")
    return _json({"task": task.name, "answer": parsed.answer, "text": reply, "finish_reason": reason,
                  "usage": _usage(job)})


# -- errors as OpenAI's error objects -----------------------------------------------------

async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _json(exc.body(), status=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own errors (no route, wrong method) in OpenAI's shape."""
    words = {404: ("not_found_error", f"no route {request.method} {request.url.path}", "not_found"),
             405: ("invalid_request_error", f"method {request.method} is not allowed on {request.url.path}",
                   "method_not_allowed")}
    type_, message, code = words.get(exc.status_code, ("invalid_request_error", str(exc.detail), None))
    return await api_error(request, ApiError(exc.status_code, message, type_, code=code, headers=exc.headers))


async def server_error(request: Request, exc: Exception) -> Response:
    return await api_error(request, ApiError(500, "internal server error", type="server_error"))


def _job_error(exc: BaseException) -> ApiError:
    """What a failed job tells its client: only engine bugs are a 500."""
    if isinstance(exc, JobTimeout):
        return ApiError(504, str(exc), type="timeout_error", code="timeout")
    if isinstance(exc, UserError):
        return ApiError(400, str(exc))
    logger.error("the engine failed on a request", exc_info=exc)
    return ApiError(500, f"the engine failed: {type(exc).__name__}", type="server_error", code="engine_error")


# -- what every request goes through -------------------------------------------------------

def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    from starlette.responses import JSONResponse  # the serve extra, checked by create_app

    return JSONResponse(body, status_code=status, headers=headers)


def _refused(state: Any) -> ApiError | None:
    """503 while the server drains (a signal came) or the scheduler closes."""
    if state.draining or state.scheduler.closing:
        return ApiError(503, "the server is shutting down", type="service_unavailable", code="shutting_down")
    return None


def _check_auth(request: Request) -> None:
    api_key = request.app.state.config.api_key
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                       type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def _read_json(request: Request) -> Any:
    """The body as JSON: 413 past ``max_body_bytes`` (counted as it arrives), 400 when malformed."""
    limit = request.app.state.config.max_body_bytes
    too_large = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_large
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:  # nesting deeper than the decoder's stack allows
        raise ApiError(400, "the request body is nested too deeply", code="invalid_json") from None
    check_json(value)
    return value


async def _until_disconnect(request: Request, awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable`` unless the client hangs up first (then cancel it, return None)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(awaitable), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
    return work.result() if not work.cancelled() else None


def _model_card(state: Any) -> dict[str, Any]:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "supertiny"}


def _usage(job: Job) -> dict[str, int]:
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens}


# -- completions ---------------------------------------------------------------------------

async def _completion(request: Request, chat: bool) -> Response | _JobStream:
    """A chat or text completion: whole, or streamed as server-sent events."""
    from starlette.responses import Response  # the serve extra, checked by create_app

    state = request.app.state
    _check_auth(request)
    if (error := _refused(state)) is not None:
        raise error
    params = parse_request(await _read_json(request), chat, state.config, state.model_name)
    job = await _submit(state.scheduler, params, chat)
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    head = {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": state.model_name, "system_fingerprint": None}
    handed_off = False
    try:
        if not params.stream:
            got = await _until_disconnect(request, _collect(job.aiter()))
            if got is None:
                return Response(status_code=499)  # nginx's "client closed request", for the metrics
            return _json({**head, "choices": [_whole_choice(got, chat)], "usage": _usage(job)})
        # Wait for the first chunk before sending headers: a queue timeout or an engine
        # error then still gets its own status instead of a broken 200 stream.
        batches = job.abatches()
        first = await _until_disconnect(request, batches.__anext__())
        if first is None:
            return Response(status_code=499)
        handed_off = True
        return _JobStream(_events(job, first, batches, head, chat, params.include_usage), job, state.metrics)
    except Exception as exc:
        raise _job_error(exc) from None
    finally:
        if not handed_off:
            job.cancel()  # a no-op once it finished
            state.metrics.job(job)


async def _submit(scheduler: Scheduler, params: Params, chat: bool) -> Job:
    """Queue the request (tokenizing it off the event loop): 429 when the queue is full, 503 when closing."""
    from starlette.concurrency import run_in_threadpool  # the serve extra, checked by create_app

    try:
        return await run_in_threadpool(scheduler.submit, params.prompt, params.max_tokens, params.sampling,
                                       params.stop, params.ignore_eos, params.grammar)
    except QueueFull as exc:
        raise ApiError(429, str(exc), type="rate_limit_error", code="queue_full",
                       headers={"Retry-After": "1"}) from None
    except ShuttingDown as exc:
        raise ApiError(503, str(exc), type="service_unavailable", code="shutting_down") from None
    except UserError as exc:
        raise ApiError(400, str(exc), param="messages" if chat else "prompt") from None


async def _collect(chunks: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in chunks]


def _whole_choice(chunks: list[Chunk], chat: bool) -> dict[str, Any]:
    text, reason = "".join(c.text for c in chunks), chunks[-1].finish_reason
    if chat:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": reason}
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Pieces:
    """A stream's events as bytes: every piece of one stream differs only in its text and finish reason, so
    the JSON around them is encoded once and each token costs one ``json.dumps`` of its text."""

    def __init__(self, head: dict[str, Any], chat: bool, usage: bool):
        self.head, self.chat, self.usage = head, chat, usage
        hole = f"<{uuid.uuid4().hex}>"
        self.before, self.after = self.event(hole, None).split(json.dumps(hole).encode())

    def event(self, text: str | None, reason: str | None, role: bool = False) -> bytes:
        """One event: a chat delta (the role first, then content) or a text piece."""
        delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
        choice = ({"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason} if self.chat else
                  {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason})
        return _sse({**self.head, "choices": [choice], **({"usage": None} if self.usage else {})})

    def text(self, text: str) -> bytes:
        return self.before + json.dumps(text).encode() + self.after


async def _events(job: Job, first: list[Chunk], batches: Any, head: dict[str, Any], chat: bool,
                  usage: bool) -> AsyncIterator[bytes]:
    """The job's chunks as OpenAI's stream: pieces in order, the finish reason, usage if asked, ``[DONE]``.
    Each batch of chunks (all that arrived since the last write) goes out as one write of its events."""
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
    pieces = _Pieces(head, chat, usage)
    if chat:
        yield pieces.event(None, None, role=True)
    batch: list[Chunk] | None = first
    try:
        while batch is not None:
            out, finished = [], False
            for chunk in batch:
                if chunk.text:
                    out.append(pieces.text(chunk.text))
                if chunk.finish_reason is not None:
                    out.append(pieces.event(None, chunk.finish_reason))
                    finished = True
                    break
            if out:
                yield b"".join(out)
            if finished:
                break
            batch = await batches.__anext__()
        if usage:
            yield _sse({**head, "choices": [], "usage": _usage(job)})
    except Exception as exc:  # headers are sent: report it the way OpenAI streams errors
        yield _sse(_job_error(exc).body())
    finally:
        await batches.aclose()
    yield _sse("[DONE]")


class _JobStream:
    """An ASGI response streaming ``events``; its job is cancelled when the client goes away
    (and counted in ``metrics`` when the stream ends, however it ends)."""

    def __init__(self, events: AsyncIterator[bytes], job: Job, metrics: Metrics) -> None:
        from starlette.responses import StreamingResponse  # the serve extra, checked by create_app

        self.response = StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job, self.metrics = job, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            self.job.cancel()  # a no-op once it finished
            self.metrics.job(self.job)
