"""How much each prunable unit of a decoder matters, measured on calibration text.

One calibration pass (:func:`supertiny.stages.calibration.calibrate`) with forward hooks on
the modules the architecture row names collects, per calibration window:

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
from dataclasses import dataclass, replace
from typing import Any

import torch

from supertiny.archs import Layout, shape
from supertiny.stages.calibration import LMLoss, Statistic, calibrate, lm_loss

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


class ImportanceStatistic(Statistic):
    """Block influence, head, MLP-channel and hidden-channel scores (see the module
    docstring) and the LM loss, accumulated over the calibration windows; :meth:`finish`
    averages them into an :class:`Importance` (without the layer-skip losses)."""

    def __init__(self, model: Any):
        s = shape(model.config)
        self.n_heads, self.head_dim = s.heads, s.head_dim
        self.bi = torch.zeros(s.layers, dtype=torch.float64)
        self.heads = torch.zeros(s.layers, s.heads, dtype=torch.float64)
        self.mlp = torch.zeros(s.layers, s.intermediate, dtype=torch.float64)
        self.hidden = torch.zeros(s.hidden, dtype=torch.float64)
        self.tokens, self.predicted, self.loss_sum = 0, 0, 0.0

    def attach(self, model: Any, layout: Layout) -> list[Any]:
        bi, heads, mlp, hidden = self.bi, self.heads, self.mlp, self.hidden
        n_heads, head_dim = self.n_heads, self.head_dim

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

        handles = []
        for i, layer in enumerate(layout.decoder_layers(model)):
            handles += [
                layer.register_forward_hook(on_layer(i), with_kwargs=True),
                layout.module(model, "o", i).register_forward_pre_hook(on_o_proj(i)),
                layout.module(model, "down", i).register_forward_pre_hook(on_down_proj(i)),
                layout.module(model, "attn_norm", i).register_forward_hook(on_norm),
                layout.module(model, "ffn_norm", i).register_forward_hook(on_norm),
            ]
        handles.append(layout.module(model, "final_norm").register_forward_hook(on_norm))
        return handles

    def window(self, ids: torch.Tensor, output: Any) -> None:
        self.tokens += ids.shape[1]
        self.predicted += ids.shape[1] - 1
        self.loss_sum += lm_loss(ids, output)

    def finish(self) -> Importance:
        tokens = self.tokens
        return Importance(block_influence=self.bi / tokens, loss_increase=None, heads=self.heads / tokens,
                          mlp=self.mlp / tokens, hidden=self.hidden / tokens, tokens=tokens,
                          loss=self.loss_sum / self.predicted)


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def collect(model: Any, windows: Sequence[Sequence[int]], layer_loss: bool = False,
            progress: Progress | None = None) -> Importance:
    """Run ``model`` over calibration ``windows`` (lists of token ids) and score every unit.

    Args:
        model: a ``*ForCausalLM`` of a supported architecture, in eval mode.
        windows: token windows; each is one forward pass.
        layer_loss: also measure the loss increase of skipping each layer (one more
            pass per layer and window).
        progress: called with (passes done, passes in all).

    Returns:
        :class:`Importance`.
    """
    n_layers = shape(model.config).layers
    total = len(windows) * (1 + (n_layers if layer_loss else 0))

    def passes(offset: int) -> Progress | None:
        return None if progress is None else lambda done, _n: progress(offset + done, total)

    stat = ImportanceStatistic(model)
    (imp,) = calibrate(model, windows, [stat], passes(0))
    if not layer_loss:
        return imp
    skipped = torch.zeros(n_layers, dtype=torch.float64)
    for i in range(n_layers):
        skipped[i] = calibrate(model, windows, [LMLoss(skip=i)], passes((1 + i) * len(windows)))[0]
    return replace(imp, loss_increase=(skipped - stat.loss_sum) / stat.predicted)
