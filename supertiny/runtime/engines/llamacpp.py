"""The llama.cpp engine (llama-cpp-python): load a GGUF file, score, generate, stream.

Thin on purpose: llama.cpp's own decode loop and sampler run the tokens; the text
level (chat template, stop strings, detokenization) is :class:`~.base.Engine`'s,
with the tokenizer supertiny builds from the GGUF metadata (token-for-token equal to
llama.cpp's, see :mod:`supertiny.gguf_tokenizer`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from supertiny.backends import threads_for
from supertiny.errors import InvalidInputError, MissingExtraError, NotAModelError
from supertiny.gguf_file import GGUFFile
from supertiny.gguf_tokenizer import tokenizer_from_gguf
from supertiny.models import describe_gguf
from supertiny.runtime.engines.base import Engine, EngineOptions, register_engine
from supertiny.runtime.engines.constrain import Constraint
from supertiny.runtime.engines.sampling import Sampling, pick_token


@contextlib.contextmanager
def captured_llama_log() -> Iterator[Callable[[], list[str]]]:
    """Collect what llama.cpp logs (all levels) instead of printing it.

    llama.cpp logs one warning per tensor while quantizing; the export report
    carries that information in a structured form, so the lines are kept out of the
    terminal and handed back (for the report, or an error message). The
    callback of llama-cpp-python, which drops all but errors once a model was
    loaded quietly, is put back afterwards.
    """
    llama_cpp = llama_cpp_module()
    from llama_cpp import _logger

    chunks: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: Any) -> None:
        chunks.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lambda: [ln for ln in "".join(chunks).splitlines() if ln.strip()]
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def llama_cpp_module() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise MissingExtraError(
            "the llama.cpp backend needs llama-cpp-python: pip install 'supertiny[llama]' "
            "(build it with CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" for a portable binary)"
        ) from None
    return llama_cpp


@register_engine("llama.cpp", kinds=("gguf",), native=("gguf",),
                 runs="GGUF files (make one with `supertiny export gguf`)")
class LlamaCppEngine(Engine):
    """A GGUF model running in llama.cpp.

    Args:
        path: the ``.gguf`` file (validated with gguf-py before llama.cpp opens it), or
            a :class:`~supertiny.gguf_file.GGUFFile` the caller already validated.
        n_ctx: context length, the longest window :meth:`logits` can score.
        n_threads: CPU threads (default: all cores).
        n_gpu_layers: layers to offload to a GPU build of llama.cpp (0 on CPU, -1 all).
        logits_all: keep logits for every position (needed by :meth:`logits`).
        flash_attn: fused attention (llama.cpp's own default; llama-cpp-python turns it off).
            Its logits differ from the unfused path's by rounding (KL 3e-6 nats on F16).

    Example::

        engine = LlamaCppEngine("model.gguf", logits_all=True)
        engine.logits([1, 2, 3]).shape  # (3, vocab)
    """

    def __init__(self, path: str | os.PathLike[str] | GGUFFile, n_ctx: int = 2048, n_threads: int | None = None,
                 n_gpu_layers: int = 0, logits_all: bool = False, flash_attn: bool = True):
        if isinstance(path, GGUFFile):
            self.gguf = path
        else:
            self.gguf = GGUFFile(Path(path))  # nothing malformed reaches native code
        self.path = self.gguf.path
        llama_cpp = llama_cpp_module()
        self.threads = threads_for(n_threads or None)  # 0 as None: the machine's cores
        with captured_llama_log() as native_log:
            try:
                self.llm = llama_cpp.Llama(
                    model_path=str(self.path), n_ctx=n_ctx, n_threads=self.threads,
                    n_threads_batch=self.threads, n_gpu_layers=n_gpu_layers,
                    logits_all=logits_all, flash_attn=flash_attn, verbose=False,
                )
            except ValueError:  # llama-cpp-python's "Failed to load model"; the reason is in the log
                errors = [ln.strip() for ln in native_log() if "error" in ln.lower()] or ["no message"]
                raise NotAModelError(f"llama.cpp cannot load {self.path}: {errors[0]}") from None
        self.n_ctx = n_ctx
        # a CPU-only build of llama.cpp ignores n_gpu_layers without a word; say so in reports
        self.gpu_offload = bool(n_gpu_layers) and bool(llama_cpp.llama_supports_gpu_offload())
        self.logits_all, self.flash_attn = logits_all, flash_attn

    @classmethod
    def open(cls, path: Path, options: EngineOptions) -> LlamaCppEngine:
        return cls(path, n_ctx=options.n_ctx or 2048, n_threads=options.threads, n_gpu_layers=options.gpu_layers,
                   logits_all=options.logits, flash_attn=options.flash_attn)

    def _load_tokenizer(self) -> tuple[Any, str]:
        return tokenizer_from_gguf(self.gguf)

    def _describe(self) -> dict[str, Any]:
        return describe_gguf(self.gguf).to_dict()

    @property
    def stop_ids(self) -> list[int]:  # type: ignore[override]
        """llama.cpp's end-of-generation tokens (eos, and eot where the vocabulary has one)."""
        vocab = self.llm._model.vocab
        llama_cpp = llama_cpp_module()
        return sorted({t for t in (llama_cpp.llama_vocab_eos(vocab), llama_cpp.llama_vocab_eot(vocab)) if t >= 0})

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.close()

    @property
    def n_vocab(self) -> int:
        return self.llm.n_vocab()

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids as llama.cpp makes them; control tokens in the text are parsed."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits for every position of one window: ``[len(ids), vocab]``."""
        if not self.logits_all:
            raise InvalidInputError("scoring windows needs the logits of every position: open the engine with "
                                    "open_engine(..., logits=True) (LlamaCppEngine(..., logits_all=True))")
        if len(ids) > self.n_ctx:
            raise InvalidInputError(f"window of {len(ids)} tokens exceeds n_ctx={self.n_ctx}")
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling | None = None,
               stop_ids: Sequence[int] | None = None, constraint: Constraint | None = None) -> Iterator[int]:
        """Generate token ids one at a time with llama.cpp's sampler (greedy by default).

        A token in ``stop_ids`` ends the stream and is not yielded (default: none).
        A prompt that starts like the previous one reuses its cached prefix. A ``constraint``
        masks the logits first in llama.cpp's sampler chain (llama-cpp-python's logits processor).
        """
        sampling = sampling or Sampling()
        stop = set(stop_ids or ())
        if max_new_tokens <= 0:
            return
        greedy = sampling.temperature == 0
        if not greedy and sampling.seed is not None:
            self.llm.set_seed(sampling.seed)
        kwargs = {"temp": sampling.temperature, "top_k": 1 if greedy else sampling.top_k,
                  "top_p": sampling.top_p, "min_p": 0.0, "repeat_penalty": 1.0, "reset": True}
        if constraint is not None:
            yield from self._held(list(prompt_ids), max_new_tokens, sampling, kwargs, stop, constraint)
            return
        produced = 0
        for token in self.llm.generate(list(prompt_ids), **kwargs):
            if token in stop:
                return
            yield token
            produced += 1
            if produced >= max_new_tokens:  # stop before llama.cpp decodes one token too many
                return

    def _held(self, prompt: list[int], max_new_tokens: int, sampling: Sampling, kwargs: dict[str, Any],
              stop: set[int], constraint: Constraint) -> Iterator[int]:
        """:meth:`stream` held to ``constraint``: llama.cpp picks freely; a pick the grammar refuses is
        replaced by a pick from the masked logits of that step, and decoding restarts from the corrected
        sequence (llama-cpp-python reuses the cached prefix, so only the new token is evaluated). A
        trained model is rarely refused, so decoding runs at llama.cpp's own speed (a logits processor
        cost ~0.8 ms a token in llama-cpp-python's sampler wrapper). Exact for greedy and temperature-only
        sampling (a refused draw redrawn from the allowed tokens); with top-k or top-p every step is masked
        in the sampler chain instead, since their cut-offs change once tokens are masked."""
        llama_cpp = llama_cpp_module()
        if not (sampling.temperature == 0 or (sampling.top_k == 0 and sampling.top_p == 1.0)):
            kwargs = {**kwargs, "logits_processor": [lambda _ids, scores: constraint.mask(scores)]}
        rng, out = np.random.default_rng(sampling.seed), []
        while True:
            steps = self.llm.generate(prompt + out, **kwargs)
            try:
                for token in steps:
                    refused = not constraint.allows(token, self.n_vocab)
                    if refused:  # the logits this pick came from: the context's last row
                        row = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
                        logits = np.ctypeslib.as_array(row, shape=(self.n_vocab,)).astype(np.float32)
                        token = pick_token(constraint.mask(logits), sampling, rng)
                    constraint.accept(token)
                    if token in stop:
                        return
                    yield token
                    out.append(token)
                    if len(out) >= max_new_tokens or constraint.finished:
                        return
                    if refused:
                        break  # the sampled token is not what was kept: decode on from the corrected sequence
                else:
                    return
            finally:
                steps.close()

    def reset(self) -> None:
        """Forget the evaluated tokens: the next call prefills its whole prompt.

        llama-cpp-python reuses the cache for the longest prefix a new prompt shares
        with the previous one, which a chat wants and a prefill benchmark must avoid.
        """
        self.llm.reset()
