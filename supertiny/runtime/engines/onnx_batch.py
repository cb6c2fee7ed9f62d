"""Static batches on onnxruntime: several sequences decoded in one forward pass per step.

optimum's ``text-generation-with-past`` graph has a batch dimension everywhere
(``input_ids [B, S]``, ``attention_mask [B, past + S]``, ``position_ids [B, S]``, the
cache ``[B, kv_heads, past, head_dim]``), so sequences of different lengths decode
together once their caches are left-padded to one length, the padding masked out by
``attention_mask`` and each row's positions counted from its own first token.

* **Prefill one prompt at a time.** The graph returns logits for every position, so a
  padded batch prefill would hold ``B x L x vocab`` floats (1.6 GB at 16 x 512 on a
  49k vocabulary); a prompt is compute-bound anyway. Each row's cache is then padded on
  the left to the longest and the rows are stacked.
* **Decode together.** One step feeds one token per row; a row that ends (stop id,
  budget, cancel) leaves the batch and its cache rows are dropped, so the rest run
  smaller steps.
* **Static.** The batch is fixed when it starts: a request that arrives meanwhile waits
  for the next batch (:class:`supertiny.runtime.serving.static_batch.StaticBatchScheduler`); llama.cpp's engine
  admits new
  sequences between steps instead (:mod:`.batched`).

onnxruntime-genai's graphs (``--format genai``) are not batched here: our engine binds
their in-place ``GroupQueryAttention`` cache per sequence. onnxruntime-genai batches them
itself: its ``Engine``/``Request`` API (0.15) steps several requests together; on its
static KV cache a new batch is admitted only once every request of the running one has
completed (``StaticCacheManager::CanAllocate``), and admitting between steps needs its
paged cache (``PagedCacheManager``, a paged-attention graph).

Example::

    engine = OnnxEngine("out/")
    batch = StaticBatch(engine, [[1, 2, 3], [4, 5]], [8, 8])
    while batch.active:
        events = batch.step()   # [(row, token, done), ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.constrain import Constraint, Grammar
from supertiny.runtime.engines.onnxrt import OnnxEngine
from supertiny.runtime.engines.sampling import Sampling, pick_token


class StaticBatch:
    """Sequences prefilled one by one, then decoded together until each ends.

    Args:
        engine: an :class:`~.onnxrt.OnnxEngine` on an optimum graph (``position_ids`` and
            ``attention_mask`` inputs, a cache that grows per step).
        prompts: token ids per row.
        budgets: most tokens to generate per row (already cut to the context).
        samplings: per row (greedy when omitted).
        stop_ids: per row, the ids that end it (not emitted).
        constraints: per row, the grammar it is held to (None: free); a row ends with its grammar.
    """

    def __init__(self, engine: OnnxEngine, prompts: Sequence[Sequence[int]], budgets: Sequence[int],
                 samplings: Sequence[Sampling] | None = None, stop_ids: Sequence[Sequence[int]] | None = None,
                 constraints: Sequence[Constraint | None] | None = None):
        check_batchable(engine)
        if not prompts or len(budgets) != len(prompts):
            raise InvalidInputError(f"a batch needs prompts and one budget each, got {len(prompts)} and {len(budgets)}")
        self.engine = engine
        n = len(prompts)
        self._samplings = list(samplings or [Sampling()] * n)
        self._stops = [frozenset(s) for s in (stop_ids or [()] * n)]
        self._constraints = list(constraints or [None] * n)
        self._rngs = [np.random.default_rng(s.seed) for s in self._samplings]
        self._budgets, self._produced = list(budgets), [0] * n
        self._lengths = [len(p) for p in prompts]  # tokens in each row's cache (its next position)
        logits, caches = [], []
        for p in prompts:
            engine.check_length(len(p))
            row_logits, past = engine.forward(list(p), engine.empty_past(0), 0)
            logits.append(row_logits[-1].astype(np.float32, copy=False))
            caches.append([v.numpy() for v in past])
        width = max(self._lengths)
        # left-pad every row's cache to the longest prompt; the mask hides the padding
        self._mask = np.zeros((n, width), dtype=np.int64)
        self._past = []
        for layer in range(len(engine.past_names)):
            full = np.zeros((n, engine.kv_heads, width, engine.head_dim), dtype=engine.kv_dtype)
            for i, cache in enumerate(caches):
                full[i, :, width - self._lengths[i]:] = cache[layer][0]
            self._past.append(full)
        for i, length in enumerate(self._lengths):
            self._mask[i, width - length:] = 1
        self._rows = list(range(n))  # original row index of each batch position
        self._logits = np.stack(logits)

    @property
    def active(self) -> list[int]:
        """Rows still decoding."""
        return list(self._rows)

    def release(self, row: int) -> None:
        """Drop a row (cancelled): its cache leaves the batch; an ended row is a no-op."""
        if row in self._rows:
            self._keep([r for r in self._rows if r != row])

    def _keep(self, rows: list[int]) -> None:
        where = [self._rows.index(r) for r in rows]
        self._past = [_array(p)[where] for p in self._past]
        self._mask, self._logits, self._rows = self._mask[where], self._logits[where], rows

    def step(self) -> list[tuple[int, int | None, bool]]:
        """Pick each active row's next token, then run one forward pass for the rows still going.

        Returns:
            ``(row, token, done)`` per active row; ``token`` is None when the row sampled a
            stop id (not part of the reply). A done row has left the batch.
        """
        events, going, tokens = [], [], []
        for pos, row in enumerate(self._rows):
            s, constraint = self._samplings[row], self._constraints[row]
            token = int(self._logits[pos].argmax()) if s.temperature == 0 and constraint is None else pick_token(
                self._logits[pos], s, self._rngs[row], constraint)
            if token in self._stops[row]:
                events.append((row, None, True))
                continue
            self._produced[row] += 1
            done = self._produced[row] >= self._budgets[row] or (constraint is not None and constraint.finished)
            events.append((row, token, done))
            if not done:
                going.append(row)
                tokens.append(token)
        if going != self._rows:
            self._keep(going)
        if going:
            self._decode(tokens)
        return events

    def _decode(self, tokens: list[int]) -> None:
        engine = self.engine
        n = len(tokens)
        self._mask = np.concatenate([self._mask, np.ones((n, 1), dtype=np.int64)], axis=1)
        positions = np.asarray([[self._lengths[r]] for r in self._rows], dtype=np.int64)
        binding = engine.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray(tokens, dtype=np.int64)[:, None])
        binding.bind_cpu_input("attention_mask", self._mask)
        binding.bind_cpu_input("position_ids", positions)
        for name, value in zip(engine.past_names, self._past, strict=True):
            if isinstance(value, np.ndarray):  # padded or shrunk this step
                binding.bind_cpu_input(name, value)
            else:  # last step's output, still in onnxruntime's memory: not copied
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in engine.present_names:
            binding.bind_output(name, "cpu")
        engine.session.run_with_iobinding(binding)
        out = binding.get_outputs()
        self._logits = out[0].numpy()[:, -1].astype(np.float32, copy=False)
        self._past = list(out[1:])
        for r in self._rows:
            self._lengths[r] += 1


def _array(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


def check_batchable(engine: OnnxEngine) -> None:
    """Raise unless ``engine``'s graph can decode a padded batch (an optimum graph)."""
    if not isinstance(engine, OnnxEngine):
        raise InvalidInputError(f"static batches run on the onnxruntime engine, not {type(engine).__name__}")
    if engine.shared_cache or not (engine.has_mask and engine.has_positions):
        raise InvalidInputError(f"{engine.path.parent} cannot decode a padded batch here: batching needs an optimum "
                                "graph (attention_mask and position_ids inputs); export with --format optimum")


def generate_batch(engine: OnnxEngine, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   sampling: Sampling | None = None, stop_ids: Sequence[int] | None = None,
                   grammar: Grammar | None = None) -> list[list[int]]:
    """Generate for several prompts in one static batch; per prompt the ids of its reply.

    Greedy replies equal :meth:`OnnxEngine.generate`'s one prompt at a time (tested).

    Example::

        replies = generate_batch(OnnxEngine("out/"), [[1, 2, 3], [4, 5]], 8)
    """
    budgets = [engine.check_request(len(p), max_new_tokens) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    if not any(budgets):
        return out
    batch = StaticBatch(engine, prompts, [max(b, 1) for b in budgets], [sampling or Sampling()] * len(prompts),
                        [list(stop_ids or ())] * len(prompts),
                        [engine.constraint(grammar) if grammar else None for _ in prompts])
    while batch.active:
        for row, token, _ in batch.step():
            if token is not None and budgets[row]:
                out[row].append(token)
    return out
