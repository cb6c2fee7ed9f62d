"""Carry a quantized checkpoint's codes into the deployed files instead of quantizing again.

``supertiny quantize`` writes the dequantized weights (what every tool loads) and, beside
them, the codes, scales and zero points it chose (:mod:`supertiny.stages.quantize.codes`). A
calibrated scheme's value lies in those exact choices; an exporter that re-quantized the
dequantized weights with its own round-to-nearest would move them. The exporters
therefore write the stored codes byte for byte:

**GGUF** (llama.cpp block types; one block is 32 weights of a row):

=========================  ========  =====================================================
codes                      type      how
=========================  ========  =====================================================
int4, group 32, symmetric  Q4_0      ``d = scale``, ``q = code`` (zero point 8): exact
int4, group 32, asymmetric Q4_1      ``d = scale``, ``m = -zero * scale`` in float16: exact
                                     up to ``m``'s float16 rounding (relative 2**-11)
int8, group 32             Q8_0      ``d = scale``, ``q = code``: exact
int8, one scale per row    Q8_0      W8A8's weights re-blocked: each 32-weight block gets
                                     its own scale (finer than the row's), so every weight
                                     moves by at most half a Q8_0 step
=========================  ========  =====================================================

int4 groups of 64 or 128 have no llama.cpp type (its 4-bit blocks are 32 wide) and FP8
has none at all: such checkpoints are refused with a one-line error that names the way
out (``--group 32``, or ``--quant TYPE`` to let llama.cpp quantize).

**ONNX** (onnxruntime contrib operators, on optimum's float32 graph of the checkpoint):
every ``MatMul`` whose weight is a quantized Linear becomes ``MatMulNBits`` (bits 4 or 8,
``block_size`` = the group, the stored float32 scales, zero points packed as
onnxruntime packs them; W8A8's row scale repeated over 32-column blocks), and the
embedding lookup of a tied model becomes ``GatherBlockQuantized`` reading the output
layer's codes. The weights are found by value: a graph initializer equal, bit for bit,
to a dequantized weight (transposed for a MatMul) is that weight, so the mapping needs
no knowledge of the exporter's tensor names and cannot pick a wrong one.

onnx (the ``onnx`` extra) is imported inside the functions that rewrite a graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from supertiny.errors import InvalidInputError
from supertiny.stages.quantize.codes import CodedWeight, has_codes, read_coded

GGUF_BLOCK = 32


@dataclass(frozen=True)
class Carried:
    """The codes of a quantized checkpoint, for an exporter: scheme, the tied embedding's name, the weights."""

    scheme: dict[str, Any]
    tied: str | None
    weights: dict[str, CodedWeight]

    def summary(self) -> dict[str, Any]:
        """For the export's manifest: scheme, how many weights of which format."""
        formats: dict[str, int] = {}
        for c in self.weights.values():
            formats[c.format] = formats.get(c.format, 0) + 1
        return {"scheme": self.scheme, "weights": formats, "tied_embedding": self.tied}


def load_carried(source: str | Path | None) -> Carried | None:
    """The codes stored with ``source`` (a quantized checkpoint's folder), or None when it has none."""
    if source is None or not Path(source).is_dir() or not has_codes(source):
        return None
    info, weights = read_coded(source)
    return Carried(info["scheme"], info["tied"], weights)


# ---------------------------------------------------------------------------------------------------- GGUF


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(*x.shape, 2)


def gguf_blocks(coded: CodedWeight, name: str) -> tuple[np.ndarray, str, bool]:
    """A coded weight as llama.cpp blocks: ``(uint8 [out, row bytes], type name, exact)``.

    Raises:
        InvalidInputError: a format or group llama.cpp has no type for (the message says what to do).
    """
    out_f, in_f = coded.shape
    if coded.format == "fp8":
        raise InvalidInputError(f"{name}: llama.cpp has no FP8 type; export an fp8 checkpoint to ONNX, or give "
                                "--quant TYPE to let llama.cpp quantize the dequantized weights")
    if in_f % GGUF_BLOCK:
        raise InvalidInputError(f"{name}: rows of {in_f} weights do not split into llama.cpp's blocks of "
                                f"{GGUF_BLOCK}; give --quant TYPE")
    nb = in_f // GGUF_BLOCK
    if coded.format == "int8" and coded.group != GGUF_BLOCK:
        # one scale per row (W8A8): re-block into Q8_0 with a scale per 32 weights
        import gguf

        data = gguf.quants.quantize(coded.dequantize().numpy(), gguf.GGMLQuantizationType.Q8_0)
        return data.reshape(out_f, -1), "Q8_0", False
    if coded.group != GGUF_BLOCK:
        raise InvalidInputError(f"{name}: int4 groups of {coded.group} have no llama.cpp type (its 4-bit blocks hold "
                                f"{GGUF_BLOCK}); quantize with --group 32, or give --quant TYPE to re-quantize")
    d = _f16_bytes(coded.scales.numpy())  # [out, nb, 2]
    if coded.format == "int8":
        q = coded.codes.numpy().view(np.uint8).reshape(out_f, nb, GGUF_BLOCK)
        return np.concatenate([d, q], axis=2).reshape(out_f, -1), "Q8_0", True
    c = coded.codes.numpy().reshape(out_f, nb, GGUF_BLOCK)
    qs = c[:, :, :16] | (c[:, :, 16:] << 4)  # llama.cpp: weight j in the low nibble of byte j, j + 16 in the high
    assert coded.zeros is not None
    zeros = coded.zeros.numpy()
    if (zeros == 8).all():
        return np.concatenate([d, qs], axis=2).reshape(out_f, -1), "Q4_0", True
    m = -zeros.astype(np.float32) * coded.scales.numpy()
    exact = bool((m.astype(np.float16).astype(np.float32) == m).all())
    return np.concatenate([d, _f16_bytes(m), qs], axis=2).reshape(out_f, -1), "Q4_1", exact


