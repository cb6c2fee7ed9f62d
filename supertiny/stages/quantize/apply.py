"""Quantization schemes as config objects, applied in place by :func:`quantize_` (torchao's style).

A scheme is a frozen, validated config; :func:`quantize_` looks up its handler by the
config's type in :data:`HANDLERS` (filled by :func:`register`). On a CPU every scheme
runs as a **faithful simulation**: weights are replaced by their quantize-dequantize
values with the format's exact rounding (:mod:`.number_formats`), and W8A8/FP8 activations
are quantize-dequantized by forward pre-hooks on the same Linears; no integer or FP8
kernel runs (``kernel: "simulated"`` in the report).

* :class:`W4A16` — group-wise int4 weights (group 32/64/128, symmetric or asymmetric),
  rounded by ``rtn``, ``gptq`` or ``awq`` (:mod:`.gptq`; the calibrated ones need
  calibration windows, and both pick each group's range by a clip search on the
  group's output error). AWQ folds its per-channel scales into the op that feeds each
  group of Linears (the norms, ``v_proj`` rows for ``o_proj``, ``up_proj`` rows for
  ``down_proj``), so the model stays a plain checkpoint whose Linear weights are
  exactly ``(code - zero) * scale``; its rounding then shrinks each group's range by
  the ratio that minimises the group's output error (AWQ's clip search).
* :class:`W8A8` — int8 per-output-channel weights, int8 dynamic per-token activations.
* :class:`FP8` — FP8 E4M3 weights and dynamic activations, one scale per tensor
  (``granularity="tensor"``) or per output channel / per token (``"channel"``).

What is quantized: every decoder Linear (q, k, v, o, gate, up, down) and, with
``head=True`` (the default), the output layer — and with it the **tied embedding
table**, which is the same tensor (its lookups then read the dequantized rows, as
onnxruntime's ``GatherBlockQuantized`` and llama.cpp do). AWQ leaves a tied output
layer unscaled (a scale would change the embedding too) and GPTQ rounds it like any
Linear. An untied embedding table, the norms and biases stay in float (listed in the
report).

**Storage of the codes**: beside the plain Hugging Face checkpoint (whose weights are the
dequantized values, so every tool loads it), ``quantization/codes.safetensors`` holds the
codes, scales and zero points of every quantized weight (:mod:`.codes`), which the
exporters carry into ONNX ``MatMulNBits`` and GGUF blocks (:mod:`supertiny.stages.export.carry`).

**Mixed precision for the output layer**: ``W4A16(head_bits=8)`` stores the output layer
(and the tied embedding table) as group-wise int8 (llama.cpp's Q8_0 with group 32) while
the decoder Linears stay int4. On a small model with a large vocabulary the output layer
is a fifth of the weights and the most sensitive one; 8 bits there cost ~14 MB on
SmolLM2-135M and buy most of the remaining quality (``benchmarks/quantize_schemes.py``).

Example::

    from supertiny.stages.quantize.apply import W4A16, quantize_
    result = quantize_(model, W4A16(group=64, method="gptq"), calib=windows)
    result.details()["bits_per_weight"]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from supertiny.archs import layout_of
from supertiny.errors import InvalidInputError
from supertiny.stages.calibration import calibrate
from supertiny.stages.quantize.codes import CODES_FILE, read_coded, read_codes  # noqa: F401 - the storage API, re-exported
from supertiny.stages.quantize.codes import save_codes as _save_codes
from supertiny.stages.quantize.number_formats import (
    fake_fp8,
    fake_int8_rows,
    int8_groups_dequant,
    pack_int4,
    quantize_fp8,
    quantize_int4,
    quantize_int8_groups,
    quantize_int8_rows,
)
from supertiny.stages.quantize.schemes import FP8, SCHEME_TYPES, W4A16, W8A8, Scheme, scheme_dict, scheme_from_name  # noqa: F401 - re-exported

SCALE_BITS = 16  # an exported int scale is float16 (MatMulNBits, GGUF); FP8 keeps float32 scales


@dataclass
class QuantResult:
    """What :func:`quantize_` did.

    Attributes:
        scheme: the config applied.
        codes: the stored form of every quantized weight (see the module doc), by tensor name.
        layers: one row per quantized weight (name, shape, bits/weight, AWQ exponent...).
        kept_float: the parameters left in float, with why.
        hooks: the activation-quantization hooks (removing them makes the model weight-only).
        tied: the embedding tensor sharing ``lm_head.weight``, if any.
        notes: what the reader of the report should know.
    """

    scheme: Scheme
    codes: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    kept_float: dict[str, str] = field(default_factory=dict)
    hooks: list[Any] = field(default_factory=list)
    tied: str | None = None
    notes: list[str] = field(default_factory=list)
    quantized_params: int = 0
    quantized_bits: float = 0.0
    float_params: int = 0
    allocation: dict[str, Any] | None = None

    def details(self) -> dict[str, Any]:
        """The manifest's view: scheme, kernel, bits per weight, size-equivalent bytes, layers, floats kept."""
        total = self.quantized_params + self.float_params
        bits_all = self.quantized_bits + SCALE_BITS * self.float_params
        return {
            "scheme": scheme_dict(self.scheme), "kernel": "simulated",
            "activations": activations_of(self.scheme),
            "bits_per_weight": round(self.quantized_bits / max(1, self.quantized_params), 4),
            "bits_per_weight_all": round(bits_all / max(1, total), 4),
            "size_equivalent_bytes": math.ceil(bits_all / 8),
            "quantized_parameters": self.quantized_params, "float_parameters": self.float_params,
            "tied_embedding": self.tied, "kept_float": self.kept_float, "layers": self.layers,
            **({"allocation": self.allocation} if self.allocation else {}),
        }


