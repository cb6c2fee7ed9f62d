"""GGUF files: validation before native code, exact loading, llama.cpp-exact tokenizers."""

from __future__ import annotations

import io

import pytest
import torch
from llama_cpp import Llama

from supertiny.errors import InvalidGGUFError, ModelNotFoundError, UnsupportedArchitectureError
from supertiny.gguf_file import GGUFFile
from supertiny.gguf_tokenizer import tokenizer_from_gguf
from supertiny.models import describe, load_model

from conftest import CHATML, build_tiny_model, corpus_text
from gguf_writer import bpe_vocab, write_gguf

TRICKY = [
    "Hello world",
    " Hello  world ",
    "It's 12345 apples, isn't it? I'LL GO",
    "tab\tnew\nline\r\n\n\n  x",
    "café naïve 你好 🙂 ✓ ß",
    "<|im_start|>user\nhi<|im_end|>\n",
    "   leading",
    "trailing   ",
    "x=1+2*3; // {'a': [1,2]}",
    "1,000,000.50$ 3.14e-10 ...",
    'Alice said, "Oh dear!" — and ran.',
    "",
]


@pytest.fixture(scope="module")
def tiny_model():
    return build_tiny_model("llama", tied=True)


@pytest.fixture
def write_bpe_gguf(tmp_path, tiny_tokenizer, tiny_model):
    def write(name="tiny.gguf", model=None, user_defined=(), **kw):
        tokens, merges, types = bpe_vocab(tiny_tokenizer)
        for i in user_defined:
            types[i] = 4
        kw.setdefault("chat_template", CHATML)
        return write_gguf(tmp_path / name, model or tiny_model, tokens, merges, types, **kw)

    return write


def llama_vocab(path) -> Llama:
    return Llama(model_path=str(path), vocab_only=True, verbose=False)


@pytest.mark.parametrize("tied", [True, False])
def test_f32_gguf_loads_exactly(write_bpe_gguf, tied):
    model = build_tiny_model("llama", tied=tied, seed=3)
    path = write_bpe_gguf(model=model, pre="gpt-2")
    lm = load_model(path)
    ids = torch.arange(1, 40)[None]
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, model(ids).logits, rtol=0, atol=0)
    info = lm.info
    assert info.format == "gguf" and info.architecture == "llama" and info.tied_embeddings is tied
    assert info.parameters == model.num_parameters()
    meta = describe(path)
    assert meta.dtype == "ALL_F32" and meta.parameters == info.parameters and meta.tied_embeddings is tied
    shape = (meta.layers, meta.heads, meta.kv_heads, meta.hidden, meta.intermediate, meta.vocab)
    assert shape == (2, 4, 2, 64, 128, 400)


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2", "stablelm2", None])
@pytest.mark.parametrize("add_bos", [None, True, False])
def test_bpe_tokenizer_matches_llama_cpp(write_bpe_gguf, pre, add_bos):
    path = write_bpe_gguf(pre=pre, add_bos=add_bos, user_defined=[5])
    tok, how = tokenizer_from_gguf(GGUFFile(path))
    assert "built by supertiny" in how
    llm = llama_vocab(path)
    expect_bos = add_bos if add_bos is not None else pre == "llama-bpe"
    for text in [*TRICKY, "a" + tok.convert_ids_to_tokens(5) + "b"]:
        ours = tok(text)["input_ids"]
        theirs = llm.tokenize(text.encode(), add_bos=expect_bos, special=True)
        assert ours == theirs, (pre, add_bos, text)
        assert tok.decode(ours, skip_special_tokens=False).removeprefix("<|im_start|>" if expect_bos else "") == text
    corpus = corpus_text()
    assert tok(corpus)["input_ids"] == llm.tokenize(corpus.encode(), add_bos=expect_bos, special=True)


@pytest.mark.parametrize("add_bos", [True, False])
def test_add_eos_matches_llama_cpp(write_bpe_gguf, add_bos):
    path = write_bpe_gguf(pre="gpt-2", add_bos=add_bos, add_eos=True)
    tok, _ = tokenizer_from_gguf(GGUFFile(path))
    llm = llama_vocab(path)
    for text in TRICKY:
        # llama-cpp-python's add_bos=True means "add the special tokens the vocabulary asks for"
        ours = tok(text)["input_ids"]
        assert ours == llm.tokenize(text.encode(), add_bos=True, special=True), text
        assert ours[-1] == tok.eos_token_id
    assert (tok("x")["input_ids"][0] == tok.bos_token_id) is add_bos


