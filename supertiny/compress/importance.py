"""How much each prunable unit of a decoder matters, measured on calibration text.

One pass of forward hooks collects, per calibration window:

* **layers** — block influence (ShortGPT): ``1 - cos(h_in, h_out)`` of each decoder
  layer's input and output hidden states, averaged over tokens. A layer that barely
  turns the residual stream is a candidate to drop. Optionally (``layer_loss=True``)
  the increase of the language-model loss when the layer is skipped, one extra pass
  per layer: slower, but it measures what is lost rather than a proxy.
* **attention heads** — the mean L2 norm of each query head's output (the slice of
  ``o_proj``'s input that head writes), as Minitron ranks heads.
* **MLP channels** — the mean absolute activation entering ``down_proj``.
* **hidden channels** — the mean absolute value of every RMSNorm's output per
  channel, summed over the norms (what the matrix products read).

Everything is accumulated in float64 over all calibration tokens, so the scores are
deterministic for the same model and text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Importance:
    """Scores of every prunable unit (higher: more important).

    Attributes:
        block_influence: ``[layers]`` mean ``1 - cos(in, out)`` per decoder layer.
        loss_increase: ``[layers]`` LM loss with the layer skipped minus the full
            model's, or ``None`` when not measured.
        heads: ``[layers, query heads]`` mean L2 norm of each head's output.
        mlp: ``[layers, intermediate]`` mean |activation| into ``down_proj``.
        hidden: ``[hidden]`` mean |norm output|, summed over all norms.
        tokens: calibration tokens the scores average over.
        loss: the unpruned model's mean LM loss on the calibration text (nats/token).
    """

    block_influence: torch.Tensor
    loss_increase: torch.Tensor | None
    heads: torch.Tensor
    mlp: torch.Tensor
    hidden: torch.Tensor
    tokens: int
    loss: float


def decoder_layers(model: Any) -> Any:
    """The ``nn.ModuleList`` of decoder layers (llama, mistral and qwen2 keep it at ``model.model.layers``)."""
    return model.model.layers


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _lm_loss(model: Any, x: torch.Tensor) -> float:
    """Summed next-token loss (nats) of one window."""
    logits = model(input_ids=x).logits[0, :-1].double()
    return float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))


def _skip(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
    """Forward hook that makes a decoder layer an identity: its input passes through."""
    h = args[0] if args else kwargs["hidden_states"]
    return (h, *out[1:]) if isinstance(out, tuple) else h


def collect(model: Any, windows: Sequence[Sequence[int]], layer_loss: bool = False,
            progress: Progress | None = None) -> Importance:
    """Run ``model`` over calibration ``windows`` (lists of token ids) and score every unit.

    Args:
        model: a llama/mistral/qwen2 ``*ForCausalLM`` in eval mode.
        windows: token windows; each is one forward pass.
        layer_loss: also measure the loss increase of skipping each layer (one more
            pass per layer and window).
        progress: called with (passes done, passes in all).

    Returns:
        :class:`Importance`.
    """
    cfg = model.config
    layers = decoder_layers(model)
    n_layers, n_heads = len(layers), cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    bi = torch.zeros(n_layers, dtype=torch.float64)
    heads = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    mlp = torch.zeros(n_layers, cfg.intermediate_size, dtype=torch.float64)
    hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)
    handles = []

    def on_layer(i: int) -> Callable[..., None]:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            h_in = (args[0] if args else kwargs["hidden_states"])[0].double()
            h_out = _hidden(out)[0].double()
            bi[i] += (1 - torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1)).sum()

        return hook

    def on_o_proj(i: int) -> Callable[..., None]:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0][0].double().reshape(-1, n_heads, head_dim)
            heads[i] += x.norm(dim=-1).sum(0)

        return hook

    def on_down_proj(i: int) -> Callable[..., None]:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            mlp[i] += args[0][0].double().abs().sum(0)

        return hook

    def on_norm(_module: Any, _args: Any, out: Any) -> None:
        hidden.add_(out[0].double().abs().sum(0))

    for i, layer in enumerate(layers):
        handles += [
            layer.register_forward_hook(on_layer(i), with_kwargs=True),
            layer.self_attn.o_proj.register_forward_pre_hook(on_o_proj(i)),
            layer.mlp.down_proj.register_forward_pre_hook(on_down_proj(i)),
            layer.input_layernorm.register_forward_hook(on_norm),
            layer.post_attention_layernorm.register_forward_hook(on_norm),
        ]
    handles.append(model.model.norm.register_forward_hook(on_norm))
    total = len(windows) * (1 + (n_layers if layer_loss else 0))
    done, tokens, loss_sum = 0, 0, 0.0
    try:
        with torch.inference_mode():
            for ids in windows:
                x = torch.tensor([list(ids)], dtype=torch.long)
                loss_sum += _lm_loss(model, x)
                tokens += len(ids)
                done += 1
                if progress:
                    progress(done, total)
    finally:
        for h in handles:
            h.remove()
    predicted = sum(len(w) - 1 for w in windows)
    loss_increase = None
    if layer_loss:
        skipped = torch.zeros(n_layers, dtype=torch.float64)
        for i, layer in enumerate(layers):
            h = layer.register_forward_hook(_skip, with_kwargs=True)
            try:
                with torch.inference_mode():
                    for ids in windows:
                        skipped[i] += _lm_loss(model, torch.tensor([list(ids)], dtype=torch.long))
                        done += 1
                        if progress:
                            progress(done, total)
            finally:
                h.remove()
        loss_increase = (skipped - loss_sum) / predicted
    return Importance(
        block_influence=bi / tokens,
        loss_increase=loss_increase,
        heads=heads / tokens,
        mlp=mlp / tokens,
        hidden=hidden / tokens,
        tokens=tokens,
        loss=loss_sum / predicted,
    )