def activations_of(scheme: Scheme) -> str:
    """How a scheme treats activations, in words (the report's ``activations``)."""
    if isinstance(scheme, W8A8):
        return "int8, dynamic per token"
    if isinstance(scheme, FP8):
        return f"fp8 e4m3, dynamic per {'token' if scheme.granularity == 'channel' else 'tensor'}"
    return "float (not quantized)"


Progress = Callable[[int, int], None]  # (Linears done, Linears in all)
Handler = Callable[[Any, Any, "list[tuple[str, torch.nn.Linear]]", QuantResult, Any, "Progress"], None]
HANDLERS: dict[type, Handler] = {}


def register(config_type: type) -> Callable[[Handler], Handler]:
    """Decorator: make ``fn(model, scheme, targets, result, calib, progress)`` the handler of ``config_type``."""

    def add(fn: Handler) -> Handler:
        HANDLERS[config_type] = fn
        return fn

    return add


def targets_of(model: Any, head: bool) -> list[tuple[str, torch.nn.Linear]]:
    """The Linears a scheme quantizes, by module path: every decoder layer's, then the output layer."""

    layout = layout_of(model)
    out = [(layout.path(role, i), layout.module(model, role, i))
           for i in range(len(layout.decoder_layers(model))) for role in layout.LINEARS]
    if head:
        out.append((layout.path("lm_head"), layout.module(model, "lm_head")))
    return out


def quantize_(model: Any, scheme: Scheme, calib: Sequence[Sequence[int]] | None = None,
              progress: Progress | None = None) -> QuantResult:
    """Quantize ``model``'s Linears in place (simulated: weights dequantized, activation hooks attached).

    Args:
        model: a ``*ForCausalLM`` of a supported architecture, float32, on the CPU.
        scheme: :class:`W4A16`, :class:`W8A8` or :class:`FP8`.
        calib: token windows for calibrated methods (GPTQ, AWQ); ignored by RTN.
        progress: called with (Linears done, Linears in all).

    Returns:
        :class:`QuantResult` (codes to store, per-layer rows, what stayed in float).

    Raises:
        InvalidInputError: an unknown scheme type, or a calibrated method without windows.
    """
    handler = HANDLERS.get(type(scheme))
    if handler is None:
        known = ", ".join(t.__name__ for t in HANDLERS)
        raise InvalidInputError(f"no quantization handler for {type(scheme).__name__}; known: {known}")
    if getattr(scheme, "method", "rtn") != "rtn" and not calib:
        raise InvalidInputError(f"{scheme.name} --method {scheme.method} needs calibration windows")
    if getattr(scheme, "max_mb", None) and not calib:
        raise InvalidInputError(f"{scheme.name} with a size budget (max_mb) needs calibration windows")
    head = getattr(scheme, "head", True)
    emb, out_layer = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out_layer.weight is emb.weight
    result = QuantResult(scheme, tied=_param_name(model, emb.weight) if tied and head else None)
    targets = targets_of(model, head)
    # what stays float is known before any rounding (the size-budget allocation reads it)
    quantized = {id(m.weight) for _, m in targets}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) not in quantized:
            result.float_params += p.numel()
            result.kept_float[name] = _why_float(name, p, p is emb.weight, tied)
    with torch.no_grad():
        handler(model, scheme, targets, result, calib, progress or (lambda _d, _t: None))
    return result


