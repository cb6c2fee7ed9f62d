"""The command line through click's CliRunner: output, JSON, and one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from supertiny.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def assert_one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert pattern in lines[0]


def test_version_and_help():
    assert run("--version").output.startswith("supertiny, version ")
    out = run("--help").output
    assert "inspect" in out and "eval" in out


def test_inspect_hf_dir(make_tiny_dir):
    path = make_tiny_dir()
    text = run("inspect", path)
    assert text.exit_code == 0 and "architecture" in text.output and "llama" in text.output
    data = json.loads(run("inspect", path, "--json").output)
    assert data["layers"] == 2 and data["format"] == "hf" and data["tied_embeddings"] is True


def test_eval_tiny_model_json(make_tiny_dir, tmp_path):
    path = make_tiny_dir()
    text = tmp_path / "t.txt"
    text.write_text("Alice was beginning to get very tired of sitting by her sister on the bank. " * 8)
    result = run("eval", path, "--text", text, "--window", 64, "--stride", 32, "--json",
                 "--prompt", "Hi", "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["score"]["tokens_scored"] == data["score"]["tokens"] - 1
    assert data["score"]["perplexity"] > 1
    assert data["generations"][0]["prompt"] == "Hi"
    assert data["agreement"] is None


def test_eval_with_teacher(make_tiny_dir, tmp_path):
    student, teacher = make_tiny_dir(seed=0), make_tiny_dir(seed=1)
    result = run("eval", student, "--teacher", teacher, "--max-tokens", 200, "--no-generate", "--window", 64,
                 "--stride", 32)
    assert result.exit_code == 0, result.output
    assert "agreement" in result.output and "KL(teacher||student)" in result.output
    same = run("eval", student, "--teacher", student, "--max-tokens", 100, "--no-generate", "--json")
    data = json.loads(same.output[same.output.index("{"):])
    assert data["agreement"]["top1_agreement"] == 1.0


def test_eval_uses_the_bundled_corpus_by_default(make_tiny_dir):
    result = run("eval", make_tiny_dir(), "--max-tokens", 64, "--no-generate", "--json")
    data = json.loads(result.output[result.output.index("{"):])
    assert data["text"].endswith("eval_corpus.txt") and data["score"]["tokens"] == 64


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["inspect", "/no/such/model"], "no such file or directory"),
        (["eval", "/no/such/model"], "no such file or directory"),
        (["inspect", "{bin_dir}"], "pickle"),
        (["inspect", "{not_gguf}"], "expected a GGUF file"),
        (["inspect", "{empty_gguf}"], "0-byte"),
        (["eval", "{model}", "--window", "8", "--stride", "9"], "stride"),
        (["eval", "{model}", "--text", "/no/such.txt"], "no such text file"),
        (["eval", "{model}", "--max-tokens", "1"], "at least 2"),
        (["eval", "{model}", "--teacher", "/no/teacher"], "no such file or directory"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(make_tiny_dir, tmp_path, args, pattern):
    bin_dir = make_tiny_dir(name="pickled")
    (bin_dir / "model.safetensors").unlink()
    (bin_dir / "pytorch_model.bin").write_bytes(b"not really a pickle")
    (tmp_path / "not.gguf").write_bytes(b"hello, world")
    (tmp_path / "empty.gguf").write_bytes(b"")
    paths = dict(bin_dir=bin_dir, not_gguf=tmp_path / "not.gguf", empty_gguf=tmp_path / "empty.gguf",
                 model=make_tiny_dir())
    assert_one_line_error(run(*[a.format(**paths) for a in args]), pattern)


def test_click_usage_errors_exit_2():
    result = run("eval")
    assert result.exit_code == 2 and "Missing argument" in result.output


def test_export_gguf_then_eval_it_in_llama_cpp(make_tiny_dir, tmp_path):
    src = make_tiny_dir()
    out = tmp_path / "m.gguf"
    result = run("export", "gguf", src, out, "--dtype", "f32", "--verify-tokens", 128)
    assert result.exit_code == 0, result.output
    assert "parity      PASS" in result.output and out.is_file() and (tmp_path / "m.gguf.supertiny.json").is_file()
    on_cpp = run("eval", out, "--max-tokens", 200, "--no-generate", "--json")
    on_torch = run("eval", src, "--max-tokens", 200, "--no-generate", "--json")
    cpp = json.loads(on_cpp.output[on_cpp.output.index("{"):])
    ref = json.loads(on_torch.output[on_torch.output.index("{"):])
    assert cpp["model"]["backend"] == "llama.cpp" and ref["model"]["backend"] == "torch"
    assert cpp["score"]["perplexity"] == pytest.approx(ref["score"]["perplexity"], rel=1e-3)


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["export", "gguf", "{model}", "{tmp}/m.txt"], "must end in .gguf"),
        (["export", "gguf", "{model}", "{tmp}/m.gguf", "--quant", "Q9"], "unknown quantization"),
        (["export", "gguf", "/no/model", "{tmp}/m.gguf"], "no such file or directory"),
        (["eval", "{model}", "--backend", "llama.cpp"], "runs GGUF files"),
        (["export", "onnx", "{model}", "{tmp}/m.onnx"], "is a directory"),
        (["export", "onnx", "/no/model", "{tmp}/o"], "no such file or directory"),
        (["export", "onnx", "{model}", "{tmp}/no/o"], "parent folder"),
        (["eval", "{model}", "--backend", "onnxruntime"], "runs ONNX exports"),
        (["eval", "{model}", "--out", "{tmp}/no/r.json"], "parent folder"),
        (["bench", "{model}", "--out", "{tmp}/no/b.json"], "parent folder"),
        (["eval", "{model}", "--backend", "onnxruntime", "--provider", "cuda"], "runs ONNX exports"),
        (["export", "onnx", "{model}", "{tmp}/o", "--format", "genai", "--quant", "int8-dynamic"], "not int8-dynamic"),
        (["prune", "{model}", "{tmp}/p"], "nothing to prune"),
        (["prune", "{model}", "{tmp}/p", "--mlp", "half"], "a width is a count"),
        (["prune", "{model}", "{tmp}/p", "--layers", "7"], "cannot keep 7 of 2 layers"),
        (["prune", "{model}", "{tmp}/p", "--heads", "3"], "do not split evenly"),
        (["prune", "{model}", "{tmp}/p", "--mlp", "0.5", "--calib", "{tmp}/none.txt"], "none.txt"),
    ],
)
def test_export_mistakes_are_one_line(make_tiny_dir, tmp_path, args, pattern):
    paths = dict(model=make_tiny_dir(), tmp=tmp_path)
    assert_one_line_error(run(*[a.format(**paths) for a in args]), pattern)


def test_export_onnx_then_eval_it_in_onnxruntime(make_tiny_dir, tmp_path):
    src = make_tiny_dir()
    out = tmp_path / "onnx"
    result = run("export", "onnx", src, out, "--quant", "int8", "--verify-tokens", 128)
    assert result.exit_code == 0, result.output
    assert "parity      PASS" in result.output and "MatMulNBits x" in result.output
    assert (out / "supertiny.json").is_file() and (out / "model.onnx").is_file()
    again = run("export", "onnx", src, out)
    assert_one_line_error(again, "--overwrite")
    on_ort = run("eval", out, "--max-tokens", 200, "--no-generate", "--json", "--threads", 1)
    on_torch = run("eval", src, "--max-tokens", 200, "--no-generate", "--json")
    ort = json.loads(on_ort.output[on_ort.output.index("{"):])
    ref = json.loads(on_torch.output[on_torch.output.index("{"):])
    assert ort["model"]["backend"] == "onnxruntime (cpu)" and ort["model"]["dtype"] == "onnx int8"
    assert ort["score"]["perplexity"] == pytest.approx(ref["score"]["perplexity"], rel=1e-2)
    inspect = json.loads(run("inspect", out, "--json").output)
    assert inspect["format"] == "onnx" and inspect["parameters"] == ref["model"]["parameters"]
    teacher = run("eval", out, "--teacher", src, "--max-tokens", 200, "--no-generate")
    assert teacher.exit_code == 0 and "agreement   top-1" in teacher.output


def test_prune_then_eval_the_student(make_tiny_dir, tmp_path):
    src = make_tiny_dir(num_hidden_layers=4)
    out = tmp_path / "student"
    result = run("prune", src, out, "--drop-layers", 0.5, "--mlp", "0.5", "--calib-tokens", 256, "--eval-tokens", 64)
    assert result.exit_code == 0, result.output
    assert "layers      4 -> 2; dropped " in result.output and "mlp         128 -> 64" in result.output
    assert "quality     on 64 held-out tokens" in result.output
    info = json.loads(run("inspect", out, "--json").output)
    assert info["layers"] == 2 and info["format"] == "hf"
    assert run("eval", out, "--max-tokens", 100, "--no-generate").exit_code == 0


def test_export_onnx_genai_then_eval(make_tiny_dir, tmp_path):
    src = make_tiny_dir()
    out = tmp_path / "genai"
    result = run("export", "onnx", src, out, "--format", "genai", "--quant", "int4", "--block-size", "16",
                 "--verify-tokens", 128)
    assert result.exit_code == 0, result.output
    assert "genai graph: " in result.output and "GroupQueryAttention x2" in result.output
    assert "parity      PASS" in result.output
    on_ort = run("eval", out, "--max-tokens", 200, "--no-generate", "--json", "--threads", 1)
    ort = json.loads(on_ort.output[on_ort.output.index("{"):])
    assert ort["model"]["dtype"] == "onnx int4 (genai graph)" and ort["score"]["perplexity"] > 1


@pytest.mark.slow
def test_inspect_and_eval_default_teacher():
    data = json.loads(run("inspect", "default", "--json").output)
    assert data["parameters"] == 134_515_008 and data["dtype"] == "MOSTLY_Q4_1"
    result = run("eval", "default", "--backend", "torch", "--max-tokens", 300, "--prompt",
                 "What is the capital of France?", "--max-new-tokens", 12)
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "Paris" in result.output and "torch" in result.output
    on_cpp = run("eval", "default", "--max-tokens", 300, "--no-generate", "--json")
    data = json.loads(on_cpp.output[on_cpp.output.index("{"):])
    assert data["model"]["backend"] == "llama.cpp" and 10 < data["score"]["perplexity"] < 40
