"""The quantization schemes' configs: one frozen, validated dataclass per scheme, and the registry of names.

:mod:`.apply` applies them (its handlers are keyed by these types); the CLI and the
manifests name them (:func:`scheme_from_name`, :func:`scheme_dict`). Importing this
module imports no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from supertiny.errors import InvalidInputError

# The choices the schemes take: calibrated methods, int4 group sizes, output-layer bits, FP8 scale granularities.
QUANT_METHODS = ("rtn", "gptq", "awq")
QUANT_GROUPS = (32, 64, 128)
HEAD_BITS = (4, 8)  # w4a16: the output layer (and a tied embedding) in int4 or group-wise int8
FP8_GRANULARITIES = ("tensor", "channel")


@dataclass(frozen=True)
class W4A16:
    """Group-wise int4 weights, 16-bit (float) activations.

    Attributes:
        group: input columns per scale (32, 64 or 128).
        symmetric: zero point fixed at 8 (else one integer zero point per group).
        method: ``rtn`` (round to nearest), ``gptq`` or ``awq`` (both need calibration).
        head: quantize the output layer (and the embedding when tied).
        head_bits: 4 (the output layer like the decoder) or 8 (group-wise int8, round to nearest).
        max_mb: a size budget (MB, size-equivalent): the set of decoder layers and output layer whose int8
            versions save the most calibration KL within it are stored in group-wise int8
            (:mod:`.allocation`; needs calibration windows).
        damp: GPTQ's damping, a fraction of the mean Hessian diagonal.
        awq_grid: AWQ's number of exponents tried (0, 1/grid, ...).
    """

    group: int = 128
    symmetric: bool = False
    method: str = "rtn"
    head: bool = True
    head_bits: int = 4
    max_mb: float | None = None
    damp: float = 0.01
    awq_grid: int = 20
    name: ClassVar[str] = "w4a16"

    def __post_init__(self) -> None:
        if self.group not in QUANT_GROUPS:
            raise InvalidInputError(f"w4a16: group must be one of {', '.join(map(str, QUANT_GROUPS))}, "
                                    f"got {self.group}")
        if self.method not in QUANT_METHODS:
            raise InvalidInputError(f"w4a16: unknown method {self.method!r}; known: {', '.join(QUANT_METHODS)}")
        if self.head_bits not in HEAD_BITS:
            raise InvalidInputError(f"w4a16: head_bits must be one of {', '.join(map(str, HEAD_BITS))}, "
                                    f"got {self.head_bits}")
        if self.head_bits != 4 and not self.head:
            raise InvalidInputError("w4a16: head_bits applies to a quantized output layer; drop it or the float head")
        if self.max_mb is not None and not self.max_mb > 0:
            raise InvalidInputError(f"w4a16: max_mb must be positive, got {self.max_mb}")
        if not 0 < self.damp < 1:
            raise InvalidInputError(f"w4a16: damp must lie in (0, 1), got {self.damp}")
        if self.awq_grid < 1:
            raise InvalidInputError(f"w4a16: awq_grid must be at least 1, got {self.awq_grid}")


@dataclass(frozen=True)
class W8A8:
    """int8 per-output-channel weights, int8 dynamic per-token activations (round to nearest)."""

    head: bool = True
    method: str = "rtn"
    name: ClassVar[str] = "w8a8"

    def __post_init__(self) -> None:
        if self.method != "rtn":
            raise InvalidInputError(f"w8a8 rounds to nearest only (method 'rtn'), got {self.method!r}")


@dataclass(frozen=True)
class FP8:
    """FP8 E4M3 weights and dynamic activations; one scale per tensor or per channel/token."""

    granularity: str = "tensor"
    head: bool = True
    method: str = "rtn"
    name: ClassVar[str] = "fp8"

    def __post_init__(self) -> None:
        if self.granularity not in FP8_GRANULARITIES:
            raise InvalidInputError(f"fp8: unknown granularity {self.granularity!r}; known: "
                                    f"{', '.join(FP8_GRANULARITIES)}")
        if self.method != "rtn":
            raise InvalidInputError(f"fp8 rounds to nearest only (method 'rtn'), got {self.method!r}")


Scheme = W4A16 | W8A8 | FP8
SCHEME_TYPES: dict[str, type] = {cls.name: cls for cls in (W4A16, W8A8, FP8)}
QUANT_SCHEMES = tuple(SCHEME_TYPES)


def scheme_from_name(name: str, **options: Any) -> Scheme:
    """A scheme by name with the given options (``None`` values are left at their defaults).

    Raises:
        InvalidInputError: an unknown name (the known ones listed) or an option the scheme does not take.

    Example:
        >>> scheme_from_name("w4a16", group=64, method="gptq", granularity=None)
        W4A16(group=64, symmetric=False, method='gptq', head=True, head_bits=4, max_mb=None, damp=0.01, awq_grid=20)
    """
    cls = SCHEME_TYPES.get(name)
    if cls is None:
        raise InvalidInputError(f"unknown quantization scheme {name!r}; known: {', '.join(SCHEME_TYPES)}")
    given = {k: v for k, v in options.items() if v is not None}
    allowed = {f.name for f in fields(cls)}
    extra = sorted(set(given) - allowed)
    if extra:
        raise InvalidInputError(f"{name} takes no {', '.join(extra)} (its options: {', '.join(sorted(allowed))})")
    return cls(**given)


def scheme_dict(scheme: Scheme) -> dict[str, Any]:
    """``{"name": ..., **fields}``: how manifests and the codes file record a scheme."""
    return {"name": scheme.name, **asdict(scheme)}
