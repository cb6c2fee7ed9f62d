"""A Hugging Face tokenizer as GGUF ``tokenizer.ggml.*`` metadata.

The inverse of :mod:`supertiny.gguf_tokenizer`: byte-level BPE vocabularies become
``tokenizer.ggml.model = gpt2`` with their merges and the ``pre`` name whose
llama.cpp regexes equal the tokenizer's own pre-tokenizer (looked up in
:data:`supertiny.gguf_file.PRE_TOKENIZERS`, never guessed); SentencePiece
vocabularies (a ``tokenizer.model`` file) become ``llama`` with scores and byte
tokens. The export's parity check then tokenizes in llama.cpp and compares.

sentencepiece is imported only for a SentencePiece vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supertiny.errors import UnsupportedArchitectureError
from supertiny.gguf_file import _GPT2, PRE_TOKENIZERS, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# HF writes the contractions of llama3/qwen2 case-insensitively; llama.cpp spells them out.
_HF_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_CPP_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"


@dataclass
class GGUFVocab:
    """Everything llama.cpp needs to tokenize like the source tokenizer."""

    model: str  # "gpt2" | "llama"
    tokens: list[str]
    token_types: list[int]
    pre: str | None = None
    merges: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None


def _pre_regexes(pre_tokenizer: dict[str, Any] | None) -> tuple[str, ...] | None:
    """The llama.cpp-style regex sequence a HF pre-tokenizer applies, or None if it is not regex-only."""
    if pre_tokenizer is None:
        return None
    steps = pre_tokenizer["pretokenizers"] if pre_tokenizer["type"] == "Sequence" else [pre_tokenizer]
    out: list[str] = []
    for i, step in enumerate(steps):
        kind = step["type"]
        if kind == "ByteLevel":
            if i != len(steps) - 1 or step.get("add_prefix_space"):
                return None
            if step.get("use_regex", True):
                out.append(_GPT2)
        elif kind == "Split" and "Regex" in step["pattern"] and step.get("behavior") == "Isolated" \
                and not step.get("invert"):
            out.append(step["pattern"]["Regex"].replace(_HF_CONTRACTIONS, _CPP_CONTRACTIONS))
        elif kind == "Digits" and step.get("individual_digits"):
            out.append(r"\p{N}")
        else:
            return None
    return tuple(out)


def pre_tokenizer_name(tokenizer: PreTrainedTokenizerBase) -> str:
    """The ``tokenizer.ggml.pre`` whose regexes equal this tokenizer's pre-tokenizer.

    Raises:
        UnsupportedArchitectureError: no row of the table matches.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    regexes = _pre_regexes(spec.get("pre_tokenizer"))
    # Several names share regexes but differ elsewhere in llama.cpp (detokenizer
    # space clean-up); a tokenizer that came from a GGUF file keeps its own name.
    remembered = tokenizer.init_kwargs.get("gguf_pre")
    names = [remembered] if remembered in PRE_TOKENIZERS else []
    for name in [*names, *PRE_TOKENIZERS]:
        row = PRE_TOKENIZERS[name]
        if regexes is not None and row.regexes == regexes:
            if row.ignore_merges and not spec["model"].get("ignore_merges"):
                continue
            return name
    raise UnsupportedArchitectureError(
        "the tokenizer's pre-tokenizer matches no llama.cpp pre-tokenizer supertiny knows "
        f"({json.dumps(spec.get('pre_tokenizer'))[:200]}); pass --pre NAME to choose one of: "
        + ", ".join(PRE_TOKENIZERS)
    )


