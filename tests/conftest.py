"""Shared fixtures: tiny random models built from a config here, never from a hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from supertiny.runtime.engines.base import Engine  # noqa: E402

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus_text() -> str:
    from supertiny.evaluate import default_corpus_path

    return default_corpus_path().read_text(encoding="utf-8")


def train_tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab 400) trained on the bundled corpus, ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([corpus_text()], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML,
        clean_up_tokenization_spaces=False,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tiny_tokenizer()


def tiny_config(arch: str = "llama", vocab: int = 400, tied: bool = True, **overrides):
    from transformers import AutoConfig

    kw = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=tied,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    kw.update(overrides)
    return AutoConfig.for_model(arch, **kw)


def build_tiny_model(arch: str = "llama", tied: bool = True, seed: int = 0, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tied=tied, **overrides))
    # Random init gives near-uniform logits; widen them so tests see real distributions.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1.0)
    return model.eval()


@pytest.fixture
def make_tiny_dir(tmp_path, tiny_tokenizer):
    """Save a tiny random model + tokenizer as a Hugging Face directory; returns its path."""

    def make(arch: str = "llama", tied: bool = True, seed: int = 0, name: str | None = None, **overrides) -> Path:
        out = tmp_path / (name or f"{arch}-{'tied' if tied else 'untied'}-{seed}")
        model = build_tiny_model(arch, tied=tied, seed=seed, **overrides)
        model.save_pretrained(out, safe_serialization=True)
        tiny_tokenizer.save_pretrained(out)
        return out

    return make


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> dict[str, Path]:
    """One tiny model (seed 3, trained tokenizer) as a Hugging Face directory and an F32 GGUF file,
    by the engine that runs each (``torch``, ``llama.cpp``); built once per session, read-only."""
    from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf

    root = tmp_path_factory.mktemp("tiny-artifacts")
    src = root / "hf"
    build_tiny_model(seed=3).save_pretrained(src)
    train_tiny_tokenizer().save_pretrained(src)
    export_gguf(src, root / "m.gguf", GGUFExportConfig(dtype="f32", verify=False))
    return {"torch": src, "llama.cpp": root / "m.gguf"}


@pytest.fixture(scope="session")
def tiny_exports(tiny_artifacts, tmp_path_factory) -> dict[str, Path]:
    """:func:`tiny_artifacts` plus the same model as an fp32 ONNX export (``onnxruntime``): one model on
    every engine."""
    from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx

    out = tmp_path_factory.mktemp("engines") / "onnx"
    export_onnx(tiny_artifacts["torch"], out, OnnxExportConfig(verify=False))
    return {**tiny_artifacts, "onnxruntime": out}


@pytest.fixture(scope="session")
def teacher():
    """The real default teacher (SmolLM2-135M-Instruct), loaded once per test session."""
    from supertiny.models import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def teacher_path() -> Path:
    from supertiny.models import default_teacher_path

    return default_teacher_path()


class ScriptedEngine(Engine):
    """A backend-free engine for testing what all engines share (text level, scheduling):
    ``script`` is the token list a subclass's ``stream`` plays back."""

    name = "scripted"

    def __init__(self, tokenizer, script, n_ctx: int = 1000):
        self.tok, self.script, self.n_ctx = tokenizer, list(script), n_ctx
        self.path = Path("scripted")

    @classmethod
    def open(cls, path, options):
        return cls(train_tiny_tokenizer(), [], options.n_ctx or 1000)

    def _load_tokenizer(self):
        return self.tok, "test tokenizer"

    def _describe(self):
        return {"format": "scripted"}

    def logits(self, ids):
        """One-hot rows: position i predicts the i-th scripted token."""
        out = np.zeros((len(ids), len(self.tok)), dtype=np.float32)
        for i, token in enumerate(self.script[: len(ids)]):
            out[i, token] = 1.0
        return out