def gguf_carried_blocks(carried: Carried, hf_names: list[str]) -> tuple[dict[str, tuple[np.ndarray, str]], str]:
    """The llama.cpp blocks of every tensor in ``hf_names`` that has codes (a tied embedding is written from the
    output layer's codes), and a line for the manifest's notes.

    Raises:
        InvalidInputError: see :func:`gguf_blocks`.
    """
    out: dict[str, tuple[np.ndarray, str]] = {}
    types: dict[str, int] = {}
    inexact = []
    for hf_name in hf_names:
        key = "lm_head.weight" if carried.tied and hf_name == carried.tied else hf_name
        if key not in carried.weights:
            continue
        data, kind, exact = gguf_blocks(carried.weights[key], key)
        out[hf_name] = (data, kind)
        types[kind] = types.get(kind, 0) + 1
        if not exact:
            inexact.append(hf_name)
    note = (f"carried the checkpoint's {carried.scheme['name']} codes: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(types.items()))
            + ("; bit-exact" if not inexact else
               f"; not bit-exact for {len(inexact)} (Q4_1 minimum rounded to float16, or W8A8 rows re-blocked)"))
    return out, note


# ---------------------------------------------------------------------------------------------------- ONNX


def _key(a: np.ndarray) -> tuple[tuple[int, ...], str]:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, hashlib.sha256(a.tobytes()).hexdigest()


