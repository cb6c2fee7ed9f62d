"""Teachers (and judges) that answer chat messages: a local artifact, or an OpenAI-compatible server.

Both backends have one method, :meth:`Teacher.complete` (chat messages and sampling settings
in, reply text out), and are safe to call from several threads at once: that is how
``supertiny teach`` keeps ``--concurrency`` requests in flight.

- :class:`LocalTeacher` runs any :func:`supertiny.runtime.engines.base.open_engine` artifact (a GGUF
  file in llama.cpp is the fast one). Each calling thread gets its own engine, opened on first use and
  never reset between prompts: llama.cpp then re-evaluates only what a new prompt does not
  share with the previous one on that engine, so a long system prompt common to every prompt
  is evaluated once per worker, and the K samples of a prompt reuse the whole prompt.
- :class:`BatchedTeacher` runs a GGUF file for several workers in one batched llama.cpp
  engine (:mod:`supertiny.runtime.engines.batched`; ``TeacherOptions(batched=True)``, ``teach
  --batched``): their prompts decode together in one forward pass per token, and its prompt
  cache keeps the shared system prompt per sequence slot. Not the default: on 2 cores,
  factory-tickets prompts (~690 tokens, 656 of them the shared system prompt) and a Q8_0
  teacher, one single-thread engine per worker made 1.77 prompts/s at 2 workers and 2.01 at
  4, the batched engine 1.71 and 1.73 (``benchmarks/teach_batching.py``): two threads of
  one engine synchronize on every op of a 135M model, two engines never do. Batching should
  pay where workers outnumber cores and per-worker engines would contend for memory
  bandwidth; not measured here.
- :class:`HttpTeacher` posts to ``URL/chat/completions`` (llama.cpp's server, vLLM,
  ``supertiny serve``), one choice per request (``n=1``: several servers refuse more), with
  retries and backoff on 429, 5xx and connection errors.

:func:`open_teacher` picks the backend: a ``http://`` or ``https://`` spec is a server.

Example::

    with open_teacher("default", TeacherOptions(threads=2)) as teacher:
        teacher.complete([{"role": "user", "content": "Hi"}], Sampling(), max_tokens=16)
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

from supertiny.backends import BACKENDS, batching, threads_for
from supertiny.errors import InvalidInputError, UserError
from supertiny.models import resolve
from supertiny.runtime.engines.base import EngineOptions, open_engine
from supertiny.runtime.engines.constrain import Grammar, schema_grammar
from supertiny.runtime.engines.sampling import Sampling
from supertiny.runtime.serving.pool import open_engines
from supertiny.settings import NON_NEG, NON_NEG_INT, POS_INT, POSITIVE, Settings, setting

Message = dict[str, str]
_DECODER = json.JSONDecoder()
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})  # worth another try after a pause


class TeacherError(UserError):
    """The teacher cannot answer: unreachable server, refused request, prompt that does not fit."""


class PromptError(TeacherError):
    """The teacher refuses this one prompt (it does not fit the context, the server says 400):
    the caller names the prompt's file and line."""


def json_done(text: str) -> bool:
    """Whether the text from its first ``{`` on starts with a complete JSON object.

    Then :func:`supertiny.tasks.extract_json` of this text and of any longer text that starts
    with it return the same object (it tries the first ``{`` first), so generation can stop.
    """
    start = text.find("{")
    if start == -1:
        return False
    try:
        _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):
        return False
    return True


def is_url(spec: str) -> bool:
    """Whether a teacher spec names an OpenAI-compatible server rather than a local artifact."""
    return spec.startswith(("http://", "https://"))


