"""trim-vocab: a vocabulary cut to a task's tokens that still encodes any text, the same model on what it keeps,
and exports that tokenize like it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from supertiny.cli import main
from supertiny.errors import InvalidInputError, UnsupportedArchitectureError
from supertiny.readers import read_jsonl
from supertiny.stages.trim.stage import TrimVocabConfig, rendered_examples, trim_vocab
from supertiny.stages.trim.vocab import BYTE_CHARS, ID_MAP, _pair, closure, merge_order, trim_spec
from supertiny.tasks.prompts import task_for

from conftest import build_tiny_model, corpus_text, tiny_config, write_color_task

DATA = Path(__file__).resolve().parents[1] / "examples" / "factory_tickets" / "data"


def encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def real(teacher):
    """The default teacher's tokenizer (49,152 tokens) trimmed to the tokens of the 2200 factory tickets as the
    student is trained on them (brief prompt + answer), nothing more."""
    spec = json.loads(teacher.tokenizer.backend_tokenizer.to_str())
    task = task_for("factory-tickets", training=True)
    pairs = rendered_examples(str(DATA / "train.jsonl"), task, teacher.tokenizer)
    full = Tokenizer.from_str(json.dumps(spec))
    texts = [p + a for p, a in pairs]
    wanted = {i for p, a in pairs for i in encode(full, p) + encode(full, a)}
    new, old_ids = trim_spec(spec, closure(spec, wanted))
    return SimpleNamespace(spec=spec, new=new, full=full, trimmed=Tokenizer.from_str(json.dumps(new)),
                           old_ids=old_ids, texts=texts, wanted=wanted)


def test_the_tasks_data_tokenizes_exactly_as_before(real):
    assert len(real.old_ids) < len(real.spec["model"]["vocab"]) // 10  # ~3.9k of 49k
    for text in real.texts:
        assert [real.old_ids[i] for i in encode(real.trimmed, text)] == encode(real.full, text)
    assert len(real.texts) == 2200


def test_every_kept_token_is_reachable_and_specials_keep_their_ids(real):
    vocab, merges = real.new["model"]["vocab"], real.new["model"]["merges"]
    made = {a + b for a, b in map(_pair, merges)}
    specials = {t["content"] for t in real.new["added_tokens"]}
    for token in vocab:
        assert len(token) == 1 or token in made or token in specials, token
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in map(_pair, merges))
    assert [(t["id"], t["content"]) for t in real.new["added_tokens"]] == \
        [(t["id"], t["content"]) for t in real.spec["added_tokens"]]  # ids 0..16 stay put
    assert {c for c in BYTE_CHARS.values() if c in real.spec["model"]["vocab"]} <= set(vocab)
    assert real.wanted <= set(real.old_ids)


@given(st.text(max_size=48))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_text_round_trips_as_it_does_through_the_full_vocabulary(real, text):
    """Random Unicode: the trimmed tokenizer gives back what the full one gives back — the text itself, except for
    the few bytes the teacher's vocabulary itself lacks (six control bytes, the lead bytes of unassigned planes)."""
    trimmed = real.trimmed.decode(encode(real.trimmed, text), skip_special_tokens=False)
    assert trimmed == real.full.decode(encode(real.full, text), skip_special_tokens=False)
    lacking = {b for b, c in BYTE_CHARS.items() if c not in real.spec["model"]["vocab"]}
    if not set(text.encode("utf-8")) & lacking:
        assert trimmed == text


def test_the_corpus_and_the_tasks_text_round_trip(real):
    texts = [corpus_text()] + [r.data["input"] for f in ("test.jsonl", "handwritten.jsonl", "handwritten_dev.jsonl")
                               for r in read_jsonl(DATA / f)]
    for text in texts:
        assert real.trimmed.decode(encode(real.trimmed, text), skip_special_tokens=False) == text


def test_the_default_keep_holds_unseen_task_inputs_within_a_tenth_more_tokens(real):
    """With --keep 8000 (the tokenizer's most frequent tokens by merge order) the inputs of the test split and of
    the hand-written tickets, none of which chose the kept set, need at most 10% more tokens."""
    new, _ = trim_spec(real.spec, closure(real.spec, real.wanted | merge_order(real.spec, 8000)))
    trimmed = Tokenizer.from_str(json.dumps(new))
    for f in ("test.jsonl", "handwritten.jsonl", "handwritten_dev.jsonl"):
        inputs = [r.data["input"] for r in read_jsonl(DATA / f)]
        before = sum(len(encode(real.full, t)) for t in inputs)
        after = sum(len(encode(trimmed, t)) for t in inputs)
        assert after <= 1.1 * before, (f, after / before)


