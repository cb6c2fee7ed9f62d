"""The stored form of a quantized checkpoint's codes: ``quantization/codes.safetensors``.

Beside the plain Hugging Face checkpoint (whose weights are the dequantized values, so
every tool loads it), the quantize stage writes, per quantized weight named
``W = "<module path>.weight"`` (the output layer as ``lm_head.weight`` even when tied):

* ``int4``: ``W.codes`` uint8 ``[out, ceil(in/2)]`` — 4-bit codes packed two per byte
  along the row, column ``2j`` in the low nibble (onnxruntime MatMulNBits' ``B`` order:
  reshape to ``[out, in/group, group/2]``); ``W.scales`` float32 ``[out, groups]``;
  ``W.zeros`` uint8 ``[out, groups]`` (0..15, unpacked; 8 for symmetric). Dequantized:
  ``(code - zero) * scale``, groups of ``group`` columns, the last one possibly shorter.
* ``int8``: ``W.codes`` int8 ``[out, in]``, ``W.scales`` float32 ``[out, groups]``:
  ``code * scale`` (W8A8's per-channel weights are one group of ``in`` columns).
* ``fp8``: ``W.codes`` float8_e4m3fn ``[out, in]``, ``W.scales`` float32 ``[]`` or ``[out, 1]``.

Group scales of int4/int8 are float16 values held in float32 (:func:`.number_formats.fp16_scale`).
The file's metadata holds ``format: supertiny-quant``, ``version``, the scheme (``scheme``
as JSON), ``tied`` (the embedding tensor that shares ``lm_head.weight``) and ``layers``
(per weight: ``shape``, ``format``, ``group``). Exporters read it with :func:`read_coded`
and carry the codes instead of re-quantizing (:mod:`supertiny.stages.export.carry`).

safetensors (and through it torch) is imported inside the functions that read and write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from supertiny.errors import InvalidInputError
from supertiny.stages.quantize.number_formats import Int4Weight, int8_groups_dequant, unpack_int4

CODES_FILE = "quantization/codes.safetensors"
CODES_FORMAT, CODES_VERSION = "supertiny-quant", 2
FORMATS = ("int4", "int8", "fp8")


@dataclass(frozen=True)
class CodedWeight:
    """One quantized weight as stored: ``format`` (int4, int8, fp8), codes ``[out, in]`` (int4 unpacked to one
    uint8 per code), ``scales``, ``zeros`` (int4 only) and ``group`` (columns per scale; ``in`` for one per row)."""

    format: str
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    group: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    def dequantize(self) -> torch.Tensor:
        """The float32 weight the codes stand for."""
        if self.format == "int4":
            assert self.zeros is not None
            return Int4Weight(self.codes, self.scales, self.zeros, self.group).dequantize()
        if self.format == "int8":
            return int8_groups_dequant(self.codes, self.scales, self.group)
        return self.codes.float() * self.scales


def save_codes(codes: dict[str, torch.Tensor], layers: list[dict[str, Any]], scheme: dict[str, Any],
               tied: str | None, folder: Path) -> Path:
    """Write the codes file into ``folder`` (see the module doc); ``layers`` rows carry name, shape, format, group."""
    from safetensors.torch import save_file

    path = folder / CODES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": CODES_FORMAT, "version": str(CODES_VERSION), "scheme": json.dumps(scheme),
            "tied": tied or "",
            "layers": json.dumps({r["name"]: {k: r[k] for k in ("shape", "format", "group")} for r in layers})}
    save_file({k: v.contiguous() for k, v in codes.items()}, str(path), metadata=meta)
    canonical_header(path)
    return path


def canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with its keys sorted, in place and at the same length.

    safetensors writes the metadata in hash-map order, which changes from run to run; the same codes must
    give the same bytes (``supertiny run`` recognises a finished stage by its outputs' hashes). Only the
    order of keys changes, so the header keeps its length and the tensor offsets hold.
    """
    with open(path, "r+b") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= n:  # else (never seen): leave the file as written
            fh.seek(8)
            fh.write(text + b" " * (n - len(text)))


def has_codes(folder: str | Path) -> bool:
    """Whether ``folder`` is a quantized checkpoint with stored codes."""
    return (Path(folder) / CODES_FILE).is_file()


def read_coded(folder: str | Path) -> tuple[dict[str, Any], dict[str, CodedWeight]]:
    """What ``folder``'s codes file records (``scheme``, ``tied``, ``version``) and every quantized weight as
    stored, by tensor name.

    Raises:
        InvalidInputError: no codes file, one of another format or version, or a weight missing its codes.
    """
    from safetensors import safe_open

    path = Path(folder) / CODES_FILE
    if not path.is_file():
        raise InvalidInputError(f"{folder} holds no quantization codes ({CODES_FILE})")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != CODES_FORMAT:
            raise InvalidInputError(f"{path}: not a {CODES_FORMAT} file (format {meta.get('format')!r})")
        if meta.get("version") != str(CODES_VERSION):
            raise InvalidInputError(f"{path}: codes format version {meta.get('version')}, this supertiny reads "
                                    f"{CODES_VERSION}; quantize the model again")
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    weights = {}
    for name, row in json.loads(meta["layers"]).items():
        if row["format"] not in FORMATS or f"{name}.codes" not in t or f"{name}.scales" not in t:
            raise InvalidInputError(f"{path}: {name} has no {row['format']} codes and scales")
        codes, in_f = t[f"{name}.codes"], row["shape"][1]
        if row["format"] == "int4":
            codes = unpack_int4(codes, in_f)
        weights[name] = CodedWeight(row["format"], codes, t[f"{name}.scales"], t.get(f"{name}.zeros"),
                                    row["group"] or in_f)
    info = {"scheme": json.loads(meta["scheme"]), "tied": meta.get("tied") or None, "version": CODES_VERSION}
    return info, weights


def read_codes(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """:func:`read_coded` with every weight rebuilt from its codes (float32)."""
    info, coded = read_coded(folder)
    return info, {name: c.dequantize() for name, c in coded.items()}
