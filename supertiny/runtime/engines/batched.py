"""Many sequences in one llama.cpp forward pass: the batched GGUF engine.

:class:`BatchedLlamaEngine` keeps up to ``parallel`` sequences in one llama.cpp
context, each in its own KV cache stream (``seq_id`` = slot). One :meth:`step` builds a
single ``llama_batch`` holding the next token of every decoding sequence plus a chunk
of the prompt of sequences still in prefill (at most ``n_batch`` tokens in all), runs
one ``llama_decode`` and samples one token per sequence whose logits came out. A long
prompt is therefore fed in chunks interleaved with the running decodes instead of
stalling them for its whole length. Sampling is :mod:`.sampling`'s, per sequence, so
greedy replies are the argmax of the same logits the single-sequence engine sees.

Why each sequence has its own KV stream (``kv_unified=False``): its cells start at 0
and stay contiguous, as in the single-sequence engine, so attention sums in the same
order (greedy replies equal token for token), and attention never scans other
sequences' cells. The cost is memory: ``parallel × n_ctx`` cells.

**Prompt cache.** A finished sequence leaves its tokens in its stream. A new one takes
the free slot whose cached tokens share the longest prefix with its prompt and feeds
only the rest, as llama.cpp's server does with ``cache_prompt``: a system prompt common
to every request, or the K samples of one prompt (``supertiny teach``), is evaluated
once per slot instead of once per request. :meth:`reset` forgets it (benchmarks timing
a whole prefill call it between runs).

The engine is not thread-safe; :class:`~supertiny.runtime.serving.batch_scheduler.BatchScheduler` drives it from
one thread and turns the tokens into text with the shared text layer. On its own,
:meth:`stream` runs one sequence (``Engine.stream_text``/``complete`` work as on every
engine), which is how a benchmark measures single-stream speed on it.

Example::

    engine = BatchedLlamaEngine("model.gguf", parallel=4)
    a = engine.add(engine.tokenize("Hello"), 8)
    b = engine.add(engine.tokenize("The capital of France is"), 8)
    while engine.active:
        for slot, token, done in engine.step():
            ...
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from supertiny.errors import InvalidInputError, SupertinyError
from supertiny.runtime.engines.base import EngineOptions
from supertiny.runtime.engines.constrain import Constraint
from supertiny.runtime.engines.llamacpp import LlamaCppEngine, captured_llama_log, llama_cpp_module
from supertiny.runtime.engines.sampling import Sampling, pick_token

_FRONT_CTX = 256  # the Llama object's own context: only its model and vocabulary are used


@dataclass
class _Seq:
    """One sequence's state between steps."""

    prompt: list[int]
    budget: int  # most tokens to generate
    sampling: Sampling
    stop: frozenset[int]
    rng: np.random.Generator
    fed: int = 0  # tokens in the KV cache (prompt, then generated), also the next position
    reused: int = 0  # prompt tokens found in the slot's cache: not fed again
    next_token: int | None = None  # sampled, not yet fed
    produced: int = 0
    row: int = -1  # this step's batch index whose logits are the sequence's
    constraint: Constraint | None = None  # the grammar the reply is held to


