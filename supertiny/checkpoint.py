"""What a checkpoint holds against what its config says a model needs.

Every loader checks here before a model runs: a Hugging Face directory's safetensors
headers (names and shapes, no data read) and a GGUF file's mapped tensor table are
compared with the state dict of a model built from the config on the meta device,
and the loaded weights are checked once for NaN/Inf. A config claiming more layers
than the weights hold, a renamed, extra or reshaped tensor, or a run of NaN bytes is
a one-line :class:`~supertiny.errors.BrokenCheckpointError` naming the tensors, never
a randomly initialised layer or a ``perplexity nan``.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supertiny.errors import BrokenCheckpointError, NotAModelError, UnsafeCheckpointError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

Shapes = Mapping[str, tuple[int, ...]]

# Buffers older checkpoints saved that transformers recomputes and ignores on load.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_LAYER = re.compile(r"^(.*\.layers\.)(\d+)\.(.+)$")
_SHOWN = 4  # names quoted in one message; the rest are counted
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_hf_files(p: Path) -> None:
    """A HF directory has a config.json and safetensors weights (pickles are refused, not loaded)."""
    if not (p / "config.json").is_file():
        ggufs = sorted(p.glob("*.gguf"))
        hint = f" (did you mean {ggufs[0]}?)" if ggufs else ""
        raise NotAModelError(f"expected a Hugging Face model directory with config.json, got {p}{hint}")
    if not safetensors_files(p):
        pickles = [f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise UnsafeCheckpointError(
                f"{p} holds only pickle weights ({', '.join(sorted(pickles))}); supertiny loads "
                "safetensors only (re-save the model with safe_serialization=True where you trust it)"
            )
        raise NotAModelError(f"{p} has a config.json but no *.safetensors weights")


def safetensors_files(p: Path) -> list[Path]:
    """The safetensors files of a HF directory (the shards named by its index, if any)."""
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise NotAModelError(f"unreadable {index}: {exc}") from None
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            raise NotAModelError(f"{p}: shards named in the index are missing: {', '.join(missing)}")
        return [p / s for s in shards]
    return sorted(p.glob("*.safetensors"))


def safetensors_header(f: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte where its data starts (no data is read)."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise NotAModelError(f"{f} is not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100_000_000:
            raise NotAModelError(f"{f} is not a safetensors file (header length {n}, file {size} bytes)")
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise NotAModelError(f"{f} is not a safetensors file: {exc}") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise NotAModelError(f"{f} is truncated: tensors end at byte {8 + n + end}, file has {size}")
    return header, 8 + n


def safetensors_shapes(files: Iterable[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape over all safetensors files, from their headers alone."""
    return {
        name: tuple(int(d) for d in meta["shape"])
        for f in files
        for name, meta in safetensors_header(f)[0].items()
        if name != "__metadata__"
    }


def meta_model(config: PretrainedConfig, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A causal LM built from ``config`` with its parameters on the meta device.

    Nothing is allocated or randomly initialised; buffers computed from the config
    (rotary frequencies) stay real, so assigning a state dict makes the model whole.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.modeling_utils import no_init_weights

    with init_empty_weights(include_buffers=False), no_init_weights():
        return AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)


def expected_shapes(model: PreTrainedModel) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """The weights a model needs (name -> shape) and those that may be absent (tied copies)."""
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    optional: set[str] = set()
    if getattr(model.config, "tie_word_embeddings", False):
        out = model.get_output_embeddings()
        optional = {name for name, m in model.named_modules() if m is out and name}
        optional = {f"{name}.weight" for name in optional}
    return shapes, optional


def _summary(names: Iterable[str], expected: Shapes) -> str:
    """``model.layers.30-39.* (90 tensors)``: whole missing layers collapse to one item."""
    names = sorted(names, key=_natural)
    per_layer: dict[tuple[str, int], set[str]] = {}
    for name in expected:
        m = _LAYER.match(name)
        if m:
            per_layer.setdefault((m[1], int(m[2])), set()).add(name)
    whole: dict[str, list[int]] = {}
    rest: list[str] = []
    seen = set(names)
    for name in names:
        m = _LAYER.match(name)
        key = (m[1], int(m[2])) if m else None
        if key and key in per_layer and per_layer[key] <= seen:
            if not whole.get(key[0]) or whole[key[0]][-1] != key[1]:
                whole.setdefault(key[0], []).append(key[1])
        else:
            rest.append(name)
    items = [f"{prefix}{_ranges(ids)}.*" for prefix, ids in whole.items()] + rest
    shown = ", ".join(items[:_SHOWN]) + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
    return f"{shown} ({len(names)} tensor{'s' if len(names) != 1 else ''})"