@dataclass(frozen=True)
class TeacherOptions(Settings):
    """How to reach a teacher (a local model or a server); ``teach`` takes these settings as its own."""

    threads: int | None = setting(None, "Local teacher: CPU threads per engine (default: the cores shared among the "
                                  "workers).", check=POS_INT)
    n_ctx: int | None = setting(None, "Local teacher: context length (default: the backend's).", check=POS_INT)
    backend: str = setting("auto", "Local teacher: the engine backend.", choices=BACKENDS)
    batched: bool = setting(False, "Local GGUF teacher: one llama.cpp engine decodes the workers' prompts together "
                            "(continuous batching, prompt cache) instead of an engine per worker. On 2 cores an "
                            "engine per worker was faster (benchmarks/teach_batching.py).", off="")
    model_name: str | None = setting(None, "Server: the model field (default: the first of URL/models).")
    api_key: str | None = setting(None, "Server: bearer token (default: $SUPERTINY_API_KEY).", role="run")
    timeout_s: float = setting(120.0, "Server: seconds one request may take.", check=POSITIVE, flag="--timeout")
    retries: int = setting(3, "Server: extra tries on 429, 5xx or a connection error.", check=NON_NEG_INT)
    backoff_s: float = setting(0.5, "Server: the first pause between tries (doubled each time, with jitter).",
                               check=NON_NEG, role="internal")

    def reach(self) -> TeacherOptions:
        """Just these options (a subclass's other settings left out)."""
        return TeacherOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TeacherOptions)})


class Teacher(abc.ABC):
    """Chat messages in, reply text out; thread-safe. Subclasses implement :meth:`complete`."""

    spec: str
    n_ctx: int | None = None  # known only for a local model

    @abc.abstractmethod
    def complete(self, messages: Sequence[Message], sampling: Sampling, max_tokens: int,
                 until_json: bool = False, schema: dict[str, Any] | None = None) -> str:
        """The reply to ``messages`` (raises :class:`TeacherError` when there is none).

        ``until_json``: the caller reads only the first JSON object of the reply, so a backend
        may stop once the text from the first ``{`` on is a complete object (see
        :func:`json_done`); the parse is the same as that of the whole reply.
        ``schema``: hold the reply to this JSON schema (constrained decoding: a local model masks its
        logits, a server gets it as ``response_format``).
        """

    def prompt_tokens(self, messages: Sequence[Message]) -> int | None:
        """The prompt's length in the teacher's tokens (None: unknown, as for a server)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the teacher."""
        return {"teacher": self.spec}

    def close(self) -> None:  # noqa: B027  (a server needs no cleanup)
        """Free what the teacher holds."""

    def __enter__(self) -> Teacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalTeacher(Teacher):
    """A local artifact: ``workers`` engines, each calling thread keeps the one it first took (never reset)."""

    def __init__(self, model: str, options: TeacherOptions, workers: int = 1):
        self.spec = model
        self.threads = threads_for(options.threads, share=workers)
        engine_options = EngineOptions(threads=self.threads, n_ctx=options.n_ctx)
        # Opened here, one after the other: loading models from several threads at once is not
        # safe in transformers, and a bad path fails before any worker starts.
        self._engines: list[Any] = []
        try:
            for _ in range(max(1, workers)):
                self._engines.append(open_engine(model, options.backend, engine_options))
        except BaseException:
            self.close()
            raise
        self._free = list(self._engines)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.n_ctx = self._engines[0].n_ctx
        self.info = self._engines[0].info

    def _engine(self) -> Any:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            with self._lock:
                if not self._free:
                    raise AssertionError("more threads call the teacher than it has engines (workers)")
                engine = self._local.engine = self._free.pop()
        return engine

    def complete(self, messages: Sequence[Message], sampling: Sampling, max_tokens: int,
                 until_json: bool = False, schema: dict[str, Any] | None = None) -> str:
        engine, grammar = self._engine(), _grammar(schema)
        try:
            if not until_json:
                return engine.complete(list(messages), max_tokens=max_tokens, sampling=sampling, grammar=grammar).text
            return _read_reply(engine.stream_text(list(messages), max_tokens, sampling=sampling, grammar=grammar),
                               until_json)
        except InvalidInputError as exc:
            raise PromptError(f"the teacher cannot run this prompt: {exc}") from None

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        with self._lock:  # any engine's tokenizer will do; callers count before the workers start
            return len(self._engines[0].prompt_ids(list(messages)))

    def describe(self) -> dict[str, Any]:
        return {"teacher": self.spec, "backend": self.info.get("backend"), "n_ctx": self.n_ctx,
                "threads_per_engine": self.threads}

    def close(self) -> None:
        engines, self._engines = self._engines, []  # called once the workers are done
        for engine in engines:
            engine.close()


