"""One engine API over llama.cpp (GGUF), onnxruntime (ONNX exports) and torch (HF dirs).

An :class:`Engine` runs one sequence at a time. Each backend implements three things:
:meth:`Engine.logits` (every position of a window, for evaluation), :meth:`Engine.stream`
(token ids one at a time, the backend's own decode loop) and how to find its tokenizer.
Everything text-level is shared, so it behaves the same on every backend: the chat
template (:mod:`.chat`), eos handling, and incremental detokenization, stop strings,
cancellation and the finish reason (:mod:`.text`).

This module holds the options (:class:`EngineOptions`), the backend registry
(:func:`register_engine`, :func:`open_engine`) and the :class:`Engine` base.

The wrapper is thin on purpose: per token it adds one dictionary lookup and an
incremental decode of a few tokens, which ``benchmarks/runtime_overhead.py``
measures against the raw backends.

Example::

    engine = open_engine("model.gguf", threads=4)
    for chunk in engine.stream_text([{"role": "user", "content": "Hi"}], max_tokens=32):
        print(chunk.text, end="")
"""

from __future__ import annotations

import abc
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from supertiny.backends import DTYPES, PROVIDER_ALIASES, PROVIDERS
from supertiny.errors import InvalidInputError
from supertiny.models import resolve
from supertiny.runtime.engines.chat import chat_template_ids
from supertiny.runtime.engines.constrain import Constraint, Grammar, Vocabulary
from supertiny.runtime.engines.sampling import Sampling
from supertiny.runtime.engines.text import Chunk, Completion, text_chunks

Prompt = str | Sequence[int] | Sequence[dict[str, Any]]


