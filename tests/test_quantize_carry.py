"""Quantized checkpoints carried into GGUF and ONNX: the exported weights are the stored codes, not re-quantized."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supertiny.errors import InvalidInputError
from supertiny.stages.export.carry import gguf_blocks
from supertiny.stages.quantize.apply import W4A16, W8A8
from supertiny.stages.quantize.codes import CodedWeight, read_coded
from supertiny.stages.quantize.number_formats import quantize_int4, quantize_int8_groups, quantize_int8_rows
from supertiny.stages.quantize.stage import QuantizeConfig, quantize

gguf = pytest.importorskip("gguf")


def _coded4(w: torch.Tensor, group: int, symmetric: bool) -> CodedWeight:
    q = quantize_int4(w, group, symmetric)
    return CodedWeight("int4", q.codes, q.scales, q.zeros, group)


def _gguf_dequant(data: np.ndarray, kind: str, shape: tuple[int, int]) -> np.ndarray:
    t = getattr(gguf.GGMLQuantizationType, kind)
    return gguf.quants.dequantize(data, t).reshape(shape)


# ---------------------------------------------------------------- GGUF blocks, by format


def test_symmetric_int4_group_32_is_q4_0_bit_for_bit():
    w = torch.randn(8, 96)
    coded = _coded4(w, 32, symmetric=True)
    data, kind, exact = gguf_blocks(coded, "w")
    assert (kind, exact) == ("Q4_0", True) and data.shape == (8, 3 * 18)  # 3 blocks of 2 + 16 bytes
    assert np.array_equal(_gguf_dequant(data, kind, (8, 96)), coded.dequantize().numpy())
    # first block by hand: scale as float16, then weight j in the low nibble and j + 16 in the high one
    c = coded.codes[0, :32].numpy()
    assert data[0, :2].view(np.float16)[0] == np.float16(coded.scales[0, 0].item())
    assert list(data[0, 2:18]) == [int(c[j]) | int(c[j + 16]) << 4 for j in range(16)]


def test_asymmetric_int4_is_q4_1_within_the_float16_minimum():
    w = torch.randn(8, 64) + 0.3
    coded = _coded4(w, 32, symmetric=False)
    data, kind, _exact = gguf_blocks(coded, "w")
    assert kind == "Q4_1" and data.shape == (8, 2 * 20)
    ref = coded.dequantize().numpy()
    # only m = -zero * scale is rounded (to float16): at most half a float16 ulp of m per weight
    m_err = np.abs(-coded.zeros.numpy() * coded.scales.numpy()) * 2.0 ** -11
    assert (np.abs(_gguf_dequant(data, kind, (8, 64)) - ref) <= np.repeat(m_err, 32, axis=1) + 1e-7).all()


def test_int8_groups_are_q8_0_and_w8a8_rows_are_reblocked():
    # seeded: unseeded, the weights depended on the tests run before (gguf-py rounds with the float32 step and
    # stores it as float16, so a rare draw lands just past 0.51 of a step; seen when this file ran after others)
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    codes, scales = quantize_int8_groups(w, 32)
    coded = CodedWeight("int8", codes, scales, None, 32)
    data, kind, exact = gguf_blocks(coded, "w")
    assert (kind, exact) == ("Q8_0", True)
    assert np.array_equal(_gguf_dequant(data, kind, (4, 64)), coded.dequantize().numpy())
    rows, scale = quantize_int8_rows(w)
    coded = CodedWeight("int8", rows, scale, None, 64)
    data, kind, exact = gguf_blocks(coded, "w")
    assert (kind, exact) == ("Q8_0", False)
    ref = coded.dequantize().numpy()
    step = np.abs(ref).reshape(4, 2, 32).max(axis=2) / 127  # each Q8_0 block's own step
    assert (np.abs(_gguf_dequant(data, kind, (4, 64)) - ref) <= np.repeat(step, 32, axis=1) * 0.51).all()


@pytest.mark.parametrize("coded, message", [
    (CodedWeight("fp8", torch.zeros(2, 32), torch.ones(()), None, 32), "llama.cpp has no FP8 type"),
    (_coded4(torch.randn(2, 128), 128, True), "int4 groups of 128 have no llama.cpp type .*--group 32"),
    (_coded4(torch.randn(2, 48), 32, True), "rows of 48 weights do not split"),
])
def test_formats_llama_cpp_lacks_are_one_line_errors(coded, message):
    with pytest.raises(InvalidInputError, match=message):
        gguf_blocks(coded, "w")


# ---------------------------------------------------------------- whole checkpoints


@pytest.fixture
def quantized_dir(make_tiny_dir, tmp_path):
    def make(scheme, name="q"):
        out = tmp_path / name
        quantize(make_tiny_dir(), out, QuantizeConfig.for_scheme(scheme, calib_tokens=256, eval_tokens=128))
        return out
    return make


def test_gguf_export_writes_the_stored_codes(quantized_dir, tmp_path):
    pytest.importorskip("llama_cpp")
    from supertiny.gguf_file import GGUFFile
    from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf

    src = quantized_dir(W4A16(group=32, symmetric=True, method="gptq", head_bits=8))
    m = export_gguf(str(src), tmp_path / "q.gguf", GGUFExportConfig(verify_tokens=64))
    assert m.settings["quant"] == "CARRY" and m.quality["passed"]
    assert any("carried the checkpoint's w4a16 codes: Q4_0 x14, Q8_0 x1; bit-exact" in n for n in m.notes)
    _, coded = read_coded(src)
    tensors = {t.name: t for t in GGUFFile(tmp_path / "q.gguf").tensors}
    assert tensors["token_embd.weight"].tensor_type.name == "Q8_0"  # the tied output layer, in 8 bits
    down = tensors["blk.1.ffn_down.weight"]
    assert down.tensor_type.name == "Q4_0"
    got = gguf.quants.dequantize(np.asarray(down.data), down.tensor_type)
    assert np.array_equal(got, coded["model.layers.1.mlp.down_proj.weight"].dequantize().numpy())


def test_onnx_export_carries_scales_and_reproduces_the_checkpoint(quantized_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from supertiny.evaluate import tokenize_text
    from supertiny.models import load_model
    from supertiny.runtime.engines.onnxrt import OnnxEngine
    from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx

    src = quantized_dir(W4A16(group=32, method="awq"))
    carried = export_onnx(str(src), tmp_path / "c", OnnxExportConfig(accuracy_level=1, verify_tokens=64))
    assert carried.settings["quant"] == "carry" and carried.quality["passed"]
    d = carried.details
    assert d["carried"]["matmuls"] == 15 and d["carried"]["gathers"] == 1  # 7 Linears x 2 layers + head; embedding
    assert d["weight_matmuls_float"] == 0 and d["operators"]["GatherBlockQuantized"] == 1
    # onnxruntime's own int4 re-quantizes the dequantized weights: further from the checkpoint than the carried codes
    rtn = export_onnx(str(src), tmp_path / "r", OnnxExportConfig(quant="int4", accuracy_level=1, verify=False))
    assert any("codes are not carried: quant int4" in n for n in rtn.notes)
    lm = load_model(str(src))
    ids = tokenize_text(lm.tokenizer, "The quick brown fox jumps over the lazy dog. " * 6)[:48]
    with torch.no_grad():
        ref = lm.model(torch.tensor([ids])).logits[0].numpy()
    carried_diff = np.abs(OnnxEngine(tmp_path / "c").logits(ids) - ref).max()
    rtn_diff = np.abs(OnnxEngine(tmp_path / "r").logits(ids) - ref).max()
    assert carried_diff < 1e-3, carried_diff  # float32 kernels on the same weights: summation order only
    assert rtn_diff > 10 * carried_diff


def test_onnx_export_carries_w8a8_as_8_bit_matmuls(quantized_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx

    src = quantized_dir(W8A8())
    m = export_onnx(str(src), tmp_path / "c", OnnxExportConfig(verify_tokens=64))
    assert m.quality["passed"] and m.details["carried"]["weights"] == {"int8": 15}
    assert m.details["operators"]["MatMulNBits"] == 15


def test_carry_without_codes_is_a_one_line_error(make_tiny_dir, tmp_path):
    from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf

    with pytest.raises(InvalidInputError, match="stores no quantization codes to carry"):
        export_gguf(str(make_tiny_dir()), tmp_path / "x.gguf", GGUFExportConfig(quant="carry"))
