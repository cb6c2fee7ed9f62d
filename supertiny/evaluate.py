"""The measuring stick: perplexity, agreement with a teacher, greedy generation.

The measures take a *logits function* — token ids of one window in, a
``[len(ids), vocab]`` array of next-token logits out — so every backend plugs in:
:func:`torch_logits` wraps a PyTorch model here; the llama.cpp and onnxruntime
engines provide the same callable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from supertiny.errors import BrokenCheckpointError, InvalidInputError
from supertiny.readers import default_corpus_path, read_text  # noqa: F401 - the readers; kept importable here

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LogitsFn = Callable[[Sequence[int]], "np.ndarray | torch.Tensor"]
Progress = Callable[[int, int], None]  # (windows done, windows in all)

DEFAULT_WINDOW = 512
DEFAULT_STRIDE = 256
DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Explain in one sentence what a CPU does.",
)


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int | None = None) -> list[int]:
    """Token ids of a text as the model sees it (bos added when the tokenizer adds it)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if max_tokens is not None:
        if max_tokens < 2:
            raise InvalidInputError(f"max_tokens must be at least 2, got {max_tokens}")
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise InvalidInputError(f"the text has {len(ids)} token(s); at least 2 are needed to score one")
    return ids


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids ``a`` and ``b`` share (two generations, or a prompt and the shared part of prompts).

    >>> common_prefix([5, 6, 7, 8], [5, 6, 9])
    2
    """
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def windows(n_tokens: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """Strided evaluation windows over ``n_tokens`` tokens.

    Yields ``(begin, end, first)``: the model reads tokens ``[begin, end)`` and the
    predictions of tokens ``[first, end)`` are scored. Every token from 1 to
    ``n_tokens - 1`` is scored exactly once (token 0 has nothing to be predicted
    from), each with at least ``window - stride`` tokens of context (at least one)
    after the first window.

    Example:
        >>> list(windows(10, 4, 2))
        [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    """
    if window < 2:
        raise InvalidInputError(f"window must be at least 2 tokens, got {window}")
    if not 0 < stride <= window:
        raise InvalidInputError(f"stride must be in 1..window ({window}), got {stride}")
    begin, scored_to = 0, 1
    while True:
        end = min(begin + window, n_tokens)
        if end > scored_to:
            yield begin, end, scored_to
            scored_to = end
        if end >= n_tokens:
            return
        # The first unscored token is predicted from the token before it, so the next
        # window must start at or before that one (a stride of `window` moves by
        # `window - 1`).
        begin = min(begin + stride, scored_to - 1)


def torch_logits(model: PreTrainedModel) -> LogitsFn:
    """A logits function for a PyTorch causal LM (one window, no batching)."""
    import torch

    device = next(model.parameters()).device

    def fn(ids: Sequence[int]) -> torch.Tensor:
        with torch.inference_mode():
            x = torch.tensor([list(ids)], dtype=torch.long, device=device)
            return model(input_ids=x).logits[0]

    return fn


@dataclass(frozen=True)
class TextScore:
    """Perplexity of one model on one text."""

    perplexity: float
    nll_mean: float  # nats per scored token
    tokens_scored: int
    tokens: int
    window: int
    stride: int
    seconds: float


@dataclass(frozen=True)
class Agreement:
    """How closely a student follows a teacher on the same text."""

    top1_agreement: float  # share of positions where both argmaxes agree
    kl_mean: float  # mean KL(teacher || student) per position, nats
    kl_p95: float
    student: TextScore
    teacher: TextScore


def _log_softmax(logits: Any) -> torch.Tensor:
    import torch

    t = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(logits)
    return torch.log_softmax(t.detach().to("cpu", torch.float32), dim=-1)


def _rows(fn: LogitsFn, ids: Sequence[int], begin: int, end: int, first: int) -> torch.Tensor:
    """Log-probabilities predicting tokens ``[first, end)`` from window ``[begin, end)``."""
    logits = fn(ids[begin:end])
    if tuple(logits.shape[:1]) != (end - begin,):
        raise InvalidInputError(
            f"logits function returned shape {tuple(logits.shape)} for {end - begin} tokens"
        )
    rows = _log_softmax(logits[first - 1 - begin : end - 1 - begin])
    # NaN or +Inf logits (a -Inf logit is a masked token, fine) make NaN log-probabilities,
    # which would be reported as `perplexity nan`.
    if bool(rows.isnan().any()):
        bad = int(rows.isnan().any(-1).sum())
        raise BrokenCheckpointError(
            f"the model returned non-finite logits (NaN/Inf) at {bad} of {end - first} scored positions of "
            f"tokens {begin}..{end}: its weights are broken"
        )
    return rows


def _score(
    fns: Sequence[LogitsFn],
    ids: Sequence[int],
    window: int,
    stride: int,
    progress: Progress | None,
) -> tuple[list[TextScore], dict[str, float] | None]:
    import torch

    plan = list(windows(len(ids), window, stride))
    nll = [0.0 for _ in fns]
    secs = [0.0 for _ in fns]
    agree, kls = 0, []
    for k, (begin, end, first) in enumerate(plan):
        targets = torch.tensor(ids[first:end], dtype=torch.long)
        logps = []
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            lp = _rows(fn, ids, begin, end, first)
            secs[j] += time.perf_counter() - t0
            nll[j] -= lp.gather(1, targets[:, None]).double().sum().item()
            logps.append(lp)
        if len(fns) == 2:  # (teacher, student)
            lt, ls = logps
            if lt.shape[-1] != ls.shape[-1]:
                raise InvalidInputError(
                    f"teacher and student vocabularies differ ({lt.shape[-1]} vs {ls.shape[-1]}); "
                    "agreement needs a shared tokenizer"
                )
            agree += int((lt.argmax(-1) == ls.argmax(-1)).sum())
            kls.append((lt.exp() * (lt - ls)).sum(-1).clamp_min(0).double())
        if progress:
            progress(k + 1, len(plan))
    n = len(ids) - 1
    scores = [
        TextScore(math.exp(total / n), total / n, n, len(ids), window, stride, s)
        for total, s in zip(nll, secs, strict=True)
    ]
    if len(fns) != 2:
        return scores, None
    kl = torch.cat(kls)
    return scores, {
        "top1_agreement": agree / n,
        "kl_mean": kl.mean().item(),
        "kl_p95": torch.quantile(kl.float(), 0.95).item() if kl.numel() else 0.0,
    }


def perplexity(
    logits_fn: LogitsFn,
    ids: Sequence[int],
    window: int = DEFAULT_WINDOW,
    stride: int = DEFAULT_STRIDE,
    progress: Progress | None = None,
) -> TextScore:
    """Perplexity over strided windows; every token after the first is scored once.

    Args:
        logits_fn: window ids in, ``[len, vocab]`` logits out (see :func:`torch_logits`).
        ids: the token ids of the text.
        window: tokens the model reads at once.
        stride: how far each window moves (``<= window``; smaller means more context).
        progress: called with (windows done, windows in all).

    Returns:
        :class:`TextScore`.

    Example:
        >>> import torch
        >>> uniform = lambda ids: torch.zeros(len(ids), 8)
        >>> round(perplexity(uniform, [1, 2, 3, 4, 5]).perplexity, 6)
        8.0
    """
    return _score([logits_fn], ids, window, stride, progress)[0][0]


def agreement(
    teacher_fn: LogitsFn,
    student_fn: LogitsFn,
    ids: Sequence[int],
    window: int = DEFAULT_WINDOW,
    stride: int = DEFAULT_STRIDE,
    progress: Progress | None = None,
) -> Agreement:
    """Top-1 agreement and KL(teacher‖student) per scored position, plus both perplexities.

    Both models read the same windows, so the figures compare like with like.

    Example:
        >>> import torch
        >>> fn = lambda ids: torch.arange(len(ids) * 4, dtype=torch.float32).reshape(-1, 4)
        >>> a = agreement(fn, fn, [0, 1, 2, 3])
        >>> a.top1_agreement, round(a.kl_mean, 9)
        (1.0, 0.0)
    """
    (teacher, student), stats = _score([teacher_fn, student_fn], ids, window, stride, progress)
    assert stats is not None
    return Agreement(student=student, teacher=teacher, **stats)


@dataclass(frozen=True)
class Generation:
    prompt: str
    completion: str
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


def build_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids for a user prompt: the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


GenerateFn = Callable[[Sequence[int], int], Sequence[int]]  # (prompt ids, max new) -> new ids


def torch_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> GenerateFn:
    """A greedy generation function for a PyTorch causal LM (stops at the tokenizer's eos)."""
    import torch

    eos_token_id, pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id

    def fn(prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        with torch.inference_mode():
            seq = model.generate(
                torch.tensor([list(prompt_ids)]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_token_id,
                eos_token_id=eos_token_id,
            )[0, len(prompt_ids) :].tolist()
        if seq and seq[-1] == eos_token_id:
            seq = seq[:-1]
        return seq

    return fn


def generate(
    generate_fn: GenerateFn,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
) -> list[Generation]:
    """Greedy continuations of prompts (chat template applied when present), timed.

    Args:
        generate_fn: prompt ids and a token budget in, new ids out (eos excluded):
            :func:`torch_generate` or an engine's ``generate``.

    Example::

        lm = load_model("default")
        fn = torch_generate(lm.model, lm.tokenizer)
        generate(fn, lm.tokenizer, ["What is the capital of France?"])[0].completion
        # 'The capital of France is Paris.'
    """
    if max_new_tokens < 1:
        raise InvalidInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    out = []
    for prompt in prompts:
        ids = build_prompt(tokenizer, prompt)
        t0 = time.perf_counter()
        seq = list(generate_fn(ids, max_new_tokens))
        secs = time.perf_counter() - t0
        out.append(Generation(prompt, tokenizer.decode(seq, skip_special_tokens=True), len(seq), secs))
    return out