@dataclass(frozen=True)
class EngineOptions:
    """How to open an artifact; every backend reads the fields that concern it.

    Args:
        threads: CPU threads (default: all cores).
        n_ctx: context length (default: 2048 for llama.cpp, the model's for the others).
        gpu_layers: llama.cpp layers to offload to a GPU build (-1: all).
        provider: onnxruntime execution provider (``cpu``, ``cuda``, ``dml``).
        device: torch device (``cpu``, ``cuda``).
        dtype: torch dtype.
        logits: keep logits for every position (llama.cpp; needed by :meth:`Engine.logits`,
            costs ``n_ctx × vocab × 4`` bytes, so serving leaves it off).
        flash_attn: llama.cpp's fused attention (its own default; on CPU it decodes and
            prefills faster, more so with many sequences: ``benchmarks/batched_decode.py``).
    """

    threads: int | None = None
    n_ctx: int | None = None
    gpu_layers: int = 0
    provider: str = "cpu"
    device: str = "cpu"
    dtype: str = "float32"
    logits: bool = False
    flash_attn: bool = True

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"threads must be >= 1, got {self.threads}")
        if self.n_ctx is not None and self.n_ctx < 1:
            raise InvalidInputError(f"n_ctx must be >= 1, got {self.n_ctx}")
        if self.gpu_layers < -1:
            raise InvalidInputError(f"gpu_layers must be -1 (all) or >= 0, got {self.gpu_layers}")
        object.__setattr__(self, "provider", PROVIDER_ALIASES.get(self.provider, self.provider))
        if self.provider not in PROVIDERS:
            raise InvalidInputError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        if not (self.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", self.device)):
            raise InvalidInputError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise InvalidInputError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


ENGINES: dict[str, type[Engine]] = {}
_NATIVE: dict[str, str] = {}  # artifact kind -> the backend that runs it by default
_ENGINE_MODULES = ("llamacpp", "onnxrt", "torch_engine")  # imported by open_engine to fill ENGINES


_KIND_NOUNS = {"gguf": "a GGUF file", "onnx": "an ONNX export", "hf": "a Hugging Face directory"}


def register_engine(name: str, kinds: Sequence[str], native: Sequence[str] = (),
                    runs: str = "") -> Callable[[type], type]:
    """Class decorator: ``name`` runs artifacts of ``kinds`` (``runs`` says so in words)
    and is the default backend for the kinds in ``native``."""

    def deco(cls: type) -> type:
        cls.name, cls.kinds, cls.runs = name, tuple(kinds), runs
        ENGINES[name] = cls
        for kind in native:
            _NATIVE[kind] = name
        return cls

    return deco


class Engine(abc.ABC):
    """The common interface; subclasses run one backend.

    Subclasses set ``path`` and ``n_ctx`` and implement the abstract methods
    (:meth:`open`, :meth:`logits`, :meth:`stream`, :meth:`_load_tokenizer`,
    :meth:`_describe`); :meth:`reset` and :meth:`close` are optional.
    """

    name: ClassVar[str] = "?"
    kinds: ClassVar[tuple[str, ...]] = ()
    runs: ClassVar[str] = ""
    path: Path
    n_ctx: int

    # -- what a backend provides --------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def open(cls, path: Path, options: EngineOptions) -> Engine:
        """Open ``path`` with ``options`` (what :func:`open_engine` calls)."""

    @abc.abstractmethod
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits for every position of one window: ``[len(ids), vocab]``."""

    @abc.abstractmethod
    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling | None = None,
               stop_ids: Sequence[int] | None = None, constraint: Constraint | None = None) -> Iterator[int]:
        """Token ids one at a time; a stop id ends the stream and is not yielded. With ``constraint``
        every token is one its grammar allows, and the stream ends when the grammar is complete."""

    @abc.abstractmethod
    def _load_tokenizer(self) -> tuple[Any, str]:
        """The Hugging Face tokenizer and a note on where it came from."""

    @abc.abstractmethod
    def _describe(self) -> dict[str, Any]:
        """The model's description (a :class:`~supertiny.models.ModelInfo` as a dict)."""

    def reset(self) -> None:  # noqa: B027  (optional: most backends cache no prefix)
        """Forget any cached prompt prefix: the next call prefills its whole prompt."""

    def close(self) -> None:  # noqa: B027  (optional: garbage collection frees the rest)
        """Free the backend's memory now rather than at garbage collection."""

    # -- shared ---------------------------------------------------------------------------

    @cached_property
    def _tokenizer_and_note(self) -> tuple[Any, str]:
        return self._load_tokenizer()

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer_and_note[0]

    @cached_property
    def info(self) -> dict[str, Any]:
        """The model description (as ``supertiny inspect`` shows it) plus the backend."""
        return {**self._describe(), "tokenizer": self._tokenizer_and_note[1], "backend": self.backend_label,
                "n_ctx": self.n_ctx}

    @property
    def backend_label(self) -> str:
        """The backend as reports show it (with the device where there is a choice)."""
        return self.name

    @cached_property
    def vocabulary(self) -> Vocabulary:
        """The tokenizer as the grammar engine sees it (built on the first constrained reply)."""
        return Vocabulary(self.tokenizer, self.stop_ids)

    def constraint(self, grammar: Grammar) -> Constraint:
        """A fresh :class:`~supertiny.runtime.engines.constrain.Constraint` for one reply of this engine."""
        return Constraint(grammar, self.vocabulary)

    @cached_property
    def stop_ids(self) -> list[int]:
        """The ids that end a reply: the tokenizer's eos and generation_config's eos list."""
        eos = self.tokenizer.eos_token_id
        ids = set(self._extra_stop_ids()) | ({eos} if eos is not None else set())
        return sorted(i for i in ids if isinstance(i, int))

    def _extra_stop_ids(self) -> list[int]:
        return []

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling | None = None,
                 stop_ids: Sequence[int] | None = None) -> list[int]:
        """Token ids of a reply (what :func:`supertiny.evaluate.generate` calls).

        ``stop_ids`` default to the model's own (:attr:`stop_ids`); ``[]`` runs past eos.
        """
        stop = self.stop_ids if stop_ids is None else stop_ids
        return list(self.stream(prompt_ids, max_new_tokens, sampling=sampling, stop_ids=stop))

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def chat_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Token ids of a chat, ending with the assistant's turn (the model's template)."""
        return chat_template_ids(self.tokenizer, messages, self.path.name)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """A prompt as token ids: text (tokenized as is), ids, or chat messages."""
        if isinstance(prompt, str):
            return self.encode(prompt)
        items = list(prompt)
        if items and all(isinstance(m, dict) for m in items):
            return self.chat_ids(items)
        if all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in items):
            vocab = len(self.tokenizer)
            if any(not 0 <= t < vocab for t in items):  # the native backends do not check ids
                raise InvalidInputError(f"token ids must be in [0, {vocab})")
            return [int(t) for t in items]
        raise InvalidInputError("a prompt is a string, a list of token ids, or a list of chat messages")

    def stream_text(self, prompt: Prompt, max_tokens: int = 256, sampling: Sampling | None = None,
                    stop: Sequence[str] = (), ignore_eos: bool = False,
                    cancel: threading.Event | None = None, grammar: Grammar | None = None) -> Iterator[Chunk]:
        """Generate text, a chunk at a time; the last chunk has the finish reason.

        Args:
            prompt: text, token ids, or chat messages (the chat template is applied).
            max_tokens: most tokens to generate (cut to what the context leaves).
            sampling: greedy by default.
            stop: strings that end the reply; they are not part of the text.
            ignore_eos: keep going past the eos token (benchmarks).
            cancel: set it from another thread to stop after the current token.
            grammar: hold the reply to it (constrained decoding); it ends when the grammar is complete.

        ``finish_reason`` is ``stop`` (eos or a stop string), ``length`` (max_tokens or
        the context) or ``cancelled``.
        """
        ids = self.prompt_ids(prompt)
        budget = self.check_request(len(ids), max_tokens)
        if budget == 0:
            yield Chunk("", [], "length")
            return
        extra = {"constraint": self.constraint(grammar)} if grammar is not None else {}
        tokens = self.stream(ids, budget, sampling=sampling, stop_ids=[] if ignore_eos else self.stop_ids, **extra)
        yield from text_chunks(tokens, self.tokenizer, budget, stop, cancel)

    def complete(self, prompt: Prompt, max_tokens: int = 256, **kw: Any) -> Completion:
        """The whole reply of :meth:`stream_text` with token counts and timings."""
        start = time.perf_counter()
        ids = self.prompt_ids(prompt)  # once: stream_text takes the ids as they are
        chunks, first = [], None
        for chunk in self.stream_text(ids, max_tokens, **kw):
            if first is None and chunk.token_ids:
                first = time.perf_counter() - start
            chunks.append(chunk)
        return Completion.from_chunks(chunks, len(ids), first, time.perf_counter() - start)

    def check_request(self, n_prompt: int, max_tokens: Any) -> int:
        """How many tokens a request may generate, or a clear error for one that cannot run:
        an empty prompt, a prompt that fills the context, a bad ``max_tokens``. The
        scheduler calls it when a request arrives, :meth:`stream_text` before it runs."""
        if n_prompt == 0:
            raise InvalidInputError("the prompt is empty")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise InvalidInputError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
        if n_prompt >= self.n_ctx:
            raise InvalidInputError(f"the prompt has {n_prompt} tokens; the context holds {self.n_ctx}, "
                                    "including the reply")
        return min(max_tokens, self.n_ctx - n_prompt)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_engine(model: str | os.PathLike[str], backend: str = "auto", options: EngineOptions | None = None,
                **kw: Any) -> Engine:
    """Open an artifact on a backend.

    Args:
        model: a ``.gguf`` file, an ONNX export directory, a Hugging Face directory or
            ``"default"``.
        backend: ``auto`` (llama.cpp for GGUF, onnxruntime for ONNX, torch for HF) or a
            name in :data:`ENGINES`.
        options: :class:`EngineOptions`; or pass its fields as keywords.

    Example::

        with open_engine("student/", threads=2) as engine:
            print(engine.complete("The capital of France is", max_tokens=8).text)
    """
    import importlib

    for module in _ENGINE_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    options = options or EngineOptions(**kw)
    choices = ("auto", *ENGINES)  # the registry: a backend registered later is a choice too
    if backend not in choices:
        raise InvalidInputError(f"unknown backend {backend!r}; choose one of {', '.join(choices)}")
    kind, path = resolve(model)
    name = _NATIVE[kind] if backend == "auto" else backend
    cls = ENGINES[name]
    if kind not in cls.kinds:
        raise InvalidInputError(f"the {name} backend runs {cls.runs}; {path} is {_KIND_NOUNS[kind]}, "
                                f"which runs on the {_NATIVE[kind]} backend")
    return cls.open(path, options)
