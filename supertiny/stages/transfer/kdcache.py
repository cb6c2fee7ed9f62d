"""The teacher's top-k distribution on every answer token, computed once and kept on disk.

Logit distillation needs the teacher's distribution at each answer token of each
example. Running the teacher every step would cost as much as training itself, so
:func:`build_cache` runs it **once** and keeps the top ``k`` log-probabilities (at the
training temperature) and their token ids per answer token in one safetensors file:

* ``values``: ``[tokens, k]`` float16 (default) or float32 log-probabilities;
* ``indices``: ``[tokens, k]`` int32 token ids;
* ``offsets``: ``[examples + 1]`` int64, example ``i``'s rows are ``offsets[i]:offsets[i+1]``.

At k=32 in float16 that is 192 bytes a token. The file's metadata holds the key and the
settings; the key (:func:`cache_key`) hashes the teacher's files, the examples' token
ids (so the data, the task prompt, the tokenizer and ``--max-length`` are all in it),
``k``, the temperature, the value dtype and the dtype the teacher ran in (``--bf16``:
bfloat16 autocast, batched by length), so a cache is reused every epoch and on
resume, and any change builds a new one. No pickle anywhere.

>>> import numpy as np
>>> c = TopKCache(np.zeros((3, 2), np.float16), np.zeros((3, 2), np.int32), np.array([0, 1, 3]), {})
>>> c.rows(1)[0].shape
(2, 2)

torch and safetensors are imported inside the functions that build, save and load.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from supertiny.errors import InvalidInputError
from supertiny.stages.transfer.examples import left_pad
from supertiny.stages.transfer.losses import teacher_topk

if TYPE_CHECKING:
    import torch

CACHE_VERSION = 1  # bump when the file layout or what the values mean changes
VALUE_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class TopKCache:
    """Top-k teacher log-probabilities per answer token of each example."""

    values: np.ndarray  # [tokens, k] float16/float32
    indices: np.ndarray  # [tokens, k] int32
    offsets: np.ndarray  # [examples + 1] int64
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Example ``i``'s ``(values, indices)``, one row per answer token."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.values[a:b], self.indices[a:b]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the cache as one safetensors file (written aside, then renamed into place)."""
        from safetensors.numpy import save_file

        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        save_file({"values": np.ascontiguousarray(self.values), "indices": np.ascontiguousarray(self.indices),
                   "offsets": np.ascontiguousarray(self.offsets.astype(np.int64))}, str(tmp),
                  metadata={"supertiny_kd_cache": str(CACHE_VERSION), "meta": json.dumps(self.meta, sort_keys=True)})
        os.replace(tmp, p)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TopKCache:
        """Read a cache written by :meth:`save`.

        Raises:
            InvalidInputError: not a supertiny KD cache of this version, or inconsistent shapes.
        """
        from safetensors import safe_open

        p = Path(path)
        try:
            with safe_open(str(p), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("supertiny_kd_cache") != str(CACHE_VERSION):
                    raise InvalidInputError(f"{p}: not a version-{CACHE_VERSION} supertiny KD cache")
                arrays = {name: f.get_tensor(name) for name in ("values", "indices", "offsets")}
        except InvalidInputError:
            raise
        except Exception as exc:  # safetensors raises several kinds on a damaged file
            raise InvalidInputError(f"{p}: unreadable KD cache ({type(exc).__name__}: {exc})") from None
        v, ix, off = arrays["values"], arrays["indices"], arrays["offsets"]
        if v.shape != ix.shape or v.ndim != 2 or off.ndim != 1 or int(off[-1]) != v.shape[0]:
            raise InvalidInputError(f"{p}: inconsistent KD cache (values {v.shape}, indices {ix.shape}, "
                                    f"offsets end at {int(off[-1]) if off.size else None})")
        return cls(v, ix, off, json.loads(meta.get("meta", "{}")))


def examples_hash(examples: Sequence[tuple[Sequence[int], int]]) -> str:
    """sha256 over the examples' token ids and prompt lengths (what the teacher reads and where answers start)."""
    h = hashlib.sha256()
    for ids, prompt_len in examples:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(f"|{prompt_len};".encode())
    return h.hexdigest()


def cache_key(teacher_sha256: str, data_sha256: str, k: int, temperature: float, dtype: str,
              vocab: str | None = None, compute: str = "float32") -> str:
    """The name of the cache for these inputs and settings (24 hex digits). ``vocab``: the digest of a trimmed
    student's id map (the teacher is then seen through the student's vocabulary); None: the teacher's own.
    ``compute``: the dtype the teacher ran in (``float32``, or ``bfloat16`` autocast: other values)."""
    key = {"v": CACHE_VERSION, "teacher": teacher_sha256, "data": data_sha256, "k": k,
           "temperature": float(temperature), "dtype": dtype}
    if vocab is not None:
        key["vocab"] = vocab
    if compute != "float32":  # float32 caches keep the names they had before the teacher could run in bfloat16
        key["compute"] = compute
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def teacher_rows(model: Any, ids: Sequence[int], prompt_len: int) -> torch.Tensor:
    """The teacher's logits ``[answer tokens, V]`` predicting each answer token (one forward pass)."""
    import torch

    n_answer = len(ids) - prompt_len
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([list(ids)]), logits_to_keep=n_answer + 1)
    return out.logits[0, :-1].float()