def test_a_tokenizer_that_is_not_byte_level_bpe_is_refused():
    spec = {"model": {"type": "Unigram", "vocab": []}, "decoder": {"type": "Metaspace"}, "pre_tokenizer": None}
    with pytest.raises(UnsupportedArchitectureError, match="byte-level BPE"):
        trim_spec(spec, set())


@pytest.mark.parametrize("arch,tied", [("llama", True), ("qwen2", False)])
def test_the_trimmed_model_computes_the_sources_logits_on_the_kept_tokens(tmp_path, tiny_tokenizer, arch, tied):
    src = tmp_path / "src"
    build_tiny_model(arch, tied=tied, seed=1).save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    write_color_task(tmp_path, 30, 6)
    m = trim_vocab(src, tmp_path / "out", TrimVocabConfig(keep=0), task=tmp_path / "task.toml",
                   data=tmp_path / "data.jsonl", dev=tmp_path / "dev.jsonl")
    old_ids = json.loads((tmp_path / "out" / ID_MAP).read_text())["old_ids"]
    assert m.details["vocab"]["after"] == len(old_ids) < 400 and m.details["tokens"]["data"]["ratio"] == 1.0
    trimmed = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    source = AutoModelForCausalLM.from_pretrained(src).eval()
    assert trimmed.config.vocab_size == len(old_ids) and trimmed.config.eos_token_id == old_ids.index(2)
    assert (trimmed.get_output_embeddings().weight is trimmed.get_input_embeddings().weight) == tied
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tok("the green one, bright and dark red", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        got = trimmed(torch.tensor([ids])).logits[0]
        want = source(torch.tensor([[old_ids[i] for i in ids]])).logits[0][:, old_ids]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    q = m.quality
    assert q["answer_positions"] > 0 and 0 <= q["top1_agreement"] <= 1 and 0 <= q["dropped_mass_mean"] <= 1
    assert set(q["general_text"]) == {"source_bits_per_byte", "trimmed_bits_per_byte"}
    # the same text through both tokenizers
    assert tok.decode(ids) == "the green one, bright and dark red"


def test_a_trimmed_real_vocabulary_exports_to_gguf_and_onnx_and_tokenizes_there_alike(tmp_path, real, teacher):
    """llama.cpp reads the trimmed merges and tokens (the GGUF exporter's parity check: tokenization equal on its
    tricky strings — scripts the task never saw, emoji, code — and logits); onnxruntime's export carries the
    trimmed tokenizer files."""
    from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf
    from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx
    from supertiny.stages.trim.stage import _tokenizer

    src = tmp_path / "src"
    n = len(real.old_ids)
    model = AutoModelForCausalLM.from_config(tiny_config(vocab=n, bos_token_id=1, eos_token_id=2, pad_token_id=2))
    torch.manual_seed(0)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1.0)
    model.save_pretrained(src)
    _tokenizer(teacher.tokenizer, real.new).save_pretrained(src)
    g = export_gguf(src, tmp_path / "m.gguf", GGUFExportConfig(dtype="f32"))
    assert g.quality["passed"] and g.quality["tokenization_equal"]
    o = export_onnx(src, tmp_path / "onnx", OnnxExportConfig())
    assert o.quality["passed"] and o.quality["tokenization_equal"]
    exported = AutoTokenizer.from_pretrained(tmp_path / "onnx")
    assert len(exported) == n and exported.chat_template == teacher.tokenizer.chat_template


def test_bad_input_is_one_line(tmp_path, make_tiny_dir):
    src = make_tiny_dir()
    r = CliRunner().invoke(main, ["trim-vocab", str(src), str(tmp_path / "o"), "--data", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "pass --task too" in r.output and len(r.output.strip().splitlines()) == 1
    with pytest.raises(InvalidInputError, match="nothing to keep"):
        trim_vocab(src, tmp_path / "o", TrimVocabConfig(keep=0))
    from supertiny.stages.quantize import QuantizeConfig, quantize

    quantize(src, tmp_path / "q", QuantizeConfig(scheme="w8a8", eval_tokens=16))
    with pytest.raises(InvalidInputError, match="quantized checkpoint: trim the vocabulary before"):
        trim_vocab(tmp_path / "q", tmp_path / "o", TrimVocabConfig(keep=10))
    assert not (tmp_path / "o").exists()