def _why_float(name: str, p: torch.Tensor, is_embedding: bool, tied: bool) -> str:
    """Why a parameter stayed in float (the report's ``kept_float``)."""
    if name.endswith(".bias"):
        return "bias"
    if p.dim() == 1:
        return "norm"
    if is_embedding:
        return "embedding and tied output layer (head=False)" if tied else "embedding lookup table (untied)"
    return "output layer (head=False)"


def _param_name(model: Any, p: torch.Tensor) -> str:
    return next(n for n, q in model.named_parameters(remove_duplicate=False) if q is p)


def _record(result: QuantResult, name: str, w: torch.Tensor, bits: float, fmt: str, group: int | None,
            **extra: Any) -> None:
    """One report row (also the codes file's ``layers`` entry: shape, format, group; None = one scale per row or
    tensor)."""
    result.quantized_params += w.numel()
    result.quantized_bits += bits * w.numel()
    result.layers.append({"name": name, "shape": list(w.shape), "format": fmt, "group": group,
                          "bits_per_weight": round(bits, 4), **extra})


def int4_bits(in_features: int, group: int, symmetric: bool) -> float:
    """Size-equivalent bits per int4 weight: 4 + a float16 scale (and a 4-bit zero point) per group."""
    groups = math.ceil(in_features / group)
    return 4 + groups * (SCALE_BITS + (0 if symmetric else 4)) / in_features


def _store_int4(result: QuantResult, name: str, module: torch.nn.Linear, q: Any, **extra: Any) -> None:
    """Put an int4 weight into ``module`` (dequantized) and its codes into ``result``."""
    scheme = result.scheme
    assert isinstance(scheme, W4A16)
    module.weight.copy_(q.dequantize().to(module.weight.dtype))
    result.codes.update({f"{name}.codes": pack_int4(q.codes), f"{name}.scales": q.scales, f"{name}.zeros": q.zeros})
    _record(result, name, module.weight, int4_bits(module.in_features, scheme.group, scheme.symmetric), "int4",
            scheme.group, **extra)


def _store_int8_groups(result: QuantResult, name: str, module: torch.nn.Linear, group: int,
                       codes: torch.Tensor | None = None, scales: torch.Tensor | None = None) -> None:
    """Round ``module``'s weight to group-wise int8 in place (or take the given codes), replacing any entry of
    ``name`` in ``result``."""
    old = next((r for r in result.layers if r["name"] == name), None)
    if old is not None:  # an int4 weight lifted to int8 by the size-budget allocation
        result.layers.remove(old)
        result.quantized_params -= module.weight.numel()
        result.quantized_bits -= old["bits_per_weight"] * module.weight.numel()
        for k in (f"{name}.codes", f"{name}.scales", f"{name}.zeros"):
            result.codes.pop(k, None)
    if codes is None or scales is None:
        codes, scales = quantize_int8_groups(module.weight, group)
    module.weight.copy_(int8_groups_dequant(codes, scales, group).to(module.weight.dtype))
    result.codes.update({f"{name}.codes": codes, f"{name}.scales": scales})
    _record(result, name, module.weight, 8 + math.ceil(module.in_features / group) * SCALE_BITS / module.in_features,
            "int8", group)


