"""The ASGI app of :mod:`.serve`: OpenAI's endpoints over a scheduler, and its error mapping.

Split from :mod:`.serve` (which re-exports :func:`create_app`): the app answers requests;
``serve`` opens the engines, binds the socket and runs uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from supertiny.errors import MissingExtraError, UserError
from supertiny.runtime.engines.text import Chunk
from supertiny.runtime.serving.openai_api import ApiError, CountRequests, Metrics, check_json, parse_request
from supertiny.runtime.serving.scheduler import Job, JobTimeout, QueueFull, Scheduler, ShuttingDown

if TYPE_CHECKING:
    from supertiny.runtime.serving.server import ServeConfig

# the server's logger name stays what operators configured before the split
logger = logging.getLogger("supertiny.runtime.serving.server")


# -- the app ----------------------------------------------------------------------------

def _require_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MissingExtraError("supertiny serve needs starlette and uvicorn: pip install 'supertiny[serve]'") \
            from None


def _usage(job: Job) -> dict[str, int]:
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens}


def _job_error(exc: BaseException) -> ApiError:
    """What a failed job tells its client: only engine bugs are a 500."""
    if isinstance(exc, JobTimeout):
        return ApiError(504, str(exc), type="timeout_error", code="timeout")
    if isinstance(exc, UserError):
        return ApiError(400, str(exc))
    logger.error("the engine failed on a request", exc_info=exc)
    return ApiError(500, f"the engine failed: {type(exc).__name__}", type="server_error", code="engine_error")


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n".encode()


def create_app(scheduler: Scheduler, model_name: str, config: ServeConfig) -> Any:
    """The ASGI app (a ``Starlette``) answering OpenAI's API from ``scheduler``.

    Args:
        scheduler: runs the jobs; the app's lifespan closes it (gracefully) on shutdown.
        model_name: the name ``/v1/models`` lists and requests must use.
        config: limits and the API key (the engine options in it are not used here).
    """
    _require_extra()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    metrics, created = Metrics(), int(time.time())

    def refused() -> ApiError | None:
        if app.state.draining or scheduler.closing:
            return ApiError(503, "the server is shutting down", type="service_unavailable", code="shutting_down")
        return None

    def check_auth(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                           type="authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_json(request: Request) -> Any:
        too_large = ApiError(413, f"the request body is larger than {config.max_body_bytes} bytes",
                             code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > config.max_body_bytes:
            raise too_large
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > config.max_body_bytes:
                raise too_large
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        except RecursionError:  # nesting deeper than the decoder's stack allows
            raise ApiError(400, "the request body is nested too deeply", code="invalid_json") from None
        check_json(value)
        return value

    async def until_disconnect(request: Request, awaitable: Any) -> Any:
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

    async def completion(request: Request, chat: bool) -> Response:
        check_auth(request)
        if (error := refused()) is not None:
            raise error
        params = parse_request(await read_json(request), chat, config, model_name)
        try:
            job = await run_in_threadpool(scheduler.submit, params.prompt, params.max_tokens, params.sampling,
                                          params.stop, params.ignore_eos)
        except QueueFull as exc:
            raise ApiError(429, str(exc), type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except ShuttingDown as exc:
            raise ApiError(503, str(exc), type="service_unavailable", code="shutting_down") from None
        except UserError as exc:
            raise ApiError(400, str(exc), param="messages" if chat else "prompt") from None
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        head = {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model_name, "system_fingerprint": None}
        chunks, handed_off = job.aiter(), False
        try:
            if not params.stream:
                async def collect() -> list[Chunk]:
                    return [chunk async for chunk in chunks]

                got = await until_disconnect(request, collect())
                if got is None:
                    return Response(status_code=499)  # nginx's "client closed request", for the metrics
                text, reason = "".join(c.text for c in got), got[-1].finish_reason
                choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                           "finish_reason": reason} if chat else
                          {"index": 0, "text": text, "logprobs": None, "finish_reason": reason})
                return JSONResponse({**head, "choices": [choice], "usage": _usage(job)})
            # Wait for the first chunk before sending headers: a queue timeout or an engine
            # error then still gets its own status instead of a broken 200 stream.
            first = await until_disconnect(request, chunks.__anext__())
            if first is None:
                return Response(status_code=499)
            handed_off = True
            return _JobStream(events(job, first, chunks, head, chat, params.include_usage), job,
                              media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        except Exception as exc:
            raise _job_error(exc) from None
        finally:
            if not handed_off:
                job.cancel()  # a no-op once it finished
                metrics.job(job)

    async def events(job: Job, first: Chunk, chunks: Any, head: dict, chat: bool, usage: bool) -> Any:
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

        def piece(text: str | None, reason: str | None, role: bool = False) -> bytes:
            delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
            choice = ({"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason} if chat else
                      {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason})
            return _sse({**head, "choices": [choice], **({"usage": None} if usage else {})})

        if chat:
            yield piece(None, None, role=True)
        chunk: Chunk | None = first
        try:
            while chunk is not None:
                if chunk.text:
                    yield piece(chunk.text, None)
                if chunk.finish_reason is not None:
                    yield piece(None, chunk.finish_reason)
                    break
                chunk = await chunks.__anext__()
            if usage:
                yield _sse({**head, "choices": [], "usage": _usage(job)})
        except Exception as exc:  # headers are sent: report it the way OpenAI streams errors
            yield _sse(_job_error(exc).body())
        finally:
            await chunks.aclose()
        yield _sse("[DONE]")

    class _JobStream(StreamingResponse):
        """A stream whose job is cancelled when the client goes away (and counted when it ends)."""

        def __init__(self, content: Any, job: Job, **kw: Any) -> None:
            super().__init__(content, **kw)
            self.job = job

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.job.cancel()  # a no-op once it finished
                metrics.job(self.job)

    async def chat_completions(request: Request) -> Response:
        return await completion(request, chat=True)

    async def completions(request: Request) -> Response:
        return await completion(request, chat=False)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "supertiny"}

    async def models(request: Request) -> Response:
        check_auth(request)
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        check_auth(request)
        if request.path_params["name"] != model_name:
            raise ApiError(404, f"the model {request.path_params['name']!r} does not exist", code="model_not_found")
        return JSONResponse(model_card())

    async def health(request: Request) -> Response:
        if refused() is not None:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def prometheus(request: Request) -> Response:
        check_auth(request)
        return PlainTextResponse(metrics.render(scheduler.stats()), media_type="text/plain; version=0.0.4")

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        words = {404: ("not_found_error", f"no route {request.method} {request.url.path}", "not_found"),
                 405: ("invalid_request_error", f"method {request.method} is not allowed on {request.url.path}",
                       "method_not_allowed")}
        type_, message, code = words.get(exc.status_code, ("invalid_request_error", str(exc.detail), None))
        return await api_error(request, ApiError(exc.status_code, message, type_, code=code, headers=exc.headers))

    async def server_error(request: Request, exc: Exception) -> Response:
        return await api_error(request, ApiError(500, "internal server error", type="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        app.state.draining = True
        await run_in_threadpool(scheduler.close)  # in-flight and queued jobs finish first

    routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/v1/models/{name:path}", model, methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/metrics", prometheus, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(CountRequests, metrics=metrics)],
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.draining = False
    app.state.metrics = metrics
    return app
