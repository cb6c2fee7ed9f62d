"""A GGUF file into a PyTorch model, reading the file once.

transformers' own GGUF loader parses the file twice (config, then tensors) and
rebuilds gguf-py's tensor-name table for every submodule; the default teacher took
~28 s to load. Here the already validated :class:`~supertiny.gguf_file.GGUFFile` is
read once: the HF config comes from its metadata with transformers' own mapping
table, each tensor is dequantized by gguf-py and renamed through one reverse table
built from the architecture row's name map, llama.cpp's q/k rotary permutation is
undone for LLAMA-graph files, and the weights are assigned into a model built on the
meta device (no random init). The result is bit-equal to
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` (tests/test_gguf_load.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from supertiny.archs import ArchSpec, arch_for_gguf, tensor_name_map
from supertiny.checkpoint import check_finite_array, check_tensors, expected_shapes, meta_model
from supertiny.errors import BrokenCheckpointError, InvalidGGUFError
from supertiny.gguf_file import GGUFFile

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

# Tensors llama.cpp may store that a HF model recomputes (transformers skips them too).
DERIVED_TENSORS = ("rope_freqs.weight",)
_ROWS = 64  # rows dequantized at once: 4x fewer numpy calls than 16, temporaries still in cache


def config_dict(gf: GGUFFile) -> dict[str, Any]:
    """The HF config keys transformers derives from a GGUF file's metadata.

    The same steps as transformers' ``load_gguf_checkpoint`` for the architectures
    supertiny supports (its ``GGUF_CONFIG_MAPPING`` table and value parser), reading
    only the keys that table names instead of every value of the vocabulary.
    """
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING, _gguf_parse_value

    fields = gf.reader.fields
    arch = gf.architecture or ""
    # llama.cpp runs Mistral as llama; transformers tells them apart by general.name
    # (compared as a list, so only a name of exactly "mistral" matches).
    renamed = "mistral" if "llama" in arch and gf.get("general.name") == "mistral" else arch
    out: dict[str, Any] = {"tie_word_embeddings": all(t.name != "output.weight" for t in gf.tensors)}
    for key, field in fields.items():
        prefix, _, sub = key.replace(arch, renamed).partition(".")
        target = GGUF_CONFIG_MAPPING.get(prefix, {}).get(sub)
        if target is None or target == -1:
            continue
        value = [_gguf_parse_value(field.parts[i], field.types) for i in field.data]
        value = value[0] if len(value) == 1 else value
        if isinstance(value, str) and arch in value:
            value = value.replace(arch, renamed)
        out[target] = value
    if "vocab_size" not in out and "tokenizer.ggml.tokens" in fields:
        out["vocab_size"] = len(fields["tokenizer.ggml.tokens"].data)
    return out


def hf_config(gf: GGUFFile, dtype: torch.dtype | None = None) -> PretrainedConfig:
    """The transformers config of a GGUF file, as ``AutoConfig.from_pretrained(dir, gguf_file=...)`` builds it."""
    from transformers import AutoConfig

    cfg = config_dict(gf)
    model_type = cfg.pop("model_type", None)
    try:
        config = AutoConfig.for_model(model_type, **cfg, **({"dtype": dtype} if dtype is not None else {}))
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidGGUFError(f"{gf.path}: its metadata gives no usable {model_type} config: {exc}") from None
    config._name_or_path = str(gf.path.parent)  # what from_pretrained(dir, gguf_file=...) records
    return config


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's interleaved rotary pairs -> the HF layout (the inverse of ``export.gguf.permute_qk``)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantize(data: np.ndarray, qtype: Any) -> np.ndarray:
    """gguf-py's dequantizer, over chunks of rows instead of its groups of 16.

    ``gguf.quants.dequantize`` splits a tensor into groups of 16 rows and concatenates
    the results; for the default teacher's 49k-row embedding that bookkeeping cost
    more than the arithmetic. The per-block arithmetic is the same function on the
    same bytes (elementwise, no reductions), so the values are bit-equal.
    """
    import gguf
    import numpy as np

    traits = gguf.quants._type_traits.get(qtype)  # gguf is pinned: its per-type classes
    if traits is None or data.ndim != 2 or data.shape[0] <= _ROWS:
        return gguf.quants.dequantize(data, qtype)
    traits.init_grid()
    out = np.empty((data.shape[0], data.shape[1] // traits.type_size * traits.block_size), dtype=np.float32)
    for i in range(0, data.shape[0], _ROWS):
        out[i : i + _ROWS] = traits.dequantize_rows(data[i : i + _ROWS])
    return out


def _reverse_names(spec: ArchSpec, n_layers: int, hf_names: list[str]) -> dict[str, str]:
    """GGUF name -> HF name for every tensor the HF model holds, from one name table."""
    table = tensor_name_map(spec, n_layers)
    reverse = {}
    for hf in hf_names:
        base, _, suffix = hf.rpartition(".")
        if suffix in ("weight", "bias"):
            name = table.get_name(base)
            if name is not None:
                reverse[f"{name}.{suffix}"] = hf
        elif (name := table.get_name(hf)) is not None:
            reverse[name] = hf
    return reverse


def load_gguf(gf: GGUFFile, dtype: torch.dtype) -> PreTrainedModel:
    """Build the PyTorch model a validated GGUF file holds.

    Raises:
        InvalidGGUFError: metadata that gives no config.
        BrokenCheckpointError: missing, unexpected or mis-shaped tensors (after the
            name mapping), NaN/Inf values, or tensors gguf-py cannot dequantize.
    """
    import numpy as np
    import torch

    spec = arch_for_gguf(gf.architecture)
    config = hf_config(gf, dtype)
    try:
        model = meta_model(config, dtype)
    except Exception as exc:  # inconsistent shape keys (hidden not divisible by heads...)
        raise InvalidGGUFError(f"{gf.path}: its metadata does not describe a buildable model: {exc}") from None
    expected, optional = expected_shapes(model)
    reverse = _reverse_names(spec, config.num_hidden_layers, list(expected))
    found = {reverse.get(t.name, t.name): tuple(int(d) for d in reversed(t.shape))
             for t in gf.tensors if t.name not in DERIVED_TENSORS}
    check_tensors(found, expected, optional, str(gf.path), what="its metadata")

    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    state: dict[str, torch.Tensor] = {}
    for t in gf.tensors:
        if t.name not in reverse:
            continue
        try:
            w = dequantize(t.data, t.tensor_type)
        except (NotImplementedError, ValueError) as exc:  # gguf-py: a type it cannot dequantize; bad data size
            raise BrokenCheckpointError(f"{gf.path}: cannot dequantize {t.name} "
                                        f"({t.tensor_type.name}): {exc}") from None
        if spec.permute_qk_for_gguf and (".attn_q." in t.name or ".attn_k." in t.name):
            w = unpermute_qk(w, heads if ".attn_q." in t.name else kv_heads)
        w = np.ascontiguousarray(w, dtype=np.float32)
        check_finite_array(f"{t.name} ({reverse[t.name]})", w, str(gf.path))
        if not w.flags.writeable:  # a view of the read-only file mapping
            w = w.copy()
        tensor = torch.from_numpy(w)
        state[reverse[t.name]] = tensor if dtype == torch.float32 else tensor.to(dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:  # check_tensors let an optional tensor be absent that the model does not tie
        raise BrokenCheckpointError(f"{gf.path} lacks {', '.join(left[:4])}")
    return model