@register(W4A16)
def _w4a16(model: Any, scheme: W4A16, targets: list[tuple[str, torch.nn.Linear]], result: QuantResult,
           calib: Any, progress: Progress) -> None:
    alphas: dict[str, float] = {}
    scales: dict[str, torch.Tensor] = {}
    stats = None
    if scheme.method != "rtn":
        from supertiny.stages.quantize.gptq import InputStatistic

        (stats,) = calibrate(model, calib, [InputStatistic([p for p, _ in targets])])
    reference = None
    if scheme.max_mb:
        from supertiny.stages.quantize.allocation import ALLOC_WINDOWS, log_probs

        reference = log_probs(model, calib[:ALLOC_WINDOWS])  # the float model's, before any weight moves
    if scheme.method == "awq":
        from supertiny.stages.quantize.awq import apply_awq_

        alphas, scales = apply_awq_(model, scheme, stats, result)
    originals = {p: m.weight.detach().clone() for p, m in targets} if scheme.max_mb else {}
    head8 = targets[-1][0] if scheme.head and scheme.head_bits == 8 else None
    for done, (path, module) in enumerate(targets, 1):
        name = f"{path}.weight"
        if path == head8:
            _store_int8_groups(result, name, module, scheme.group)
            progress(done, len(targets))
            continue
        if scheme.method == "gptq":
            from supertiny.stages.quantize.gptq import gptq_int4

            q = gptq_int4(module.weight, stats[path].h, scheme.group, scheme.symmetric, scheme.damp)
        elif scheme.method == "awq":
            from supertiny.stages.quantize.gptq import clip_int4

            # the scaled weight's input is x / s: its H is diag(1/s) H diag(1/s)
            s = scales[path]
            q = clip_int4(module.weight, stats[path].h / s[:, None] / s[None, :], scheme.group, scheme.symmetric)
        else:
            q = quantize_int4(module.weight, scheme.group, scheme.symmetric)
        extra = {"awq_alpha": alphas[path]} if path in alphas else {}
        _store_int4(result, name, module, q, **extra)
        progress(done, len(targets))
    if scheme.max_mb:
        from supertiny.stages.quantize.allocation import ALLOC_WINDOWS, allocate_int8

        assert reference is not None
        result.allocation = allocate_int8(
            model, result, targets, originals, scheme.group, scheme.head, calib[:ALLOC_WINDOWS], reference,
            scheme.max_mb * 1e6, lambda r, n, m, c, s: _store_int8_groups(r, n, m, scheme.group, c, s), progress)


def _act_hook(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    def hook(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (fn(args[0]), *args[1:])

    return hook


@register(W8A8)
def _w8a8(model: Any, scheme: W8A8, targets: list[tuple[str, torch.nn.Linear]], result: QuantResult,
          calib: Any, progress: Progress) -> None:
    for done, (path, module) in enumerate(targets, 1):
        name = f"{path}.weight"
        codes, scale = quantize_int8_rows(module.weight)
        module.weight.copy_((codes.float() * scale).to(module.weight.dtype))
        result.codes.update({f"{name}.codes": codes, f"{name}.scales": scale})
        _record(result, name, module.weight, 8 + SCALE_BITS / module.in_features, "int8", None)
        result.hooks.append(module.register_forward_pre_hook(_act_hook(fake_int8_rows)))
        progress(done, len(targets))


@register(FP8)
def _fp8(model: Any, scheme: FP8, targets: list[tuple[str, torch.nn.Linear]], result: QuantResult,
         calib: Any, progress: Progress) -> None:
    per_row = scheme.granularity == "channel"
    for done, (path, module) in enumerate(targets, 1):
        name = f"{path}.weight"
        codes, scale = quantize_fp8(module.weight, per_row)
        module.weight.copy_((codes.float() * scale).to(module.weight.dtype))
        result.codes.update({f"{name}.codes": codes, f"{name}.scales": scale})
        # float32 scales: one per tensor, or one per output row
        _record(result, name, module.weight, 8 + 32 / (module.in_features if per_row else module.weight.numel()),
                "fp8", None)
        result.hooks.append(module.register_forward_pre_hook(_act_hook(lambda x, r=per_row: fake_fp8(x, r))))
        progress(done, len(targets))


def save_codes(result: QuantResult, folder: Path) -> Path:
    """Write ``result``'s codes to ``folder/quantization/codes.safetensors`` (format: :mod:`.codes`)."""
    return _save_codes(result.codes, result.layers, scheme_dict(result.scheme), result.tied, folder)
