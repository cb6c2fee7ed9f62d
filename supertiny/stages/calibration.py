"""One calibration pass over a model, with pluggable statistics collected through forward hooks.

:func:`calibrate` runs a model once over token windows (:func:`supertiny.readers.token_windows`)
while :class:`Statistic` objects collect what they need: pruning's importance scores
(:mod:`supertiny.stages.prune.importance`), llama.cpp's importance matrix
(:mod:`supertiny.stages.export.imatrix`), GPTQ's Hessians (:mod:`supertiny.stages.quantize.gptq`).

Example::

    from supertiny.readers import spans, token_windows
    from supertiny.stages.calibration import LMLoss, calibrate
    from supertiny.stages.export.imatrix import ImatrixStatistic
    calib, held_out = spans(ids, 2048, 2048)
    imatrix, loss = calibrate(model, token_windows(calib, 512), [ImatrixStatistic(spec), LMLoss()])

torch is imported inside the functions: importing this module stays light.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from supertiny.archs import layout_of

if TYPE_CHECKING:
    import torch

    from supertiny.archs import Layout

Progress = Callable[[int, int], None]  # (windows done, windows in all)


class Statistic(abc.ABC):
    """One quantity collected by :func:`calibrate` over the calibration windows.

    A statistic attaches forward hooks to the modules it reads (found through the
    architecture row's :class:`~supertiny.archs.Layout`), may look at each window's
    output, and hands back its result at the end. Hooks run inside
    ``torch.inference_mode``; accumulate into tensors made in :meth:`attach`.
    """

    @abc.abstractmethod
    def attach(self, model: Any, layout: Layout) -> list[Any]:
        """Register forward hooks on ``model``; returns their handles (the pass removes them)."""

    def window(self, ids: torch.Tensor, output: Any) -> None:  # noqa: B027 - optional, most need nothing
        """Called after each window's forward pass with its ``[1, n]`` ids and the model output."""

    @abc.abstractmethod
    def finish(self) -> Any:
        """The result, once every window ran."""


def calibrate(model: Any, windows: Sequence[Sequence[int]], stats: Sequence[Statistic],
              progress: Progress | None = None) -> list[Any]:
    """Run ``model`` once over every window while ``stats`` collect; returns their results in order.

    Args:
        model: a ``*ForCausalLM`` of a supported architecture, in eval mode.
        windows: token windows (see :func:`token_windows`); each is one forward pass.
        stats: the statistics to collect (all in the same pass).
        progress: called with (windows done, windows in all).

    Returns:
        ``[stat.finish() for stat in stats]``.
    """
    import torch

    layout = layout_of(model)
    handles: list[Any] = []
    try:
        for stat in stats:
            handles += stat.attach(model, layout)
        with torch.inference_mode():
            for done, ids in enumerate(windows, 1):
                x = torch.tensor([list(ids)], dtype=torch.long)
                output = model(input_ids=x)
                for stat in stats:
                    stat.window(x, output)
                if progress:
                    progress(done, len(windows))
    finally:
        for h in handles:
            h.remove()
    return [stat.finish() for stat in stats]


def lm_loss(ids: torch.Tensor, output: Any) -> float:
    """Summed next-token loss (nats) of one ``[1, n]`` window from the model's output."""
    import torch

    logits = output.logits[0, :-1].double()
    return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))


class LMLoss(Statistic):
    """The summed next-token loss over all windows (nats); ``skip`` makes that decoder
    layer an identity (its input passes through), to measure what the layer is worth."""

    def __init__(self, skip: int | None = None):
        self.skip, self.total = skip, 0.0

    def attach(self, model: Any, layout: Layout) -> list[Any]:
        if self.skip is None:
            return []
        return [layout.decoder_layers(model)[self.skip].register_forward_hook(_identity, with_kwargs=True)]

    def window(self, ids: torch.Tensor, output: Any) -> None:
        self.total += lm_loss(ids, output)

    def finish(self) -> float:
        return self.total


def _identity(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
    """Forward hook that makes a decoder layer an identity: its input passes through."""
    h = args[0] if args else kwargs["hidden_states"]
    return (h, *out[1:]) if isinstance(out, tuple) else h
