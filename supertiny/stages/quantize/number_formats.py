"""The number formats of the quantization schemes, with the formats' exact rounding.

Every function here is a pure tensor function, so the schemes (:mod:`.apply`), the
calibrated methods (:mod:`.gptq`) and the tests share one definition of each format:

* **int4, group-wise** (W4A16): each run of ``group`` input columns of a weight row has a
  scale and an integer zero point; ``w ≈ (code - zero) * scale`` with codes
  0..15. *Asymmetric*: the group's range ``[min(w, 0), max(w, 0)]`` spans the 16 levels
  (``scale = (hi - lo) / 15``, ``zero = round(-lo / scale)``), as onnxruntime's
  MatMulNBits quantizer and GPTQ do. *Symmetric*: ``zero = 8`` and ``scale = m / -8``
  with ``m`` the group's value of largest magnitude (sign kept), so that value lands
  exactly on code 0 and all 16 levels are used (llama.cpp's Q4_0 convention; the scale
  may be negative). A last group shorter than ``group`` (``in_features`` not a multiple)
  is quantized on its own columns.
* **int8 per channel** (W8A8 weights) and **per token** (W8A8 dynamic activations):
  symmetric, ``scale = absmax / 127``, codes -127..127.
* **int8, group-wise** (the W4A16 scheme's ``head_bits=8`` output layer): symmetric,
  ``scale = absmax / 127`` per group, codes -127..127 (llama.cpp's Q8_0 with group 32).
* **FP8 E4M3** (``float8_e4m3fn``: 4 exponent bits, bias 7, 3 mantissa bits, no
  infinities): round to nearest, ties to even, subnormals below ``2**-6`` in steps of
  ``2**-9``, saturating at ±448. :func:`round_fp8_e4m3` computes it by hand;
  :func:`to_fp8_e4m3` uses torch's cast where torch has the type (they agree bit for
  bit: tested).

Group scales (int4 and group-wise int8) are rounded to **float16** values before the codes
are taken, because every deployed format stores them so (MatMulNBits' and GGUF's block
scales): the dequantized checkpoint is then exactly what an exporter that carries the
codes writes (:mod:`supertiny.stages.export.carry`). A symmetric group's extreme value then
lands on code 0 up to that rounding.

Rounding is ``torch.round`` (ties to even) of an exact float32 division; all-zero groups
get scale 1 (codes = zero point, dequantized 0), never a division by zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_MAX_CODE = 15
INT8_MAX = 127
FP16_MAX = 65504.0
FP8_E4M3_MAX = 448.0
FP8_E4M3_MIN_NORMAL_EXP = -6  # smallest normal exponent; below it, subnormals in steps of 2**-9
FP8_E4M3_MANTISSA_BITS = 3


def group_slices(in_features: int, group: int) -> list[slice]:
    """Column slices of the groups of a row: ``group`` columns each, the last one possibly shorter.

    Example:
        >>> group_slices(10, 4)
        [slice(0, 4, None), slice(4, 8, None), slice(8, 10, None)]
    """
    return [slice(b, min(b + group, in_features)) for b in range(0, in_features, group)]


def fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` rounded to the nearest float16 value (kept float32); 0 (or an underflow to 0) becomes 1."""
    s = scale.clamp(-FP16_MAX, FP16_MAX).half().float()
    return torch.where(s == 0, torch.ones_like(s), s)