@pytest.fixture(scope="session")
def gguf_path(tmp_path_factory, tiny_tokenizer):
    """A tiny F32 GGUF with untied embeddings: its greedy replies depend on the prompt (tied ones echo the
    prompt's last token), which the engine and server tests need."""
    from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf

    src = tmp_path_factory.mktemp("untied") / "hf"
    build_tiny_model(tied=False).save_pretrained(src, safe_serialization=True)
    tiny_tokenizer.save_pretrained(src)
    out = src.parent / "tiny.gguf"
    export_gguf(src, out, GGUFExportConfig(dtype="f32", verify=False))
    return out


def start_server(server, sock, timeout: float = 10.0):
    """Run a uvicorn ``server`` on ``sock`` in a daemon thread; return the thread once the server has started."""
    import threading
    import time

    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + timeout
    while not server.started:
        assert time.monotonic() < end and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    return thread


# A two-field task and labelled records of it, for the training-stage tests (distill, rl).
COLOR_TASK = """schema_version = 1
name = "tiny-colors"
description = "a colour and whether it is bright"
input = "text"
instruction = "Name the colour."

[output.color]
type = "enum"
values = ["red", "green", "blue"]

[output.bright]
type = "bool"
"""
COLOR_WORDS = ["red", "green", "blue"]


# `supertiny run` on a tiny random teacher (tests/test_pipeline.py, test_kill_resume.py): a device with generous
# budgets (what is checked is that the budgets are measured and judged) and a recipe through every stage.
TINY_TARGET = """schema_version = 1
name = "tiny-box"
[device]
arch = "x86_64"
cores = 2
memory_gb = 16
[runtime]
threads = 1
context = 256
formats = ["gguf"]
[budget]
prompt_tokens = 16
concurrency = 1
max_tokens = 4
ttft_ms = 60000
decode_tokens_per_s = 1
p95_latency_ms = 60000
peak_rss_mb = 8192
file_size_mb = 10
"""

TINY_RECIPE = """schema_version = 1
name = "tiny-run"
description = "a tiny random teacher through every stage"
teacher = "teacher"
target = "tiny-box.toml"

[task]
name = "task.toml"
train = "data.jsonl"
dev = "dev.jsonl"
test = "data.jsonl"

[prune]
layers = 2
calib_tokens = 64
eval_tokens = 16

[distill]
loss = "fkl"
steps = 2
batch_size = 2
dev_limit = 1

[trim_vocab]
keep = 20

[quantize]
scheme = "w4a16"
method = "rtn"
group = 32
symmetric = true
eval_tokens = 64

[export]
verify_tokens = 64

[eval]
limit = 3
max_new_tokens = 6
threads = 1

[bench]
prompt_lengths = "16"
concurrency = "1"
requests = 1
repeats = 1
warmup = 0
new_tokens = 4
"""


def write_color_task(tmp_path: Path, records: int, dev: int) -> None:
    """Write ``task.toml``, ``data.jsonl`` (``records`` labelled lines) and ``dev.jsonl`` (the first ``dev``)."""
    import json

    (tmp_path / "task.toml").write_text(COLOR_TASK)
    lines = [json.dumps({"input": f"the {w} one, {'bright' if i % 2 else 'dark'}",
                         "label": {"color": w, "bright": bool(i % 2)}})
             for i, w in enumerate(COLOR_WORDS * (records // len(COLOR_WORDS) + 1))][:records]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "dev.jsonl").write_text("\n".join(lines[:dev]) + "\n")


def read_metrics_lines(out: Path) -> list[dict]:
    """The records of ``out``'s ``metrics.jsonl``."""
    import json

    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


class Killed(Exception):
    """What :func:`kill_at`'s callback raises."""


def kill_at(step: int):
    """A Trainer callback that dies at the end of ``step`` (after the checkpoints before it), as kill -9 would."""
    from transformers import TrainerCallback

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step:
                raise Killed()

    return KillAt()