def _blocks(coded: CodedWeight) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """``(bits, block, codes uint8 [out, blocks * block], scales float32 [out, blocks], zeros uint8 [out, blocks])``
    in MatMulNBits' terms (padded columns hold the zero point, so they dequantize to 0)."""
    out_f, in_f = coded.shape
    if coded.format == "fp8":
        raise InvalidInputError("onnxruntime has no FP8 MatMul on CPU; an fp8 checkpoint exports with --quant none "
                                "(its dequantized weights) or to a GPU runtime")
    block = coded.group if coded.group in (16, 32, 64, 128, 256) else GGUF_BLOCK
    nb = -(-in_f // block)
    if coded.format == "int4":
        assert coded.zeros is not None
        bits, codes, zeros = 4, coded.codes.numpy(), coded.zeros.numpy()
        scales = coded.scales.numpy()
    else:
        bits = 8
        codes = (coded.codes.numpy().astype(np.int16) + 128).astype(np.uint8)
        scales = coded.scales.numpy()
        if coded.group != block:  # one scale per row, repeated over the blocks (exact)
            scales = np.repeat(scales[:, :1], nb, axis=1)
        zeros = np.full((out_f, nb), 128, np.uint8)
    padded = np.repeat(zeros, block, axis=1)[:, :nb * block].copy()
    padded[:, :in_f] = codes
    return bits, block, padded, np.ascontiguousarray(scales, dtype=np.float32), zeros


def _pack4(x: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte along the last axis, the even one in the low nibble (odd length padded with 0)."""
    if x.shape[-1] % 2:
        x = np.concatenate([x, np.zeros((*x.shape[:-1], 1), np.uint8)], axis=-1)
    return (x[..., 0::2] | (x[..., 1::2] << 4)).astype(np.uint8)


def carry_into_onnx(proto: Any, carried: Carried, accuracy_level: int) -> dict[str, Any]:
    """Replace, in place, the float MatMul/Gather weights of ``proto`` that are quantized weights by
    MatMulNBits/GatherBlockQuantized on their stored codes.

    Returns:
        what was carried (``matmuls``, ``gathers``) and the quantized weights no graph weight matched.

    Raises:
        InvalidInputError: a quantized weight that is in no MatMul (the graph is not the checkpoint's).
    """
    from onnx import helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    matched = _matched(g, carried)
    new_nodes, drop, done = [], set(), {"matmuls": 0, "gathers": 0}
    carried_names: set[str] = set()
    for node in g.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else (
            node.input[0] if node.op_type == "Gather" else None)
        name = matched.get(weight) if weight else None
        if name is None or (node.op_type == "Gather" and tuple(inits[weight].dims) != carried.weights[name].shape):
            new_nodes.append(node)
            continue
        if node.op_type == "MatMul":
            new_nodes.append(_matmul_nbits(g, node, weight, carried.weights[name], accuracy_level))
            done["matmuls"] += 1
        else:
            new_nodes.append(_gather_blockq(g, node, weight, carried.weights[name]))
            done["gathers"] += 1
        drop.add(weight)
        carried_names.add(name)
    missing = sorted(set(carried.weights) - carried_names)
    if missing:
        raise InvalidInputError(f"{len(missing)} quantized weight(s) are in no matrix product of the exported graph "
                                f"(first: {missing[0]}); the graph is not this checkpoint's")
    del g.node[:]
    g.node.extend(new_nodes)
    still_used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name not in drop or t.name in still_used]
    del g.initializer[:]
    g.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done


def _matched(g: Any, carried: Carried) -> dict[str, str]:
    """The graph's float weight initializers that are a carried weight (as a MatMul's transposed ``B``, or a tied
    embedding's gather table), by initializer name -> the carried weight's name."""
    from onnx import TensorProto, numpy_helper

    by_key: dict[tuple[tuple[int, ...], str], str] = {}
    for name, coded in carried.weights.items():
        w = coded.dequantize().numpy()
        by_key[_key(w.T)] = name
        if name == "lm_head.weight" and carried.tied:
            by_key[_key(w)] = name
    matched: dict[str, str] = {}
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT and len(t.dims) == 2:
            hit = by_key.get(_key(numpy_helper.to_array(t)))
            if hit:
                matched[t.name] = hit
    return matched


def _matmul_nbits(g: Any, node: Any, weight: str, coded: CodedWeight, accuracy_level: int) -> Any:
    """A MatMulNBits node on ``coded``'s blocks for the MatMul ``node`` (its initializers added to ``g``)."""
    from onnx import helper, numpy_helper

    bits, block, codes, scales, zeros = _blocks(coded)
    out_f, in_f = coded.shape
    nb, p = scales.shape[1], f"{weight}_carried"
    b = _pack4(codes).reshape(out_f, nb, block // 2) if bits == 4 else codes.reshape(out_f, nb, block)
    zp = _pack4(zeros) if bits == 4 else zeros
    g.initializer.extend([numpy_helper.from_array(b, p + "_B"), numpy_helper.from_array(scales, p + "_scales"),
                          numpy_helper.from_array(zp, p + "_zeros")])
    return helper.make_node("MatMulNBits", [node.input[0], p + "_B", p + "_scales", p + "_zeros"], list(node.output),
                            name=(node.name or p) + "_nbits", domain="com.microsoft", K=in_f, N=out_f, bits=bits,
                            block_size=block, accuracy_level=accuracy_level)


def _gather_blockq(g: Any, node: Any, weight: str, coded: CodedWeight) -> Any:
    """A GatherBlockQuantized node on ``coded``'s blocks for the embedding Gather ``node`` (a tied table)."""
    from onnx import TensorProto, helper, numpy_helper

    bits, block, codes, scales, zeros = _blocks(coded)
    out_f, in_f = coded.shape
    p = f"{weight}_carried"
    data_codes = codes[:, :in_f]
    if bits == 4:
        data = helper.make_tensor(p + "_data", TensorProto.UINT4, [out_f, in_f],
                                  _pack4(data_codes.reshape(-1)).tobytes(), raw=True)
        zp = helper.make_tensor(p + "_zeros", TensorProto.UINT4, list(zeros.shape),
                                _pack4(zeros.reshape(-1)).tobytes(), raw=True)
        extra = {}
    else:
        data = numpy_helper.from_array(data_codes, p + "_data")
        zp = numpy_helper.from_array(zeros, p + "_zeros")
        extra = {"bits": 8}
    g.initializer.extend([data, numpy_helper.from_array(scales, p + "_scales"), zp])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return helper.make_node("GatherBlockQuantized", [p + "_data", node.input[1], p + "_scales", p + "_zeros"],
                            list(node.output), name=(node.name or p) + "_blockq", domain="com.microsoft",
                            gather_axis=axis, quantize_axis=1, block_size=block, **extra)