def int4_params(w: torch.Tensor, symmetric: bool, ratio: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of ``w`` (one group: ``[rows, columns]``); ``ratio < 1`` shrinks the
    range (clipping the extremes), as AWQ's clip search tries.

    Returns:
        ``(scale float32 [rows], zero uint8 [rows])``.
    """
    w = w.float()
    if symmetric:
        idx = w.abs().argmax(dim=1, keepdim=True)
        m = w.gather(1, idx)[:, 0] * ratio
        scale = m / -8.0
        zero = torch.full_like(scale, 8.0)
    else:
        lo = w.min(dim=1).values.clamp(max=0) * ratio
        hi = w.max(dim=1).values.clamp(min=0) * ratio
        scale = (hi - lo) / INT4_MAX_CODE
        zero = None
    scale = fp16_scale(scale)
    if zero is None:
        zero = torch.round(-lo / scale).clamp(0, INT4_MAX_CODE)
    return scale, zero.to(torch.uint8)


def int4_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 (uint8) of ``w`` ``[rows, cols]`` with per-row ``scale`` and ``zero``."""
    q = torch.round(w.float() / scale[:, None]) + zero[:, None].float()
    return q.clamp(0, INT4_MAX_CODE).to(torch.uint8)


def int4_dequant(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``(codes - zero) * scale`` in float32, per row (one group)."""
    return (codes.float() - zero[:, None].float()) * scale[:, None]


@dataclass(frozen=True)
class Int4Weight:
    """A group-wise int4 weight: codes ``uint8 [out, in]`` (0..15), scales ``float32 [out, groups]``,
    zero points ``uint8 [out, groups]``."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    group: int

    def dequantize(self) -> torch.Tensor:
        """The float32 weight the codes stand for."""
        out = torch.empty(self.codes.shape, dtype=torch.float32)
        for g, cols in enumerate(group_slices(self.codes.shape[1], self.group)):
            out[:, cols] = int4_dequant(self.codes[:, cols], self.scales[:, g], self.zeros[:, g])
        return out


def quantize_int4(w: torch.Tensor, group: int, symmetric: bool) -> Int4Weight:
    """Round-to-nearest int4 of a weight ``[out, in]``, group-wise along the input columns."""
    cols = group_slices(w.shape[1], group)
    codes = torch.empty(w.shape, dtype=torch.uint8)
    scales = torch.empty(w.shape[0], len(cols), dtype=torch.float32)
    zeros = torch.empty(w.shape[0], len(cols), dtype=torch.uint8)
    for g, c in enumerate(cols):
        scales[:, g], zeros[:, g] = int4_params(w[:, c], symmetric)
        codes[:, c] = int4_codes(w[:, c], scales[:, g], zeros[:, g])
    return Int4Weight(codes, scales, zeros, group)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two codes per byte along each row: column ``2j`` in the low nibble, ``2j + 1`` in the high one
    (an odd last column pairs with 0). ``[out, in]`` -> ``uint8 [out, ceil(in / 2)]``; with ``in`` a
    multiple of the group size this is onnxruntime MatMulNBits' ``B`` layout, reshaped."""
    c = codes.to(torch.uint8)
    if c.shape[1] % 2:
        c = torch.cat([c, torch.zeros(c.shape[0], 1, dtype=torch.uint8)], dim=1)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: ``uint8 [out, in_features]``."""
    out = torch.stack([packed & 0x0F, packed >> 4], dim=2).reshape(packed.shape[0], -1)
    return out[:, :in_features].contiguous()


def quantize_int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row (last dim): ``(codes int8, scale float32 [..., 1])``, ``scale = absmax / 127``."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True) / INT8_MAX
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.round(x / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scale


def quantize_int8_groups(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric group-wise int8 of a weight ``[out, in]``: ``(codes int8 [out, in], scales float32 [out, groups])``,
    ``scale = absmax / 127`` per group rounded to float16 (llama.cpp's Q8_0 with ``group = 32``)."""
    w = w.float()
    cols = group_slices(w.shape[1], group)
    codes = torch.empty(w.shape, dtype=torch.int8)
    scales = torch.empty(w.shape[0], len(cols), dtype=torch.float32)
    for g, c in enumerate(cols):
        scales[:, g] = fp16_scale(w[:, c].abs().amax(dim=1) / INT8_MAX)
        codes[:, c] = torch.round(w[:, c] / scales[:, g:g + 1]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scales


def int8_groups_dequant(codes: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """``code * scale`` per group of ``group`` columns, float32."""
    out = torch.empty(codes.shape, dtype=torch.float32)
    for g, c in enumerate(group_slices(codes.shape[1], group)):
        out[:, c] = codes[:, c].float() * scales[:, g:g + 1]
    return out


def fake_int8_rows(x: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize per row (W8A8's per-channel weights and per-token activations), in ``x``'s dtype."""
    codes, scale = quantize_int8_rows(x)
    return (codes.float() * scale).to(x.dtype)


def round_fp8_e4m3(x: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 (fn) rounding by hand, as float32: nearest, ties to even, saturating at ±448, subnormals kept.

    Example:
        >>> round_fp8_e4m3(torch.tensor([500.0, 1.0625, 1.1875, 2**-10, 3 * 2**-10])).tolist()
        [448.0, 1.0, 1.25, 0.0, 0.00390625]
    """
    x = x.float()
    a = x.abs().clamp(max=FP8_E4M3_MAX)  # values past 448 would round to 480, which E4M3FN lacks
    _, e = torch.frexp(a)  # a = m * 2**e, m in [0.5, 1): the binade's exponent is e - 1
    exp = (e - 1).clamp(min=FP8_E4M3_MIN_NORMAL_EXP)
    step = torch.ldexp(torch.ones_like(a), exp - FP8_E4M3_MANTISSA_BITS)
    # a / step and q * step scale by powers of two: exact; torch.round ties to even
    return torch.copysign(torch.round(a / step) * step, x)


def to_fp8_e4m3(x: torch.Tensor) -> torch.Tensor:
    """``x`` (already scaled into range) in FP8 E4M3: a ``float8_e4m3fn`` tensor where torch has the type,
    otherwise float32 holding the same values (:func:`round_fp8_e4m3`)."""
    if hasattr(torch, "float8_e4m3fn"):
        return x.float().clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return round_fp8_e4m3(x)  # pragma: no cover - torch < 2.1


def quantize_fp8(x: torch.Tensor, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 E4M3 codes and float32 scale(s) of ``x``: one scale (``per_row=False``) or one per row,
    ``scale = amax / 448`` so that the largest value maps to 448."""
    x = x.float()
    amax = x.abs().amax(dim=-1, keepdim=True) if per_row else x.abs().amax()
    scale = amax / FP8_E4M3_MAX
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return to_fp8_e4m3(x / scale), scale


def fake_fp8(x: torch.Tensor, per_row: bool) -> torch.Tensor:
    """Quantize-dequantize to FP8 E4M3 with a per-tensor or per-row scale, in ``x``'s dtype."""
    codes, scale = quantize_fp8(x, per_row)
    return (codes.float() * scale).to(x.dtype)