def number_runs(ids: Iterable[int]) -> list[str]:
    """The distinct numbers as runs of consecutive ones: ``[0, 1, 2, 5, 7, 8]`` -> ``["0-2", "5", "7-8"]``.

    >>> number_runs([8, 0, 1, 2, 5, 7])
    ['0-2', '5', '7-8']
    """
    ordered = sorted(set(ids))
    runs, start = [], ordered[0]
    for a, b in zip(ordered, ordered[1:] + [None], strict=True):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return runs


def _ranges(ids: list[int]) -> str:
    runs = number_runs(ids)
    return runs[0] if len(runs) == 1 else "{" + ",".join(runs) + "}"


def _natural(name: str) -> list[Any]:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def check_tensors(found: Shapes, expected: Shapes, optional: Iterable[str], source: str,
                  what: str = "the config") -> None:
    """Compare a checkpoint's tensors (name -> shape) with what the model needs.

    Raises:
        BrokenCheckpointError: one line naming the missing, unexpected and mis-shaped
            tensors (whole layers collapsed, e.g. ``model.layers.30-39.*``).
    """
    optional = set(optional)
    missing = [n for n in expected if n not in found and n not in optional]
    unexpected = [n for n in found if n not in expected and not n.endswith(_IGNORED_SUFFIXES)]
    wrong = [n for n in found if n in expected and tuple(found[n]) != tuple(expected[n])]
    problems = []
    if missing:
        problems.append(f"missing {_summary(missing, expected)}")
    if unexpected:
        problems.append(f"unexpected {_summary(unexpected, found)}")
    if wrong:
        shown = ", ".join(f"{n} {list(found[n])} (expected {list(expected[n])})" for n in wrong[:_SHOWN])
        more = f" and {len(wrong) - _SHOWN} more" if len(wrong) > _SHOWN else ""
        problems.append(f"mis-shaped {shown}{more}")
    if problems:
        raise BrokenCheckpointError(f"{source} does not hold the model {what} describes: " + "; ".join(problems))


def check_finite(named: Iterable[tuple[str, torch.Tensor]], source: str) -> None:
    """Raise if any tensor holds NaN or Inf, naming the first offending tensors."""
    import torch

    bad: list[str] = []
    for name, t in named:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(f"{name} ({int((~torch.isfinite(t)).sum())} values)")
    if bad:
        more = f" and {len(bad) - _SHOWN} more tensors" if len(bad) > _SHOWN else ""
        raise BrokenCheckpointError(f"{source} holds non-finite weights (NaN/Inf) in {', '.join(bad[:_SHOWN])}{more}")


def check_finite_array(name: str, array: Any, source: str) -> None:
    """:func:`check_finite` for one numpy array as it streams (the GGUF exporter's source)."""
    import numpy as np

    finite = np.isfinite(array)
    if not finite.all():
        raise BrokenCheckpointError(
            f"{source} holds non-finite weights (NaN/Inf) in {name} ({int(finite.size - finite.sum())} values)"
        )


def check_hf_dir(p: Path, config: PretrainedConfig | None = None) -> None:
    """Check a HF directory's safetensors headers against a model built from its config.json."""
    if config is None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(p), trust_remote_code=False)
        except Exception as exc:  # transformers raises many kinds on a bad config.json
            raise NotAModelError(f"unusable {p / 'config.json'}: {type(exc).__name__}: {exc}") from None
    try:
        model = meta_model(config)
    except Exception as exc:  # e.g. hidden_size not divisible by heads
        raise NotAModelError(f"{p / 'config.json'} does not describe a buildable model: {exc}") from None
    expected, optional = expected_shapes(model)
    found = safetensors_shapes(safetensors_files(p))
    prefix = model.base_model_prefix
    # A checkpoint of the bare base model (no `model.` prefix) loads into the LM too.
    found = {n if n in expected or f"{prefix}.{n}" not in expected else f"{prefix}.{n}": s for n, s in found.items()}
    check_tensors(found, expected, optional, str(p), what="its config.json")


def load_hf(p: Path, dtype: torch.dtype) -> PreTrainedModel:
    """Load a checked HF directory with transformers (safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM

    check_hf_dir(p)
    try:
        return AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype, use_safetensors=True,
                                                    trust_remote_code=False)
    except Exception as exc:  # what the header check cannot see: corrupt data, odd dtypes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise NotAModelError(f"cannot load weights from {p}: {type(exc).__name__}: {first}") from None


def align_special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make generation stop and pad where the tokenizer says (GGUF configs often disagree)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    for cfg in (model.config, model.generation_config):
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tokenizer, name)
            if value is not None:
                setattr(cfg, name, value)
