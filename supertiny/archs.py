"""Architecture facts as data: one row per supported decoder architecture.

Every stage asks this table instead of branching on names: the loader checks that a
model is supported, the exporters will look up GGUF names here, the pruner its
prunable groups. Adding an architecture is adding a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """What supertiny needs to know about one architecture.

    Attributes:
        model_type: ``config.model_type`` in Hugging Face transformers.
        hf_class: the ``*ForCausalLM`` class named in ``config.architectures``.
        gguf_arch: ``general.architecture`` in a GGUF file of this architecture.
        qkv_bias: whether q/k/v projections carry a bias.
        permute_qk_for_gguf: whether llama.cpp expects q/k rows permuted from the HF
            rotary layout (true for the LLAMA graph, false for QWEN2, which uses
            the NEOX rope layout).
    """

    model_type: str
    hf_class: str
    gguf_arch: str
    qkv_bias: bool
    permute_qk_for_gguf: bool


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.model_type: spec
    for spec in (
        ArchSpec("llama", "LlamaForCausalLM", "llama", qkv_bias=False, permute_qk_for_gguf=True),
        ArchSpec("mistral", "MistralForCausalLM", "llama", qkv_bias=False, permute_qk_for_gguf=True),
        ArchSpec("qwen2", "Qwen2ForCausalLM", "qwen2", qkv_bias=True, permute_qk_for_gguf=False),
    )
}

# GGUF files name the architecture their graph runs as; several HF types share one
# (llama.cpp runs Mistral through the llama graph), so map back to the first row.
_BY_GGUF_ARCH: dict[str, ArchSpec] = {}
for _spec in ARCHITECTURES.values():
    _BY_GGUF_ARCH.setdefault(_spec.gguf_arch, _spec)


def tensor_name_map(spec: ArchSpec, n_layers: int):  # -> gguf.TensorNameMap
    """gguf-py's table of HF -> GGUF tensor names for an architecture (``{bid}`` expanded).

    Example:
        >>> m = tensor_name_map(ARCHITECTURES["llama"], 2)
        >>> m.get_name("model.layers.1.self_attn.q_proj.weight", try_suffixes=(".weight", ".bias"))
        'blk.1.attn_q.weight'
    """
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[spec.gguf_arch.upper()], n_layers)


def supported() -> list[str]:
    """Names of the supported Hugging Face model types, sorted."""
    return sorted(ARCHITECTURES)


def arch_for_model_type(model_type: str | None) -> ArchSpec:
    """Look up a Hugging Face ``model_type``.

    Raises:
        UnsupportedArchitectureError: with the list of supported types.
    """
    try:
        return ARCHITECTURES[model_type or ""]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported())}"
        ) from None


def arch_for_gguf(gguf_arch: str | None) -> ArchSpec:
    """Look up a GGUF ``general.architecture`` value.

    Raises:
        UnsupportedArchitectureError: with the list of supported GGUF architectures.
    """
    try:
        return _BY_GGUF_ARCH[gguf_arch or ""]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unsupported GGUF architecture {gguf_arch!r}; supported: {', '.join(sorted(_BY_GGUF_ARCH))}"
        ) from None
