"""An OpenAI-compatible HTTP server over a :class:`~.scheduler.Scheduler` (starlette on uvicorn).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health`` and ``GET /metrics`` (Prometheus text). Bodies have OpenAI's shapes, so
the official clients work unchanged; every error is OpenAI's JSON error object with a
status a client can act on (400 its mistake, 429 retry later, 503 going away, 504 too
slow), never a 500 for something the client sent. The engines come from :mod:`.pool`:
``slots`` copies, or one engine batching ``parallel`` sequences.

Shutdown is graceful: on SIGINT/SIGTERM uvicorn stops accepting connections, the app
answers 503 to new requests on connections still open, requests in flight (running or
queued) finish, then the lifespan closes the scheduler. A second Ctrl-C forces the exit.

Example::

    serve("student-q4.gguf", ServeConfig(port=8080, slots=2))
    # OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="-").chat.completions.create(...)
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny.backends import BACKENDS, batching
from supertiny.errors import InvalidInputError, UserError
from supertiny.manifest import BUNDLE_TASK_FILE
from supertiny.models import resolve
from supertiny.runtime.engines.base import EngineOptions
from supertiny.runtime.serving.app import create_app, require_extra
from supertiny.runtime.serving.pool import EnginePool, batching_mode, open_engines
from supertiny.runtime.serving.scheduler import Scheduler
from supertiny.tasks import Task, task_for

__all__ = ["ServeConfig", "bind_socket", "build_server", "create_app", "serve"]

AUTO_PARALLEL = 4  # sequences a GGUF server batches when --parallel is not given (llama.cpp's server default)


@dataclass(frozen=True)
class ServeConfig:
    """How to serve; validated on construction so a bad option fails before the model loads.

    Args:
        host: interface to bind; loopback by default, so nothing is exposed by accident.
        port: TCP port (0: any free one).
        api_key: when set, requests need ``Authorization: Bearer <api_key>``.
        slots: engines (model copies) decoding in parallel.
        parallel: sequences one batched engine decodes together (0: off, use ``slots``): a
            GGUF file on llama.cpp continuously, an ONNX export (optimum graph) in static
            batches (:mod:`.pool`). None (auto): 4 for a GGUF file on llama.cpp with one slot
            (llama.cpp's server default), else 0.
        max_queue: requests waiting for a slot before new ones get 429.
        max_tokens_limit: largest ``max_tokens`` a request may ask for (400 beyond).
        default_max_tokens: ``max_tokens`` when a request gives none (default: 256, or
            ``max_tokens_limit`` if that is smaller).
        max_body_bytes: largest request body (413 beyond).
        request_timeout_s: waiting plus generating longer than this gives 504.
        engine: how each slot's engine is opened
            (:class:`~supertiny.runtime.engines.base.EngineOptions`; its ``threads`` default:
            the CPU cores shared out between the slots).
        backend: passed to :func:`~supertiny.runtime.engines.base.open_engine`.
        model_name: the ``model`` clients send (default: the artifact's file or folder name).
        task: a task (shipped name or ``.toml``) to answer at ``POST /v1/task`` (default: a bundle's
            ``task.toml``, else none).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    slots: int = 1
    parallel: int | None = None
    max_queue: int = 16
    max_tokens_limit: int = 2048
    default_max_tokens: int | None = None
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 120.0
    engine: EngineOptions = EngineOptions()
    backend: str = "auto"
    model_name: str | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (bool(self.host.strip()), "host must not be empty"),
            (0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port}"),
            (self.api_key is None or bool(self.api_key.strip()), "api_key must not be empty (leave it unset)"),
            (self.slots >= 1, f"slots must be >= 1, got {self.slots}"),
            (self.parallel is None or self.parallel >= 0, f"parallel must be >= 0, got {self.parallel}"),
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
    require_extra()
    import uvicorn  # the serve extra (checked just above)

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


def parallel_for(config: ServeConfig, kind: str) -> int:
    """``config.parallel``, with auto (None) resolved for an artifact of ``kind``: GGUF on
    llama.cpp with one slot batches :data:`AUTO_PARALLEL` sequences, anything else none."""
    if config.parallel is not None:
        return config.parallel
    return AUTO_PARALLEL if batching(kind, config.backend) == "continuous" and config.slots == 1 else 0


def served_task(artifact: str | os.PathLike[str], path: Path, task: str | None) -> Task | None:
    """The task ``POST /v1/task`` answers: ``task`` (a name or file), else a bundle's ``task.toml``; with the
    prompt the model was trained with."""
    bundled = Path(artifact) / BUNDLE_TASK_FILE
    if task is None and not bundled.is_file():
        return None
    return task_for(task if task is not None else bundled, path)


def serve(artifact: str | os.PathLike[str], config: ServeConfig, log: Callable[[str], None] | None = None) -> None:
    """Open the engines on ``artifact`` (``config.slots`` copies, or one batching ``config.parallel``
    sequences) and serve them until SIGINT/SIGTERM.

    Args:
        artifact: a ``.gguf`` file, an ONNX export or a Hugging Face directory.
        config: :class:`ServeConfig`.
        log: receives the ready line (with the URL) and the shutdown line.
    """
    require_extra()
    kind, path = resolve(artifact)
    task = served_task(artifact, path, config.task)  # a bad task fails before the model loads
    config = dataclasses.replace(config, parallel=parallel_for(config, kind))
    batching_mode(path, kind, config.backend, config.slots, config.parallel)  # refused before the port is taken
    name = config.model_name or Path(path).name
    sock = bind_socket(config.host, config.port)
    pool: EnginePool | None = None
    scheduler: Scheduler | None = None
    try:
        pool = open_engines(path, kind, config.backend, config.engine, config.slots, config.parallel)
        scheduler = pool.scheduler(config.max_queue, config.request_timeout_s)
        server_config = dataclasses.replace(config, model_name=name)
        build_server(create_app(scheduler, name, server_config, task), server_config, log).run(sockets=[sock])
    finally:
        # After a graceful stop this finds nothing to do; after a forced one it cancels what
        # still runs. An engine a worker is still inside must not be freed under it.
        if pool is not None and (scheduler is None or scheduler.close(cancel=True, timeout=5.0)):
            pool.close()
        sock.close()