class BatchedLlamaEngine(LlamaCppEngine):
    """A GGUF model decoding up to ``parallel`` sequences per forward pass.

    Args:
        path: the ``.gguf`` file.
        n_ctx: context of each sequence (prompt plus reply).
        n_threads: CPU threads (default: all cores).
        n_gpu_layers: layers to offload to a GPU build.
        parallel: sequences decoded together (KV cache: ``parallel × n_ctx`` cells).
        n_batch: most prompt tokens per forward pass (on top of one token per decoding
            sequence); a smaller value bounds how long a prompt holds up the running
            decodes, at some cost in prefill speed.
        flash_attn: fused attention, as the single-sequence engine (same setting, same
            greedy replies); with many sequences it saves the most.
        cache_prompts: keep each slot's tokens after its sequence ends and reuse the
            longest common prefix (see above); off: every prompt is fed whole.
    """

    def __init__(self, path: str | os.PathLike[str], n_ctx: int = 2048, n_threads: int | None = None,
                 n_gpu_layers: int = 0, parallel: int = 4, n_batch: int = 512, flash_attn: bool = True,
                 cache_prompts: bool = True):
        if parallel < 1:
            raise InvalidInputError(f"parallel must be >= 1, got {parallel}")
        if n_batch < 1:
            raise InvalidInputError(f"n_batch must be >= 1, got {n_batch}")
        super().__init__(path, n_ctx=min(n_ctx, _FRONT_CTX), n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                         flash_attn=flash_attn)
        llama_cpp = llama_cpp_module()
        from llama_cpp import _internals

        self.llm._ctx.close()  # unused: free its KV cache now (the model stays)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx * parallel, parallel, False
        params.n_batch = params.n_ubatch = n_batch + parallel  # a prompt chunk plus every decode
        params.n_threads = params.n_threads_batch = self.threads  # what LlamaCppEngine chose (threads_for)
        # as the single-sequence engine opens its context, so replies and speeds compare like for like
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.no_perf = True
        with captured_llama_log() as native_log:
            try:
                self._context = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
            except ValueError:
                errors = [ln.strip() for ln in native_log() if "error" in ln.lower()] or ["no message"]
                raise SupertinyError(f"llama.cpp cannot make a batched context: {errors[0]}") from None
        self._ctx = self._context.ctx
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self.n_ctx = min(n_ctx, llama_cpp.llama_n_ctx_seq(self._ctx))
        self.parallel, self.n_batch, self.cache_prompts = parallel, n_batch, cache_prompts
        self._vocab = self.llm.n_vocab()
        cap = n_batch + parallel
        self._batch = llama_cpp.llama_batch_init(cap, 0, 1)
        b = self._batch
        self._tok = np.ctypeslib.as_array(b.token, shape=(cap,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(cap,))
        self._out = np.ctypeslib.as_array(b.logits, shape=(cap,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(cap,))[:] = 1
        self._seq_ptr = [b.seq_id[i] for i in range(cap)]
        self._seqs: dict[int, _Seq] = {}
        self._order: list[int] = []  # admission order: prompt chunks are fed first come, first served
        self._kv: list[list[int]] = [[] for _ in range(parallel)]  # tokens each stream's cells hold, in order
        self._stop_ids = super().stop_ids
        self.clear()

    @classmethod
    def open(cls, path: Path, options: EngineOptions, parallel: int = 4,  # type: ignore[override]
             n_batch: int = 512) -> BatchedLlamaEngine:
        return cls(path, n_ctx=options.n_ctx or 2048, n_threads=options.threads, n_gpu_layers=options.gpu_layers,
                   parallel=parallel, n_batch=n_batch, flash_attn=options.flash_attn)

    @property
    def stop_ids(self) -> list[int]:  # type: ignore[override]
        return self._stop_ids

    @property
    def backend_label(self) -> str:
        return f"llama.cpp (batched x{self.parallel})"

    # -- sequences -------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return self.parallel - len(self._seqs)

    @property
    def active(self) -> int:
        return len(self._seqs)

    def add(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling | None = None,
            stop_ids: Sequence[int] | None = None, constraint: Constraint | None = None) -> int:
        """Start a sequence; returns its slot. Its prompt is fed by the next steps; with a
        ``constraint`` its tokens are picked among those the grammar allows, and it ends with the grammar.

        Raises:
            InvalidInputError: the prompt is empty or the prompt plus reply exceed ``n_ctx``.
            RuntimeError: every slot is taken (the caller admits only what fits).
        """
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise InvalidInputError("the prompt is empty")
        if max_new_tokens < 1 or len(prompt) + max_new_tokens > self.n_ctx:
            raise InvalidInputError(f"a prompt of {len(prompt)} tokens and {max_new_tokens} new ones do not fit "
                                    f"the context of {self.n_ctx}")
        if not self.free_slots:
            raise RuntimeError("no free sequence slot")
        # the free slot whose cache shares the longest prefix (the lowest on ties); at least the
        # prompt's last token is fed again: its logits give the first reply token
        reused, slot = max((self._common(s, prompt), -s) for s in range(self.parallel) if s not in self._seqs)
        slot = -slot
        llama_cpp_module().llama_memory_seq_rm(self._mem, slot, reused, -1)
        del self._kv[slot][reused:]
        sampling = sampling or Sampling()
        self._seqs[slot] = _Seq(prompt, max_new_tokens, sampling, frozenset(stop_ids or ()),
                                np.random.default_rng(sampling.seed), fed=reused, reused=reused,
                                constraint=constraint)
        self._order.append(slot)
        return slot

    def _common(self, slot: int, prompt: list[int]) -> int:
        if not self.cache_prompts:
            return 0
        cached, n = self._kv[slot], 0
        limit = min(len(cached), len(prompt) - 1)
        while n < limit and cached[n] == prompt[n]:
            n += 1
        return n

    def reused_tokens(self, slot: int) -> int:
        """Prompt tokens the running sequence in ``slot`` took from the cache."""
        return self._seqs[slot].reused

    def release(self, slot: int) -> None:
        """End a sequence (finished or cancelled); a free slot is a no-op. Its tokens stay
        cached for the next prompt that shares their prefix (without ``cache_prompts`` its
        cells are freed)."""
        if self._seqs.pop(slot, None) is not None:
            self._order.remove(slot)
            if not self.cache_prompts:
                self._forget(slot)

    def _forget(self, slot: int) -> None:
        llama_cpp_module().llama_memory_seq_rm(self._mem, slot, -1, -1)
        self._kv[slot].clear()

    def clear(self) -> None:
        """End every sequence and empty the KV cache (after a failed step)."""
        self._seqs.clear()
        self._order.clear()
        for cached in self._kv:
            cached.clear()
        llama_cpp_module().llama_memory_clear(self._mem, True)

    def kv_tokens(self, slot: int) -> int:
        """Cells the KV cache holds for ``slot``: always :meth:`cached_tokens` of it (nothing
        leaks), 0 after :meth:`reset` or with ``cache_prompts`` off once the slot is free."""
        return int(llama_cpp_module().llama_memory_seq_pos_max(self._mem, slot)) + 1

    def cached_tokens(self, slot: int) -> list[int]:
        """The tokens whose cells ``slot``'s stream holds, in order."""
        return list(self._kv[slot])

    def step(self) -> list[tuple[int, int | None, bool]]:
        """One forward pass over every active sequence.

        Returns:
            ``(slot, token, done)`` for each sequence that produced a token: ``token`` is
            None when it sampled a stop id (not part of the reply). A ``done`` sequence
            reached its budget or a stop id and is released already.
        """
        n = 0
        for slot in self._order:  # decodes first: every running reply advances each step
            seq = self._seqs[slot]
            seq.row = -1
            if seq.next_token is not None:
                n = self._put(n, slot, [seq.next_token], seq.fed, True)
                seq.fed, seq.next_token, seq.row = seq.fed + 1, None, n - 1
        room = self.n_batch  # prompt tokens this step, on top of the decodes
        for slot in self._order:  # then prompt chunks, first come first served
            seq = self._seqs[slot]
            todo = len(seq.prompt) - seq.fed
            # Chunks start at multiples of n_batch from the first token not cached, as the
            # single-sequence engine feeds a prompt: the KV cache then holds the same numbers
            # and greedy replies agree.
            take = min(todo, self.n_batch)
            if 0 < take <= room:
                n = self._put(n, slot, seq.prompt[seq.fed:seq.fed + take], seq.fed, take == todo)
                seq.fed += take
                room -= take
                if take == todo:
                    seq.row = n - 1
        if n == 0:
            return []
        self._batch.n_tokens = n
        rc = llama_cpp_module().llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise SupertinyError(f"llama_decode failed with code {rc} on a batch of {n} tokens")
        return self._sample()

    def _put(self, n: int, slot: int, tokens: list[int], pos: int, last_logits: bool) -> int:
        k = len(tokens)
        self._tok[n:n + k] = tokens
        self._pos[n:n + k] = np.arange(pos, pos + k)
        self._out[n:n + k] = 0
        self._out[n + k - 1] = int(last_logits)
        for i in range(n, n + k):
            self._seq_ptr[i][0] = slot
        self._kv[slot] += tokens
        return n + k

    def _sample(self) -> list[tuple[int, int | None, bool]]:
        llama_cpp, events = llama_cpp_module(), []
        for slot in list(self._order):
            seq = self._seqs[slot]
            if seq.row < 0:
                continue
            ptr = llama_cpp.llama_get_logits_ith(self._ctx, seq.row)
            logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self._vocab,))
            greedy = seq.sampling.temperature == 0 and seq.constraint is None
            token = int(logits.argmax()) if greedy else pick_token(logits, seq.sampling, seq.rng, seq.constraint)
            if token in seq.stop:
                events.append((slot, None, True))
                self.release(slot)
                continue
            seq.produced += 1
            # the last token is not fed: nothing would read it
            done = seq.produced >= seq.budget or (seq.constraint is not None and seq.constraint.finished)
            events.append((slot, token, done))
            if done:
                self.release(slot)
            else:
                seq.next_token = token
        return events

    # -- the Engine API on one sequence ----------------------------------------------------

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling | None = None,
               stop_ids: Sequence[int] | None = None, constraint: Constraint | None = None) -> Iterator[int]:
        """One sequence on its own (the engine must be idle): token ids one at a time."""
        if max_new_tokens <= 0:
            return
        if self._seqs:
            raise RuntimeError("stream() runs one sequence on an idle engine; a scheduler is using this one")
        slot = self.add(prompt_ids, max_new_tokens, sampling, stop_ids, constraint)
        try:
            while slot in self._seqs:
                for _, token, _ in self.step():
                    if token is not None:
                        yield token
        finally:
            self.release(slot)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        raise InvalidInputError("scoring windows needs the single-sequence llama.cpp engine: "
                                "open_engine(..., logits=True)")

    def reset(self) -> None:
        """Forget the cached prompts of the free slots (running sequences keep theirs)."""
        for slot in range(self.parallel):
            if slot not in self._seqs:
                self._forget(slot)

    def close(self) -> None:
        batch = self.__dict__.pop("_batch", None)
        if batch is not None:
            llama_cpp_module().llama_batch_free(batch)
        context = self.__dict__.pop("_context", None)
        if context is not None:
            context.close()
        super().close()
