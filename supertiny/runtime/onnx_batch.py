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
  for the next batch (:class:`StaticBatchScheduler`); llama.cpp's engine admits new
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

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .onnxrt import OnnxEngine
from .sampling import Sampling, pick_token
from .scheduler import Job, Scheduler
from .text import Chunk, TextStream


class StaticBatch:
    """Sequences prefilled one by one, then decoded together until each ends.

    Args:
        engine: an :class:`~.onnxrt.OnnxEngine` on an optimum graph (``position_ids`` and
            ``attention_mask`` inputs, a cache that grows per step).
        prompts: token ids per row.
        budgets: most tokens to generate per row (already cut to the context).
        samplings: per row (greedy when omitted).
        stop_ids: per row, the ids that end it (not emitted).
    """

    def __init__(self, engine: OnnxEngine, prompts: Sequence[Sequence[int]], budgets: Sequence[int],
                 samplings: Sequence[Sampling] | None = None, stop_ids: Sequence[Sequence[int]] | None = None):
        check_batchable(engine)
        if not prompts or len(budgets) != len(prompts):
            raise InvalidInputError(f"a batch needs prompts and one budget each, got {len(prompts)} and {len(budgets)}")
        self.engine = engine
        n = len(prompts)
        self._samplings = list(samplings or [Sampling()] * n)
        self._stops = [frozenset(s) for s in (stop_ids or [()] * n)]
        self._rngs = [np.random.default_rng(s.seed) for s in self._samplings]
        self._budgets, self._produced = list(budgets), [0] * n
        self._lengths = [len(p) for p in prompts]  # tokens in each row's cache (its next position)
        logits, caches = [], []
        for p in prompts:
            engine._check_length(len(p))
            row_logits, past = engine._run(list(p), engine._empty_past(0), 0)
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
            s = self._samplings[row]
            token = int(self._logits[pos].argmax()) if s.temperature == 0 else pick_token(
                self._logits[pos], s, self._rngs[row])
            if token in self._stops[row]:
                events.append((row, None, True))
                continue
            self._produced[row] += 1
            done = self._produced[row] >= self._budgets[row]
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
                   sampling: Sampling | None = None, stop_ids: Sequence[int] | None = None) -> list[list[int]]:
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
                        [list(stop_ids or ())] * len(prompts))
    while batch.active:
        for row, token, _ in batch.step():
            if token is not None and budgets[row]:
                out[row].append(token)
    return out


class StaticBatchScheduler(Scheduler):
    """A :class:`~.scheduler.Scheduler` that runs queued jobs in static batches of up to ``batch``.

    Jobs queued when a batch starts decode together; the next batch starts when the last
    of them ends. ``gather_s``: how long the worker waits for more jobs when fewer than
    ``batch`` are queued (clients that start together then share a batch).
    """

    def __init__(self, engine: OnnxEngine, batch: int = 8, max_queue: int = 16,
                 request_timeout_s: float | None = 120.0, gather_s: float = 0.01):
        check_batchable(engine)
        if batch < 1:
            raise InvalidInputError(f"batch must be >= 1, got {batch}")
        self.engine, self.batch, self.gather_s = engine, batch, gather_s
        super().__init__([engine], max_queue, request_timeout_s)

    @property
    def slots(self) -> int:
        return self.batch

    def _make_workers(self) -> list[threading.Thread]:
        return [threading.Thread(target=self._loop, name="supertiny-static-batch", daemon=True)]

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                if len(self._queue) < self.batch and not self._closing:
                    self._cond.wait(self.gather_s)
                jobs = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                for i, job in enumerate(jobs):
                    self._running[i] = job
            try:
                self._run_batch(jobs)
            finally:
                with self._cond:
                    for job in jobs:
                        if not job.done:
                            job._finish(None, RuntimeError("the batch stopped without a finish reason"))
                        self._tally(job)
                    self._running.clear()

    def _run_batch(self, jobs: list[Job]) -> None:
        live: dict[int, tuple[Job, TextStream]] = {}
        prompts, budgets, samplings, stops = [], [], [], []
        for job in jobs:
            if not job._begin():
                continue
            budget = self.engine.check_request(len(job.prompt_ids), job.max_tokens)
            if budget == 0:
                job._push(Chunk("", [], "length"))
                continue
            live[len(prompts)] = (job, TextStream(self.engine.tokenizer, budget, job.stop, job._cancel))
            prompts.append(job.prompt_ids)
            budgets.append(budget)
            samplings.append(job.sampling)
            stops.append([] if job.ignore_eos else self.engine.stop_ids)
        if not live:
            return
        try:
            batch = StaticBatch(self.engine, prompts, budgets, samplings, stops)
            while batch.active:
                for row in batch.active:
                    job, _ = live[row]
                    if job.done or job._cancel.is_set():
                        job._finish("cancelled", chunk=Chunk("", [], "cancelled"))
                        batch.release(row)
                if not batch.active:
                    break
                for row, token, done in batch.step():
                    self._deliver(batch, live[row], row, token, done)
        except Exception as exc:  # every job still running gets it; the loop keeps serving
            for job, _ in live.values():
                if not job.done:
                    job._finish(None, exc)

    def _deliver(self, batch: StaticBatch, item: tuple[Job, TextStream], row: int, token: int | None,
                 done: bool) -> None:
        if self._push_token(*item, token, done) == "stopped":  # a row the batch ended frees itself
            batch.release(row)