class BatchedTeacher(Teacher):
    """A local GGUF file answering ``workers`` calls at once in one batched llama.cpp engine.

    Each call is a request of a :class:`~supertiny.runtime.serving.batch_scheduler.BatchScheduler`
    (continuous batching), so the calls of ``workers`` threads decode together. The one
    engine gets the threads the workers' engines would have had together
    (``options.threads`` per worker, by default the cores), at most the machine's cores.
    """

    def __init__(self, path: Any, spec: str, options: TeacherOptions, workers: int):
        self.spec, self.workers = spec, workers
        self.threads = threads_for(options.threads * workers if options.threads else None, cap=True)
        # a GGUF file: open_teacher makes this teacher only for what batches continuously
        engine_options = EngineOptions(threads=self.threads, n_ctx=options.n_ctx)
        self.pool = open_engines(path, "gguf", options.backend, engine_options, parallel=workers)
        self.engine = self.pool.engines[0]
        self.scheduler = self.pool.scheduler(max_queue=workers, request_timeout_s=None)
        self._lock = threading.Lock()
        self.n_ctx = self.engine.n_ctx
        self.info = self.engine.info

    def complete(self, messages: Sequence[Message], sampling: Sampling, max_tokens: int,
                 until_json: bool = False, schema: dict[str, Any] | None = None) -> str:
        try:
            job = self.scheduler.submit(list(messages), max_tokens, sampling=sampling, grammar=_grammar(schema))
        except InvalidInputError as exc:
            raise PromptError(f"the teacher cannot run this prompt: {exc}") from None
        return _read_reply(iter(job), until_json)  # closing the job's reader early cancels the rest

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        with self._lock:
            return len(self.engine.prompt_ids(list(messages)))

    def describe(self) -> dict[str, Any]:
        return {"teacher": self.spec, "backend": self.engine.backend_label, "n_ctx": self.n_ctx,
                "threads_per_engine": self.threads, "parallel": self.workers}

    def close(self) -> None:
        scheduler = self.__dict__.pop("scheduler", None)
        if scheduler is not None and scheduler.close(cancel=True, timeout=30.0):
            self.pool.close()


def _grammar(schema: dict[str, Any] | None) -> Grammar | None:
    return None if schema is None else schema_grammar(json.dumps(schema))


def _read_reply(chunks: Generator[Any, None, None], until_json: bool) -> str:
    """The text of a local engine's reply chunks; with ``until_json`` it stops at the first
    complete JSON object (a model that explains its answer afterwards costs nothing more)."""
    text = ""
    try:
        for chunk in chunks:
            text += chunk.text
            if until_json and "}" in chunk.text and json_done(text):
                break
    finally:
        chunks.close()  # the engine (or the batch) stops generating this reply now
    return text


