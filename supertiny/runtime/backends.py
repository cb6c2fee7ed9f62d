"""Open any model for measuring: PyTorch for HF directories, llama.cpp for GGUF files,
onnxruntime for ONNX exports.

A :class:`Backend` is what :mod:`supertiny.evaluate` needs from a model: its
tokenizer, a logits function and a generation function.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError
from ..evaluate import GenerateFn, LogitsFn, torch_generate, torch_logits

BACKENDS = ("auto", "torch", "llama.cpp", "onnxruntime")
_NATIVE = {"gguf": "llama.cpp", "onnx": "onnxruntime", "hf": "torch"}


@dataclass
class Backend:
    name: str
    info: dict[str, Any]
    tokenizer: Any
    logits: LogitsFn
    generate: GenerateFn


def open_backend(model: str | os.PathLike[str], backend: str = "auto", dtype: str = "float32",
                 n_ctx: int = 2048, threads: int | None = None, provider: str = "cpu") -> Backend:
    """Open MODEL on a backend (``auto``: llama.cpp for a GGUF file, onnxruntime for an
    ONNX export, torch for a Hugging Face directory).

    Args:
        model: a Hugging Face directory, a ``.gguf`` file, an ONNX export directory or
            ``"default"``.
        backend: ``auto``, ``torch``, ``llama.cpp`` or ``onnxruntime``.
        dtype: torch dtype (torch backend only).
        n_ctx: longest window the llama.cpp backend scores.
        threads: llama.cpp / onnxruntime threads.
        provider: onnxruntime execution provider (``cpu``, ``cuda``, ``dml``).
    """
    from ..models import describe_gguf, load_model, resolve

    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    kind, path = resolve(model)
    if backend == "auto":
        backend = _NATIVE[kind]
    if kind == "onnx" and backend != "onnxruntime":
        raise InvalidInputError(f"{path} is an ONNX export; it runs on the onnxruntime backend")
    if backend == "onnxruntime":
        if kind != "onnx":
            raise InvalidInputError(f"the onnxruntime backend runs ONNX exports; {path} is not one "
                                    "(export it with `supertiny export onnx`)")
        from ..models import describe_onnx
        from .onnxrt import OnnxEngine, load_tokenizer, stop_ids

        engine = OnnxEngine(path, threads=threads, provider=provider)
        tokenizer = load_tokenizer(path)
        stop = stop_ids(tokenizer, path)
        info = {**describe_onnx(path).to_dict(), "tokenizer": "tokenizer files of the export",
                "backend": f"onnxruntime ({provider})"}
        return Backend("onnxruntime", info, tokenizer, engine.logits,
                       lambda ids, n: engine.generate(ids, n, stop_ids=stop))
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