def _special_flags(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """Whether the tokenizer adds bos / eos, measured rather than read from flags."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    add_bos = len(with_special) > len(without) and with_special[0] == tokenizer.bos_token_id
    add_eos = len(with_special) > len(without) and with_special[-1] == tokenizer.eos_token_id
    return add_bos, add_eos


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {}
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unk_token_id"),
                      ("pad", "pad_token_id")):
        value = getattr(tokenizer, attr)
        if value is not None:
            ids[key] = int(value)
    return ids


def _token_types(tokenizer: PreTrainedTokenizerBase, n: int) -> list[int]:
    types = [TOKEN_NORMAL] * n
    for i, added in tokenizer.added_tokens_decoder.items():
        if i < n:
            types[i] = TOKEN_CONTROL if added.special else TOKEN_USER_DEFINED
    return types


def vocab_from_tokenizer(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int, pre: str | None = None
) -> GGUFVocab:
    """Describe a HF tokenizer as GGUF vocabulary metadata.

    Args:
        tokenizer: a fast tokenizer (byte-level BPE or SentencePiece-based).
        vocab_size: the model's embedding rows; the vocabulary is padded with unused
            ``[PAD{i}]`` tokens up to it, as llama.cpp's converter does.
        pre: force a ``tokenizer.ggml.pre`` name instead of matching the regexes.

    Raises:
        UnsupportedArchitectureError: a tokenizer kind llama.cpp cannot reproduce.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UnsupportedArchitectureError(
            f"the tokenizer has ids up to {max(vocab.values())} but the model has only {vocab_size} "
            "embedding rows; llama.cpp needs every token to have a row"
        )
    n = vocab_size
    by_id = {i: t for t, i in vocab.items()}
    sp_model = _sentencepiece_file(tokenizer)
    if sp_model is not None:
        out = _sentencepiece_vocab(sp_model, tokenizer, n)
    elif model["type"] == "BPE" and spec.get("decoder", {}) and "ByteLevel" in json.dumps(spec["decoder"]):
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
        types = _token_types(tokenizer, n)
        for i in range(n):
            if i not in by_id:
                types[i] = TOKEN_UNUSED
        out = GGUFVocab("gpt2", tokens, types, pre=pre or pre_tokenizer_name(tokenizer), merges=merges)
    else:
        raise UnsupportedArchitectureError(
            f"tokenizer model {model['type']!r} without a tokenizer.model file: llama.cpp needs a byte-level "
            "BPE vocabulary or a SentencePiece model"
        )
    out.special_ids = _special_ids(tokenizer)
    out.add_bos, out.add_eos = _special_flags(tokenizer)
    template = getattr(tokenizer, "chat_template", None)
    out.chat_template = template if isinstance(template, str) else None
    return out


def _sentencepiece_file(tokenizer: PreTrainedTokenizerBase) -> Path | None:
    path = getattr(tokenizer, "vocab_file", None)
    return Path(path) if path and str(path).endswith(".model") and Path(path).is_file() else None


def _sentencepiece_vocab(model_file: Path, tokenizer: PreTrainedTokenizerBase, n: int) -> GGUFVocab:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(TOKEN_CONTROL)
        elif sp.is_unused(i):
            types.append(TOKEN_UNUSED)
        elif sp.is_byte(i):
            types.append(6)
        else:
            types.append(TOKEN_NORMAL)
    for i, added in sorted(tokenizer.added_tokens_decoder.items()):
        kind = TOKEN_CONTROL if added.special else TOKEN_USER_DEFINED
        if i < len(tokens):
            if types[i] == TOKEN_NORMAL:
                types[i] = kind
        else:
            while len(tokens) < i:
                tokens.append(f"[PAD{len(tokens)}]")
                scores.append(-1000.0)
                types.append(TOKEN_UNUSED)
            tokens.append(added.content)
            scores.append(-1000.0)
            types.append(kind)
    while len(tokens) < n:
        tokens.append(f"[PAD{len(tokens)}]")
        scores.append(-1000.0)
        types.append(TOKEN_UNUSED)
    return GGUFVocab("llama", tokens, types, scores=scores)


def write_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """Add the vocabulary's keys to a ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
              "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for key, value in vocab.special_ids.items():
        adders[key](value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.model == "llama":
        writer.add_add_space_prefix(True)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
