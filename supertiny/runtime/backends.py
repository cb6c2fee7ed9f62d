"""Open any model for measuring: PyTorch for HF directories, llama.cpp for GGUF files.

A :class:`Backend` is what :mod:`supertiny.evaluate` needs from a model: its
tokenizer, a logits function and a generation function. The runtime issue adds
onnxruntime here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError
from ..evaluate import GenerateFn, LogitsFn, torch_generate, torch_logits

BACKENDS = ("auto", "torch", "llama.cpp")


@dataclass
class Backend:
    name: str
    info: dict[str, Any]
    tokenizer: Any
    logits: LogitsFn
    generate: GenerateFn


def open_backend(model: str | os.PathLike[str], backend: str = "auto", dtype: str = "float32",
                 n_ctx: int = 2048, threads: int | None = None) -> Backend:
    """Open MODEL on a backend (``auto``: llama.cpp for a GGUF file, torch otherwise).

    Args:
        model: a Hugging Face directory, a ``.gguf`` file or ``"default"``.
        backend: ``auto``, ``torch`` or ``llama.cpp``.
        dtype: torch dtype (torch backend only).
        n_ctx: longest window the llama.cpp backend scores.
        threads: llama.cpp threads.
    """
    from ..models import describe_gguf, load_model, resolve

    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    kind, path = resolve(model)
    if backend == "auto":
        backend = "llama.cpp" if kind == "gguf" else "torch"
    if backend == "llama.cpp":
        if kind != "gguf":
            raise InvalidInputError(f"the llama.cpp backend runs GGUF files; {path} is a Hugging Face directory "
                                    "(export it with `supertiny export gguf`)")
        from ..gguf_file import GGUFFile
        from ..gguf_tokenizer import tokenizer_from_gguf
        from .llamacpp import LlamaCppEngine

        gf = GGUFFile(path)  # parsed once: description, tokenizer and the engine share it
        tokenizer, how = tokenizer_from_gguf(gf)
        engine = LlamaCppEngine(gf, n_ctx=n_ctx, n_threads=threads, logits_all=True)
        info = {**describe_gguf(gf).to_dict(), "tokenizer": how, "backend": "llama.cpp"}
        return Backend("llama.cpp", info, tokenizer, engine.logits, engine.generate)
    lm = load_model(model, dtype=dtype)
    info = {**lm.info.to_dict(), "backend": "torch"}
    return Backend("torch", info, lm.tokenizer, torch_logits(lm.model), torch_generate(lm.model, lm.tokenizer))