class HttpTeacher(Teacher):
    """An OpenAI-compatible server: ``POST URL/chat/completions``, one choice per request."""

    def __init__(self, url: str, options: TeacherOptions):
        self.spec = url
        self.base = url.rstrip("/")
        self.options = options
        self.api_key = options.api_key or os.environ.get("SUPERTINY_API_KEY") or None
        self.model_name = options.model_name or self._served_model() or "default"

    def _served_model(self) -> str | None:
        """The first model ``URL/models`` lists; also fails fast when the server is unreachable."""
        body = self._request("GET", "/models", None)
        models = body.get("data") if isinstance(body, dict) else None
        if isinstance(models, list) and models and isinstance(models[0], dict):
            name = models[0].get("id")
            return name if isinstance(name, str) else None
        return None

    def complete(self, messages: Sequence[Message], sampling: Sampling, max_tokens: int,
                 until_json: bool = False, schema: dict[str, Any] | None = None) -> str:
        payload: dict[str, Any] = {"model": self.model_name, "messages": list(messages), "n": 1,
                                   "max_tokens": max_tokens, "temperature": sampling.temperature,
                                   "top_p": sampling.top_p}
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        if sampling.top_k:
            payload["top_k"] = sampling.top_k  # llama.cpp's and vLLM's extension
        if schema is not None:  # OpenAI's structured outputs (llama.cpp's server, vLLM and supertiny's take it too)
            payload["response_format"] = {"type": "json_schema", "json_schema": {
                "name": schema.get("title") or "answer", "schema": schema, "strict": True}}
        body = self._request("POST", "/chat/completions", payload)
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"{self.base}/chat/completions: expected choices[0].message.content in the "
                               f"reply, got {json.dumps(body)[:200]}") from None
        return content if isinstance(content, str) else ""

    def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        url = self.base + path
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if payload is None else json.dumps(payload).encode()
        opts = self.options
        for attempt in range(opts.retries + 1):
            last = attempt == opts.retries
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method=method)
                with urllib.request.urlopen(req, timeout=opts.timeout_s) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = _error_message(exc)
                if exc.code == 404 and method == "GET":
                    return None  # a server without /models: the caller falls back
                if exc.code in (400, 413, 422):  # this request is bad (too long...), not the server
                    raise PromptError(f"{url}: HTTP {exc.code}: {detail}") from None
                if exc.code not in RETRY_STATUS or last:
                    raise TeacherError(f"{url}: HTTP {exc.code}: {detail}") from None
            except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, timeout
                if last:
                    reason = getattr(exc, "reason", exc)
                    tries = f"after {opts.retries + 1} tries" if opts.retries else "no retries"
                    raise TeacherError(f"cannot reach the server at {self.base}: {reason} ({tries})") from None
            except ValueError:
                raise TeacherError(f"{url}: the reply is not JSON") from None
            time.sleep(opts.backoff_s * (2 ** attempt) * (1 + random.random() / 4))  # jitter spreads retries
        raise AssertionError("unreachable")

    def describe(self) -> dict[str, Any]:
        return {"teacher": self.spec, "backend": "openai-http", "model_name": self.model_name}


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The server's message from an OpenAI-style error body, else the HTTP reason."""
    try:
        body = json.loads(exc.read().decode("utf-8"))
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
        if message:
            return str(message).splitlines()[0]
    except (ValueError, AttributeError, OSError):
        pass
    return str(exc.reason)


def open_teacher(spec: str, options: TeacherOptions | None = None, workers: int = 1) -> Teacher:
    """A teacher for ``spec``: a server URL (``http://host:port/v1``) or a local artifact
    (a ``.gguf`` file, an ONNX export, a Hugging Face directory, ``default``).

    ``workers`` is how many threads will call it: a local model gets an engine per worker,
    sharing the cores, or with ``options.batched`` (a GGUF file on llama.cpp) one engine
    decoding their calls together.
    """
    options = options or TeacherOptions()
    if is_url(spec):
        return HttpTeacher(spec, options)
    if options.batched:
        kind, path = resolve(spec)
        if batching(kind, options.backend) != "continuous":
            raise InvalidInputError(f"batched teaching decodes GGUF files on llama.cpp; {spec} is a {kind} "
                                    f"artifact on {options.backend}")
        return BatchedTeacher(path, spec, options, workers)
    return LocalTeacher(spec, options, workers)
