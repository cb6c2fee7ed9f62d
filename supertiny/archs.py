"""Architecture facts as data: one row per supported decoder architecture.

Every stage asks this table instead of branching on names: the loader checks that a
model is supported, the exporters look up GGUF names here, the pruner and the
calibration hooks find modules through the row's :class:`Layout`, and every stage
reads head counts and sizes through :func:`shape`. Adding an architecture that follows
the llama layout is adding a row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from supertiny.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Layout:
    """Where a decoder keeps its modules: dotted paths in the ``*ForCausalLM`` model,
    ``{bid}`` standing for the block (decoder layer) index, as in gguf-py's tables.

    Example:
        >>> LLAMA_LAYOUT.path("down", 3)
        'model.layers.3.mlp.down_proj'
    """

    layers: str  # the nn.ModuleList of decoder layers
    attention: str  # a layer's attention module (holds layer_idx and the head counts)
    q: str
    k: str
    v: str
    o: str
    gate: str
    up: str
    down: str
    attn_norm: str  # the norm before attention
    ffn_norm: str  # the norm before the MLP
    final_norm: str
    embed: str
    lm_head: str

    # the matrices of one decoder layer, in the order the layer runs them
    LINEARS: ClassVar[tuple[str, ...]] = ("q", "k", "v", "o", "gate", "up", "down")

    def per_layer(self, role: str) -> bool:
        """Whether ``role`` names one module per decoder layer (its path has ``{bid}``)."""
        return "{bid}" in getattr(self, role)

    def path(self, role: str, bid: int | None = None) -> str:
        """The dotted module path of ``role`` (in layer ``bid`` for per-layer roles)."""
        template = getattr(self, role)
        if "{bid}" in template:
            if bid is None:
                raise ValueError(f"{role} is a per-layer module: give its layer index")
            return template.format(bid=bid)
        return template

    def module(self, model: Any, role: str, bid: int | None = None) -> Any:
        """The ``role`` module of ``model`` (in layer ``bid`` for per-layer roles)."""
        return model.get_submodule(self.path(role, bid))

    def decoder_layers(self, model: Any) -> Any:
        """The ``nn.ModuleList`` of decoder layers."""
        return model.get_submodule(self.layers)

    def set_decoder_layers(self, model: Any, layers: Any) -> None:
        """Replace the decoder layer list (depth pruning)."""
        parent, _, name = self.layers.rpartition(".")
        setattr(model.get_submodule(parent), name, layers)


LLAMA_LAYOUT = Layout(
    layers="model.layers",
    attention="model.layers.{bid}.self_attn",
    q="model.layers.{bid}.self_attn.q_proj",
    k="model.layers.{bid}.self_attn.k_proj",
    v="model.layers.{bid}.self_attn.v_proj",
    o="model.layers.{bid}.self_attn.o_proj",
    gate="model.layers.{bid}.mlp.gate_proj",
    up="model.layers.{bid}.mlp.up_proj",
    down="model.layers.{bid}.mlp.down_proj",
    attn_norm="model.layers.{bid}.input_layernorm",
    ffn_norm="model.layers.{bid}.post_attention_layernorm",
    final_norm="model.norm",
    embed="model.embed_tokens",
    lm_head="lm_head",
)


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
        layout: where the model keeps its modules (:class:`Layout`).
    """

    model_type: str
    hf_class: str
    gguf_arch: str
    qkv_bias: bool
    permute_qk_for_gguf: bool
    layout: Layout


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.model_type: spec
    for spec in (
        ArchSpec("llama", "LlamaForCausalLM", "llama", qkv_bias=False, permute_qk_for_gguf=True,
                 layout=LLAMA_LAYOUT),
        ArchSpec("mistral", "MistralForCausalLM", "llama", qkv_bias=False, permute_qk_for_gguf=True,
                 layout=LLAMA_LAYOUT),
        ArchSpec("qwen2", "Qwen2ForCausalLM", "qwen2", qkv_bias=True, permute_qk_for_gguf=False,
                 layout=LLAMA_LAYOUT),
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


def layout_of(model: Any) -> Layout:
    """The module layout of a loaded ``*ForCausalLM`` model (by its ``config.model_type``)."""
    return arch_for_model_type(model.config.model_type).layout


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder, with the implicit ones filled in.

    Attributes:
        layers: decoder layers.
        heads: query heads per layer.
        kv_heads: key/value heads per layer (``heads`` when the config names none).
        head_dim: size of one head (``hidden // heads`` when the config names none;
            a pruned student's differs).
        hidden: hidden (embedding) width.
        intermediate: MLP width.
        vocab: vocabulary size.
        context_length: ``max_position_embeddings`` (``None`` when absent).
        tied_embeddings: whether the output layer shares the embedding table.
    """

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    context_length: int | None
    tied_embeddings: bool

    @property
    def tied(self) -> bool:
        """Short for ``tied_embeddings``."""
        return self.tied_embeddings

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.heads // self.kv_heads


def shape(config: Any) -> Shape:
    """The :class:`Shape` of a transformers config object or a ``config.json`` dict.

    Raises:
        KeyError: a required size is missing (named in the error); TypeError,
            ValueError or ZeroDivisionError when one is not a positive number.

    Example:
        >>> s = shape({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64,
        ...            "intermediate_size": 128, "vocab_size": 400})
        >>> (s.kv_heads, s.head_dim, s.tied)
        (4, 16, False)
    """
    if isinstance(config, Mapping):
        get, need = config.get, config.__getitem__
    else:
        def get(key: str, default: Any = None) -> Any:
            return getattr(config, key, default)

        def need(key: str) -> Any:
            if not hasattr(config, key):
                raise KeyError(key)
            return getattr(config, key)
    heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    return Shape(
        layers=int(need("num_hidden_layers")),
        heads=heads,
        kv_heads=int(get("num_key_value_heads") or heads),
        head_dim=int(get("head_dim") or hidden // heads),
        hidden=hidden,
        intermediate=int(need("intermediate_size")),
        vocab=int(need("vocab_size")),
        context_length=get("max_position_embeddings"),
        tied_embeddings=bool(get("tie_word_embeddings", False)),
    )