def test_bpe_special_tokens_come_from_the_metadata(write_bpe_gguf):
    path = write_bpe_gguf(pre="smollm", bos=1, eos=2, pad=0, add_bos=False)
    tok, _ = tokenizer_from_gguf(GGUFFile(path))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert tok("x")["input_ids"][0] != tok.bos_token_id
    assert tok.chat_template == CHATML
    # control tokens are special (dropped by skip_special_tokens), so chat output decodes clean
    ids = tok("<|im_start|>assistant\nHi<|im_end|>")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\nHi"


def test_pad_falls_back_to_eos(write_bpe_gguf):
    tok, _ = tokenizer_from_gguf(GGUFFile(write_bpe_gguf(pre="gpt-2", pad=None)))
    assert tok.pad_token == tok.eos_token == "<|im_end|>"


def test_tokenizer_survives_save_and_reload(write_bpe_gguf, tmp_path):
    from transformers import AutoTokenizer

    tok, _ = tokenizer_from_gguf(GGUFFile(write_bpe_gguf(pre="llama-bpe", add_bos=True)))
    tok.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    for text in TRICKY:
        assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.eos_token == tok.eos_token and again.chat_template == tok.chat_template


def spm_vocab():
    """A tiny SentencePiece BPE vocabulary with byte fallback and two user-defined tokens."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_text().splitlines()), model_writer=buf, vocab_size=400,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0,
        pad_id=-1, user_defined_symbols=["<|im_start|>", "<|im_end|>"], minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    tokens = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]

    def kind(i):
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        if sp.is_byte(i):
            return 6
        return 4 if tokens[i] in ("<|im_start|>", "<|im_end|>") else 1

    return tokens, [sp.get_score(i) for i in range(len(tokens))], [kind(i) for i in range(len(tokens))]


def test_sentencepiece_tokenizer_matches_llama_cpp(tmp_path, tiny_model):
    tokens, scores, types = spm_vocab()
    path = write_gguf(tmp_path / "spm.gguf", tiny_model, tokens, None, types, tokenizer_model="llama",
                      pre=None, add_bos=None, scores=scores)
    tok, how = tokenizer_from_gguf(GGUFFile(path))
    assert "transformers" in how
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "</s>")
    llm = llama_vocab(path)
    for text in [*TRICKY, "a<|im_end|>b <|im_end|> c"]:
        assert tok(text)["input_ids"] == llm.tokenize(text.encode(), add_bos=True, special=True), text


# --- validation: nothing malformed reaches native code ---------------------------------


def test_missing_gguf(tmp_path):
    with pytest.raises(ModelNotFoundError):
        GGUFFile(tmp_path / "none.gguf")


def test_empty_file(tmp_path):
    (tmp_path / "e.gguf").write_bytes(b"")
    with pytest.raises(InvalidGGUFError, match="0-byte"):
        describe(tmp_path / "e.gguf")


def test_not_gguf_at_all(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(InvalidGGUFError, match="magic"):
        load_model(tmp_path / "x.gguf")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_gguf(write_bpe_gguf, keep):
    path = write_bpe_gguf()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InvalidGGUFError, match="truncated|corrupt"):
        load_model(path)


def test_header_cut_inside_the_metadata(write_bpe_gguf):
    path = write_bpe_gguf()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InvalidGGUFError):
        GGUFFile(path)


def test_unsupported_gguf_architecture(tmp_path, tiny_model, tiny_tokenizer):
    tokens, merges, types = bpe_vocab(tiny_tokenizer)
    path = write_gguf(tmp_path / "bert.gguf", tiny_model, tokens, merges, types, arch="bert")
    with pytest.raises(UnsupportedArchitectureError, match="supported"):
        load_model(path)


def test_gguf_without_tokenizer(tmp_path, tiny_model):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "notok.gguf"), "llama")
    w.add_tensor("token_embd.weight", tiny_model.model.embed_tokens.weight.detach().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(InvalidGGUFError):
        load_model(tmp_path / "notok.gguf")
