"""How the next token is chosen, shared by every engine that samples in Python.

llama.cpp samples in its own C code from the same :class:`Sampling` settings;
onnxruntime and torch engines pick from a row of logits with :func:`pick_token`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.constrain import Constraint


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy when ``temperature`` is 0.

    ``top_k`` 0 and ``top_p`` 1.0 turn those filters off; ``seed`` makes sampling
    repeatable.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InvalidInputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidInputError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p}")


def pick_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator,
               constraint: Constraint | None = None) -> int:
    """The next token from one row of logits (greedy, or temperature/top-k/top-p sampling); with a
    ``constraint``, among the tokens its grammar allows (and the constraint advances past it)."""
    if constraint is not None:  # pick freely, then mask only if the grammar refuses that pick
        plain = sampling.temperature == 0 or (sampling.top_k == 0 and sampling.top_p == 1.0)
        token = pick_token(logits, sampling, rng) if plain else -1
        if token < 0 or not constraint.allows(token, logits.shape[-1]):
            token = pick_token(constraint.mask(np.array(logits, dtype=np.float32)), sampling, rng)
        constraint.accept(token)
        return token
    if sampling.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k and sampling.top_k < z.size:
        kth = np.partition(z, -sampling.top_k)[-sampling.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, sampling.top_p)) + 1]  # smallest set reaching top_p
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.size, p=p))


