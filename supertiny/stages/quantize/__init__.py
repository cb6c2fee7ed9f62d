"""Quantization: schemes as configs (:mod:`.schemes`: W4A16, W8A8, FP8), applied in place by
:func:`.apply.quantize_` with registered handlers, their number formats (:mod:`.number_formats`),
the stored codes the exporters carry (:mod:`.codes`), the calibrated roundings (:mod:`.gptq`,
:mod:`.awq`), the size-budget allocation (:mod:`.allocation`), and the stage (:mod:`.stage`).
Only :mod:`.schemes` and :mod:`.stage` are light (no torch)."""

from supertiny.stages.quantize.schemes import FP8, W4A16, W8A8, Scheme, scheme_from_name
from supertiny.stages.quantize.stage import QuantizeConfig, quantize

__all__ = ["FP8", "W4A16", "W8A8", "QuantizeConfig", "Scheme", "quantize", "scheme_from_name"]