def length_batches(examples: Sequence[tuple[Sequence[int], int]], max_batch: int, max_tokens: int) -> list[list[int]]:
    """Example indices in batches of similar length (sorted by length: little padding), each at most
    ``max_batch`` sequences and ``max_tokens`` padded tokens (one over-long sequence still gets a batch)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < max_batch and len(examples[i][0]) * (len(batches[-1]) + 1) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def batch_rows(model: Any, examples: Sequence[tuple[Sequence[int], int]], bf16: bool = False) -> list[torch.Tensor]:
    """:func:`teacher_rows` of several examples in one forward pass: left-padded, with the attention mask and each
    sequence's own positions, so every row is the unpadded sequence's (to float rounding); ``bf16``: bfloat16
    autocast, float32 rows out."""
    import torch

    device = next(model.parameters()).device
    keep = max(len(ids) - p for ids, p in examples) + 1  # every answer row lies in the last `keep` positions
    input_ids, mask, positions = left_pad([ids for ids, _ in examples], 0)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                       position_ids=positions.to(device), logits_to_keep=keep).logits
    # row r's answer tokens are its last n_answer ids; position j predicts id j+1
    return [logits[r, keep - 1 - (len(ids) - p):keep - 1].float().cpu() for r, (ids, p) in enumerate(examples)]


def build_cache(model: Any, examples: Sequence[tuple[Sequence[int], int]], k: int, temperature: float,
                dtype: str = "float16", meta: dict[str, Any] | None = None,
                progress: Callable[[int, int], None] | None = None, bf16: bool = False,
                max_batch: int = 16, max_tokens: int = 4096) -> TopKCache:
    """Run the teacher once over the examples and keep its top-k log-probabilities per answer token.

    The examples run in batches of similar length (:func:`batch_rows`); the cache keeps their order.

    Args:
        model: a causal LM (``model(input_ids, attention_mask, position_ids, logits_to_keep)``) in eval mode.
        examples: ``(token ids, prompt length)`` pairs; rows are kept for ids ``[prompt length:]``.
        k: tokens kept per position; temperature: the softmax temperature of the values.
        dtype: ``float16`` or ``float32`` for the values.
        progress: called with (examples done, examples in all).
        bf16: run the teacher in bfloat16 autocast (on a 2-core CPU with AVX512-BF16, 3x the float32 batches and 4x
            float32 one example a pass; on the factory-tickets domain teacher KL 2.6e-5 nats from float32 per answer
            token, the same top-1: ``benchmarks/kd_cache_speed.py``).
        max_batch, max_tokens: the largest batch in sequences and in padded tokens.
    """

    if dtype not in VALUE_DTYPES:
        raise InvalidInputError(f"unknown KD cache dtype {dtype!r}; choose one of {', '.join(VALUE_DTYPES)}")
    rows: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(examples)
    done = 0
    for batch in length_batches(examples, max_batch, max_tokens):
        for i, logits in zip(batch, batch_rows(model, [examples[i] for i in batch], bf16), strict=True):
            v, ix = teacher_topk(logits, k, temperature)
            rows[i] = (v.numpy().astype(VALUE_DTYPES[dtype]), ix.numpy())
        done += len(batch)
        if progress:
            progress(done, len(examples))
    values = [r[0] for r in rows if r is not None]
    indices = [r[1] for r in rows if r is not None]
    offsets = np.cumsum([0, *(v.shape[0] for v in values)]).astype(np.int64)
    kk = values[0].shape[1] if values else k
    return TopKCache(np.concatenate(values) if values else np.zeros((0, kk), VALUE_DTYPES[dtype]),
                     np.concatenate(indices) if indices else np.zeros((0, kk), np.int32),
                     offsets, dict(meta or {}))
