"""An OpenAI-compatible HTTP server over a :class:`~.scheduler.Scheduler` (starlette on uvicorn).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health`` and ``GET /metrics`` (Prometheus text). Bodies have OpenAI's shapes, so
the official clients work unchanged; every error is OpenAI's JSON error object with a
status a client can act on (400 its mistake, 429 retry later, 503 going away, 504 too
slow), never a 500 for something the client sent.

Shutdown is graceful: on SIGINT/SIGTERM uvicorn stops accepting connections, the app
answers 503 to new requests on connections still open, requests in flight (running or
queued) finish, then the lifespan closes the scheduler. A second Ctrl-C forces the exit.

Example::

    serve("student-q4.gguf", ServeConfig(port=8080, slots=2))
    # OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="-").chat.completions.create(...)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, MissingExtraError, UserError
from .engine import BACKENDS, EngineOptions
from .openai_api import ApiError, CountRequests, Metrics, check_json, parse_request
from .scheduler import Job, JobTimeout, QueueFull, Scheduler, ShuttingDown
from .text import Chunk

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class ServeConfig:
    """How to serve; validated on construction so a bad option fails before the model loads.

    Args:
        host: interface to bind; loopback by default, so nothing is exposed by accident.
        port: TCP port (0: any free one).
        api_key: when set, requests need ``Authorization: Bearer <api_key>``.
        slots: engines (model copies) decoding in parallel.
        parallel: sequences one batched llama.cpp engine decodes together (continuous
            batching, GGUF only; 0: off, use ``slots``).
        max_queue: requests waiting for a slot before new ones get 429.
        max_tokens_limit: largest ``max_tokens`` a request may ask for (400 beyond).
        default_max_tokens: ``max_tokens`` when a request gives none (default: 256, or
            ``max_tokens_limit`` if that is smaller).
        max_body_bytes: largest request body (413 beyond).
        request_timeout_s: waiting plus generating longer than this gives 504.
        engine: how each slot's engine is opened (:class:`~.engine.EngineOptions`; its
            ``threads`` default: the CPU cores shared out between the slots).
        backend: passed to :func:`~.engine.open_engine`.
        model_name: the ``model`` clients send (default: the artifact's file or folder name).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    slots: int = 1
    parallel: int = 0
    max_queue: int = 16
    max_tokens_limit: int = 2048
    default_max_tokens: int | None = None
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 120.0
    engine: EngineOptions = EngineOptions()
    backend: str = "auto"
    model_name: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (bool(self.host.strip()), "host must not be empty"),
            (0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port}"),
            (self.api_key is None or bool(self.api_key.strip()), "api_key must not be empty (leave it unset)"),
            (self.slots >= 1, f"slots must be >= 1, got {self.slots}"),
            (self.parallel >= 0, f"parallel must be >= 0, got {self.parallel}"),
            (not (self.parallel and self.slots > 1), "use either slots (model copies) or parallel (one batched "
             f"engine), not both: got slots={self.slots}, parallel={self.parallel}"),
            (self.max_queue >= 0, f"max_queue must be >= 0, got {self.max_queue}"),
            (self.max_tokens_limit >= 1, f"max_tokens_limit must be >= 1, got {self.max_tokens_limit}"),
            (self.default_max_tokens is None or 1 <= self.default_max_tokens <= self.max_tokens_limit,
             f"default_max_tokens must be in 1..max_tokens_limit ({self.max_tokens_limit}), "
             f"got {self.default_max_tokens}"),
            (self.max_body_bytes >= 1024, f"max_body_bytes must be >= 1024, got {self.max_body_bytes}"),
            (self.request_timeout_s > 0, f"request_timeout_s must be > 0, got {self.request_timeout_s}"),
            (self.engine.n_ctx is None or self.engine.n_ctx >= 16, f"n_ctx must be >= 16, got {self.engine.n_ctx}"),
            (self.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"),
            (self.model_name is None or bool(self.model_name.strip()), "model_name must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message)

    @property
    def max_tokens_default(self) -> int:
        return self.default_max_tokens or min(256, self.max_tokens_limit)


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


# -- running it -------------------------------------------------------------------------

def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so a taken port fails before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def build_server(app: Any, config: ServeConfig, log: Callable[[str], None] | None = None) -> Any:
    """A ``uvicorn.Server`` for ``app``: no access log, a graceful-shutdown timeout, one ready line.

    Run it with ``server.run(sockets=[bind_socket(host, port)])``.
    """
    _require_extra()
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.draining = True  # a plain assignment: safe inside a signal handler
            super().handle_exit(sig, frame)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and log is not None:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                url = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
                how = (f"{config.parallel} sequences batched" if config.parallel else f"{config.slots} slot(s)")
                log(f"serving {config.model_name} at {url} ({how}, queue {config.max_queue}, "
                    f"{'API key required' if config.api_key else 'no API key'}); Ctrl-C stops")

        async def shutdown(self, sockets: Any = None) -> None:
            if log is not None:
                log("stopping: finishing the requests in flight (Ctrl-C again to force)")
            await super().shutdown(sockets=sockets)

    # Requests end by themselves within request_timeout_s (they get 504), so waiting a
    # little longer than that lets every one of them finish.
    grace = math.ceil(config.request_timeout_s) + 5
    uv = uvicorn.Config(app, lifespan="on", access_log=False, log_level="warning", server_header=False,
                        timeout_graceful_shutdown=grace)
    return Server(uv)


def serve(artifact: str | os.PathLike[str], config: ServeConfig, log: Callable[[str], None] | None = None) -> None:
    """Open ``config.slots`` engines on ``artifact`` and serve them until SIGINT/SIGTERM.

    Args:
        artifact: a ``.gguf`` file, an ONNX export or a Hugging Face directory.
        config: :class:`ServeConfig`.
        log: receives the ready line (with the URL) and the shutdown line.
    """
    from ..models import resolve
    from .engine import open_engine

    _require_extra()
    kind, path = resolve(artifact)
    if config.parallel and (kind != "gguf" or config.backend not in ("auto", "llama.cpp")):
        raise InvalidInputError(f"--parallel batches GGUF files on the llama.cpp backend; {path} runs on "
                                f"{config.backend}: use --slots for it")
    name = config.model_name or Path(path).name
    # Slots share the cores unless told otherwise: N slots each using every core would
    # thrash rather than decode N times faster.
    options = config.engine
    if options.threads is None:
        options = dataclasses.replace(options, threads=max(1, (os.cpu_count() or 1) // config.slots))
    sock = bind_socket(config.host, config.port)
    engines: list[Any] = []
    scheduler: Scheduler | None = None
    try:
        if config.parallel:
            from .batch_scheduler import BatchScheduler
            from .batched import BatchedLlamaEngine

            engines.append(BatchedLlamaEngine.open(path, options, parallel=config.parallel))
            scheduler = BatchScheduler(engines[0], config.max_queue, config.request_timeout_s)
        else:
            for _ in range(config.slots):
                engines.append(open_engine(path, config.backend, options))
            scheduler = Scheduler(engines, config.max_queue, config.request_timeout_s)
        server_config = dataclasses.replace(config, model_name=name)
        build_server(create_app(scheduler, name, server_config), server_config, log).run(sockets=[sock])
    finally:
        # After a graceful stop this finds nothing to do; after a forced one it cancels what
        # still runs. An engine a worker is still inside must not be freed under it.
        if scheduler is None or scheduler.close(cancel=True, timeout=5.0):
            for engine in engines:
                engine.close()
        sock.close()
