"""Quantization schemes: exact formats, SQNR floors, calibrated rounding, stored codes, the CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from supertiny.cli import main
from supertiny.errors import InvalidInputError
from supertiny.stages.quantize.apply import (
    FP8,
    W4A16,
    W8A8,
    int4_bits,
    quantize_,
    read_codes,
    save_codes,
    scheme_from_name,
)
from supertiny.stages.quantize.number_formats import (
    fake_fp8,
    fake_int8_rows,
    group_slices,
    int8_groups_dequant,
    pack_int4,
    quantize_fp8,
    quantize_int4,
    quantize_int8_groups,
    quantize_int8_rows,
    round_fp8_e4m3,
    to_fp8_e4m3,
    unpack_int4,
)

from conftest import build_tiny_model, write_color_task

# ---------------------------------------------------------------- formats, by hand


def test_int4_asymmetric_codes_by_hand():
    # range [-1, 2.75] -> scale 3.75 / 15 = 0.25 (exact), zero = round(1 / 0.25) = 4
    w = torch.tensor([[-1.0, 0.0, 0.375, 2.75, 0.125, -0.5]])
    q = quantize_int4(w, group=8, symmetric=False)
    assert q.scales.tolist() == [[0.25]] and q.zeros.tolist() == [[4]]
    # 0.375 / 0.25 = 1.5 and 0.125 / 0.25 = 0.5 round to even (2 and 0)
    assert q.codes.tolist() == [[0, 4, 6, 15, 4, 2]]
    assert q.dequantize().tolist() == [[-1.0, 0.0, 0.5, 2.75, 0.0, -0.5]]


def test_int4_symmetric_codes_by_hand():
    # the value of largest magnitude lands on code 0: scale = m / -8 (negative when m > 0)
    w = torch.tensor([[0.5, -2.0, 1.0, 0.3], [2.0, -1.0, 0.25, 0.0]])
    q = quantize_int4(w, group=4, symmetric=True)
    assert q.scales.tolist() == [[0.25], [-0.25]] and q.zeros.tolist() == [[8], [8]]
    assert q.codes.tolist() == [[10, 0, 12, 9], [0, 12, 7, 8]]
    assert q.dequantize().tolist() == [[0.5, -2.0, 1.0, 0.25], [2.0, -1.0, 0.25, 0.0]]


def test_group_scales_are_float16_values():
    # 1/3 has no float16 value: the scale is rounded first (0.33325195...), the codes are taken with the rounded one
    w = torch.tensor([[-8 / 3, 1.0, 0.5, 0.0]])
    q = quantize_int4(w, group=4, symmetric=True)
    s = torch.tensor(1 / 3).half().float().item()
    assert q.scales.tolist() == [[s]] and q.codes.tolist() == [[0, 11, 10, 8]]
    torch.manual_seed(0)
    for sym in (True, False):
        sc = quantize_int4(torch.randn(16, 64), 32, sym).scales
        assert torch.equal(sc, sc.half().float())


def test_int8_groups_by_hand():
    # group 2: [2.54, -1.0] -> scale 0.02, [0.0, 0.0] -> scale 1 (all zero)
    w = torch.tensor([[2.54, -1.0, 0.0, 0.0]])
    codes, scales = quantize_int8_groups(w, 2)
    s = torch.tensor(0.02).half().float().item()
    assert scales.tolist() == [[s, 1.0]]
    assert codes.tolist() == [[round(2.54 / s), round(-1.0 / s), 0, 0]] and codes.dtype == torch.int8
    assert int8_groups_dequant(codes, scales, 2).tolist() == [[codes[0, 0].item() * s, codes[0, 1].item() * s,
                                                               0.0, 0.0]]


def test_w4a16_int8_head_stores_q8_0_style_codes(tmp_path):
    model = build_tiny_model(seed=3)
    ref = model.lm_head.weight.detach().clone()
    result = quantize_(model, W4A16(group=32, symmetric=True, head_bits=8))
    rows = {r["name"]: r for r in result.layers}
    assert rows["lm_head.weight"]["format"] == "int8" and rows["lm_head.weight"]["bits_per_weight"] == 8.5
    assert rows["model.layers.0.mlp.down_proj.weight"]["format"] == "int4"
    assert result.codes["lm_head.weight.codes"].dtype == torch.int8
    # the tied embedding reads the same 8-bit rows; 8 bits sit far closer to float than 4
    assert torch.equal(model.model.embed_tokens.weight, model.lm_head.weight)
    err8 = (model.lm_head.weight - ref).abs().max()
    err4 = (quantize_int4(ref, 32, True).dequantize() - ref).abs().max()
    assert err8 * 8 < err4
    save_codes(result, tmp_path)
    _, weights = read_codes(tmp_path)
    assert torch.equal(weights["lm_head.weight"], model.lm_head.weight.detach())
    with pytest.raises(InvalidInputError, match="head_bits applies to a quantized output layer"):
        W4A16(head=False, head_bits=8)
    with pytest.raises(InvalidInputError, match="head_bits must be one of 4, 8"):
        W4A16(head_bits=6)


def test_int4_short_last_group_and_zero_group():
    assert group_slices(6, 4) == [slice(0, 4), slice(4, 6)]
    w = torch.tensor([[0.0, 0.0, 0.0, 0.0, -1.0, 2.75]])
    q = quantize_int4(w, group=4, symmetric=False)
    # an all-zero group gets scale 1 and its codes sit on the zero point; the short group has its own range
    assert q.scales.tolist() == [[1.0, 0.25]] and q.zeros.tolist() == [[0, 4]]
    assert q.dequantize().tolist() == w.tolist()


def test_pack_int4_nibble_order_and_round_trip():
    codes = torch.tensor([[1, 2, 3], [15, 0, 7]], dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.tolist() == [[0x21, 0x03], [0x0F, 0x07]]  # column 2j low nibble, 2j+1 high
    assert torch.equal(unpack_int4(packed, 3), codes)
    big = torch.randint(0, 16, (5, 64), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(big), 64), big)


def test_int8_weight_per_channel_and_activation_per_token():
    w = torch.tensor([[127.0, -3.4, 0.5, 1.5], [0.0, 0.0, 0.0, 0.0]])
    codes, scale = quantize_int8_rows(w)
    assert scale.tolist() == [[1.0], [1.0]]  # absmax / 127; an all-zero row gets scale 1
    assert codes.tolist() == [[127, -3, 0, 2], [0, 0, 0, 0]] and codes.dtype == torch.int8
    x = torch.tensor([[254.0, 3.0, -5.0], [-12.7, 0.06, 0.0]])
    # token 0: scale 2, 3/2 = 1.5 -> 2, -5/2 = -2.5 -> -2 (ties to even); token 1: scale 0.1
    assert fake_int8_rows(x)[0].tolist() == [254.0, 4.0, -4.0]
    c1, s1 = quantize_int8_rows(x[1:])
    assert c1.tolist() == [[-127, 1, 0]] and s1.item() == pytest.approx(0.1)


def test_fp8_e4m3_rounding_by_hand():
    x = torch.tensor([500.0, 464.0, 448.0, -300.0, 17.0, 19.0, 1.0625, 1.1875, 2.0**-9, 2.0**-10, 3 * 2.0**-10,
                      0.9 * 2.0**-9, 2.0**-6 * 1.0625, 0.0])
    expected = [448.0, 448.0, 448.0, -288.0, 16.0, 20.0, 1.0, 1.25, 2.0**-9, 0.0, 2.0**-8,
                2.0**-9, 2.0**-6, 0.0]
    assert round_fp8_e4m3(x).tolist() == expected  # saturation, ties to even, subnormals


def test_fp8_hand_rounding_equals_torch_cast_bit_for_bit():
    assert hasattr(torch, "float8_e4m3fn"), "torch 2.13 has float8_e4m3fn"
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=g) * s for s in (1e-3, 0.05, 1.0, 30.0, 300.0)]
                  + [torch.arange(-2000, 2001) * 2.0**-12, torch.arange(-600, 601, dtype=torch.float32)])
    by_hand = round_fp8_e4m3(x)
    cast = to_fp8_e4m3(x).float()
    assert torch.equal(by_hand.view(torch.int32), cast.view(torch.int32))  # same bits, signs of zero included


def test_fp8_scaled_per_tensor_and_per_channel():
    w = torch.tensor([[896.0, -1.0, 0.0], [4.48, 1.0, -2.24]])
    codes, scale = quantize_fp8(w, per_row=False)
    assert scale.item() == 2.0 and codes.dtype == torch.float8_e4m3fn
    assert (codes.float() * scale)[0].tolist() == [896.0, -1.0, 0.0]
    per_row = fake_fp8(w, per_row=True)
    assert per_row[0].tolist() == [896.0, -1.0, 0.0]
    assert per_row[1, 0].item() == pytest.approx(4.48)  # each row's largest value maps to 448 exactly


# ---------------------------------------------------------------- SQNR floors


def _sqnr(ref: torch.Tensor, approx: torch.Tensor) -> float:
    return 10 * math.log10(float((ref ** 2).sum()) / float(((ref - approx) ** 2).sum()))


@pytest.mark.parametrize("name, floor", [
    ("w4a16-g32-asym", 19.0), ("w4a16-g128-sym", 16.0), ("w8a8", 32.0), ("fp8-tensor", 24.0),
    ("fp8-channel", 25.0),
])
def test_sqnr_floor_of_a_random_linear_layer(name, floor):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(256, 512, generator=g) * 0.02
    x = torch.randn(64, 512, generator=g)
    y = x @ w.T
    if name.startswith("w4a16"):
        group, sym = (32, False) if "g32" in name else (128, True)
        yq = x @ quantize_int4(w, group, sym).dequantize().T
    elif name == "w8a8":
        yq = fake_int8_rows(x) @ fake_int8_rows(w).T
    else:
        per_row = name.endswith("channel")
        yq = fake_fp8(x, per_row) @ fake_fp8(w, per_row).T
    assert _sqnr(y, yq) > floor


def test_bits_per_weight():
    assert int4_bits(64, 32, symmetric=False) == 4 + 2 * 20 / 64
    assert int4_bits(576, 128, symmetric=True) == 4 + 5 * 16 / 576  # 4.5 groups round up to 5


# ---------------------------------------------------------------- calibrated rounding


def _outlier_model():
    """A tiny model whose norms make a few input channels large, as trained LLMs have."""
    model = build_tiny_model(seed=1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[:4] *= 8
            layer.post_attention_layernorm.weight[:4] *= 8
    return model


def _windows():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 400, (64,), generator=g).tolist() for _ in range(8)]


def _logits(model, windows):
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([w])).logits[0] for w in windows])


def test_gptq_and_awq_beat_rtn_on_the_calibration_output():
    base, windows = _outlier_model(), _windows()
    ref = _logits(base, windows)
    err = {}
    for method in ("rtn", "gptq", "awq"):
        m = copy.deepcopy(base)
        result = quantize_(m, W4A16(group=32, method=method, head=False), windows)
        err[method] = float(((_logits(m, windows) - ref) ** 2).mean())
        if method == "awq":
            assert any(r["awq_alpha"] > 0 for r in result.layers)
    assert err["gptq"] < 0.8 * err["rtn"] and err["awq"] < 0.9 * err["rtn"], err


def test_awq_keeps_the_function_before_rounding():
    """Folding the scales into norms and v/up rows changes nothing but where the rounding happens."""
    from supertiny.stages.calibration import calibrate
    from supertiny.stages.quantize.apply import QuantResult, targets_of
    from supertiny.stages.quantize.awq import apply_awq_
    from supertiny.stages.quantize.gptq import InputStatistic

    base, windows = _outlier_model(), _windows()
    m = copy.deepcopy(base)
    paths = [p for p, _ in targets_of(m, head=False)]
    (stats,) = calibrate(m, windows, [InputStatistic(paths)])
    assert stats[paths[0]] is stats[paths[1]]  # q and k read the same tensor: one set of sums
    with torch.no_grad():
        alphas, _ = apply_awq_(m, W4A16(group=32, method="awq"), stats, QuantResult(W4A16()))
    assert any(a > 0 for a in alphas.values())
    torch.testing.assert_close(_logits(m, windows), _logits(base, windows), rtol=1e-4, atol=1e-4)


def test_calibrated_methods_need_windows():
    with pytest.raises(InvalidInputError, match="needs calibration windows"):
        quantize_(build_tiny_model(), W4A16(method="gptq"))


# ---------------------------------------------------------------- stored codes


@pytest.mark.parametrize("scheme", [W4A16(group=32, method="gptq"), W4A16(group=128, symmetric=True), W8A8(),
                                    FP8(), FP8(granularity="channel")], ids=str)
def test_stored_codes_reproduce_the_weights_exactly(tmp_path, scheme):
    model = build_tiny_model(seed=2)
    result = quantize_(model, scheme, _windows())
    save_codes(result, tmp_path)
    meta, weights = read_codes(tmp_path)
    assert meta["scheme"]["name"] == scheme.name and meta["tied"] == "model.embed_tokens.weight"
    params = dict(model.named_parameters(remove_duplicate=False))
    assert len(weights) == 2 * 7 + 1  # every decoder Linear and the tied output layer
    for name, w in weights.items():
        assert torch.equal(w, params[name].detach()), name
    assert torch.equal(params["model.embed_tokens.weight"], params["lm_head.weight"])


def test_scheme_registry_errors():
    with pytest.raises(InvalidInputError, match="unknown quantization scheme 'int3'; known: w4a16, w8a8, fp8"):
        scheme_from_name("int3")
    with pytest.raises(InvalidInputError, match="w8a8 takes no group"):
        scheme_from_name("w8a8", group=32)
    with pytest.raises(InvalidInputError, match="group must be one of 32, 64, 128"):
        W4A16(group=48)

    class Int3:
        pass

    with pytest.raises(InvalidInputError, match="no quantization handler for Int3; known: W4A16, W8A8, FP8"):
        quantize_(build_tiny_model(), Int3())  # type: ignore[arg-type]


# ---------------------------------------------------------------- the CLI


def test_cli_quantize_writes_a_checkpoint_that_eval_and_verify_accept(make_tiny_dir, tmp_path):
    src, out = make_tiny_dir(), tmp_path / "q"
    runner = CliRunner()
    r = runner.invoke(main, ["quantize", str(src), str(out), "--scheme", "w4a16", "--group", "32", "--method",
                             "awq", "--calib-tokens", "256", "--eval-tokens", "256", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout[r.stdout.index("{"):])
    assert m["stage"] == "quantize" and m["details"]["kernel"] == "simulated"
    assert m["details"]["scheme"] == {"name": "w4a16", "group": 32, "symmetric": False, "method": "awq",
                                      "head": True, "head_bits": 4, "max_mb": None, "damp": 0.01,
                                      "awq_grid": 20}
    assert m["details"]["calibration"]["tokens"] == 256
    q = m["quality"]
    assert q["tokens"] == 256 and 0 <= q["kl_mean"] and 0 < q["top1_agreement"] <= 1
    assert q["perplexity_ratio"] == pytest.approx(q["perplexity"] / q["reference_perplexity"])
    assert "quantization/codes.safetensors" in m["files"]
    # the checkpoint's weights are the codes, dequantized
    _, weights = read_codes(out)
    saved = load_file(str(out / "model.safetensors"))
    assert torch.equal(weights["model.layers.1.mlp.down_proj.weight"], saved["model.layers.1.mlp.down_proj.weight"])
    assert torch.equal(weights["lm_head.weight"], saved["model.embed_tokens.weight"])
    r = runner.invoke(main, ["eval", str(out), "--no-generate", "--max-tokens", "200"])
    assert r.exit_code == 0, r.output
    assert "quantize v1" in r.output and "perplexity" in r.output
    assert runner.invoke(main, ["verify", str(out)]).exit_code == 0


def test_cli_quantize_w8a8_on_task_records(make_tiny_dir, tmp_path):
    write_color_task(tmp_path, records=12, dev=2)
    src, out = make_tiny_dir(), tmp_path / "q8"
    r = CliRunner().invoke(main, ["quantize", str(src), str(out), "--scheme", "w8a8", "--task",
                                  str(tmp_path / "task.toml"), "--data", str(tmp_path / "data.jsonl"),
                                  "--eval-tokens", "128", "--task-eval", str(tmp_path / "data.jsonl"),
                                  "--task-limit", "3", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout[r.stdout.index("{"):])
    # the task scored on both models, the unquantized one exactly as `eval --task` scores it
    from supertiny.stages.eval import evaluate_task_model  # noqa: PLC0415

    t = m["quality"]["task"]
    ref = evaluate_task_model(str(src), str(tmp_path / "task.toml"), str(tmp_path / "data.jsonl"), limit=3)
    assert t["records"] == 3 and t["prompt"] == "full" and t["reference_score"] == ref.evaluation.score.task_score
    assert 0 <= t["score"] <= 1
    assert m["details"]["calibration"]["task"] == "tiny-colors"
    assert m["details"]["calibration"]["prompt"] == "full"  # an untrained model: the task's full prompt
    assert m["quality"]["activations_quantized"] is True and m["quality"]["text"] == "bundled corpus"
    assert any("round to nearest" in n for n in m["notes"])


@pytest.mark.parametrize("args, message", [
    (["--scheme", "w5"], "Invalid value for '--scheme'"),
    (["--scheme", "w8a8", "--group", "32"], "error: w8a8 takes no group"),
    (["--scheme", "fp8", "--method", "gptq"], "error: fp8 rounds to nearest only"),
    (["--scheme", "fp8", "--symmetric"], "error: fp8 takes no symmetric"),
    (["--scheme", "w4a16", "--group", "48"], "Invalid value for '--group'"),
    (["--scheme", "w4a16", "--task", "factory-tickets"], "error: --task and --data go together"),
    (["--scheme", "w4a16", "--task-eval", "x.jsonl"], "error: --task-eval scores a task: give --task"),
])
def test_cli_bad_scheme_arguments_are_one_line_errors(make_tiny_dir, tmp_path, args, message):
    r = CliRunner().invoke(main, ["quantize", str(make_tiny_dir()), str(tmp_path / "o"), *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    if message.startswith("error:"):
        assert r.output.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- size-budget allocation


def test_size_budget_lifts_the_units_that_save_most_kl_per_byte():
    base = quantize_(build_tiny_model(seed=4), W4A16(group=32, symmetric=True))
    all4 = base.details()["size_equivalent_bytes"]
    one_layer = 7 * 64 * 128 // 2 + 64 * 64  # roughly: a tiny layer's weights, 4 more bits each (upper bound)
    budget_mb = (all4 + one_layer) / 1e6
    model = build_tiny_model(seed=4)
    result = quantize_(model, W4A16(group=32, symmetric=True, max_mb=budget_mb), _windows())
    alloc = result.details()["allocation"]
    rows = {r["unit"]: r for r in alloc["units"]}
    assert set(rows) == {"layer 0", "layer 1", "output layer"}
    assert alloc["all_int4_bytes"] == all4
    # the best set within the budget: recompute it by brute force over every subset of the measured rows
    import itertools  # noqa: PLC0415

    from supertiny.stages.quantize.allocation import cost_step  # noqa: PLC0415

    room = int(budget_mb * 1e6 - alloc["all_int4_bytes"])
    step = cost_step(room)
    fits = [c for k in range(4) for c in itertools.combinations(rows.values(), k)
            if sum(-(-r["extra_bytes"] // step) for r in c) <= room // step]
    best = max(fits, key=lambda c: sum(r["kl_saved"] for r in c))
    expected = sorted(r["unit"] for r in best)
    assert sorted(alloc["int8_units"]) == expected and expected
    assert result.details()["size_equivalent_bytes"] <= budget_mb * 1e6
    formats = {r["name"]: r["format"] for r in result.layers}
    for unit in expected:
        prefix = "lm_head" if unit == "output layer" else f"model.layers.{unit.split()[1]}."
        assert {f for n, f in formats.items() if n.startswith(prefix)} == {"int8"}
    assert sorted(formats.values()).count("int4") == 15 - sum(7 if u != "output layer" else 1 for u in expected)
    assert all(r["kl_int8"] < alloc["kl_all_int4"] for r in rows.values() if r["unit"] in expected)
    # the model holds exactly what the codes say
    params = dict(model.named_parameters(remove_duplicate=False))
    from supertiny.stages.quantize.codes import CodedWeight  # noqa: PLC0415

    for r in result.layers:
        n = r["name"]
        if r["format"] == "int8":
            c = CodedWeight("int8", result.codes[f"{n}.codes"], result.codes[f"{n}.scales"], None, 32)
            assert torch.equal(c.dequantize(), params[n].detach())
    with pytest.raises(InvalidInputError, match="below the all-int4 size"):
        quantize_(build_tiny_model(seed=4), W4A16(group=32, max_mb=all4 / 2e6), _windows())
    with pytest.raises(InvalidInputError, match="size budget .* needs calibration windows"):
        quantize_(build_tiny_model(seed=4), W4A16(max_mb=1.0))
