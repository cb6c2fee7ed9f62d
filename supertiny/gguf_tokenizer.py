"""Build a Hugging Face tokenizer from a GGUF file that tokenizes like llama.cpp.

transformers can rebuild a tokenizer from GGUF metadata, but for byte-level BPE
vocabularies (``tokenizer.ggml.model = gpt2``: SmolLM, Llama 3, Qwen2) it gets it
wrong: SentencePiece-style decoding (``▁``, byte fallback), a GPT-2 pre-tokenizer
whatever ``tokenizer.ggml.pre`` says, eos taken from bos, ``add_bos`` forced on, no
pad. It is also slow (~30 s for a 49k vocabulary). So byte-level BPE vocabularies are
built here directly from the metadata, with llama.cpp's pre-tokenizer regexes
(:data:`supertiny.gguf_file.PRE_TOKENIZERS`); SentencePiece vocabularies
(``llama``), which transformers converts correctly, go through transformers and get
their special tokens set from the metadata.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from supertiny.errors import InvalidGGUFError
from supertiny.gguf_file import (
    PRE_TOKENIZERS,
    TOKEN_CONTROL,
    TOKEN_USER_DEFINED,
    GGUFFile,
    PreTokenizer,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def tokenizer_from_gguf(gf: GGUFFile) -> tuple[PreTrainedTokenizerFast, str]:
    """Build the tokenizer stored in a GGUF file.

    Args:
        gf: a validated GGUF file.

    Returns:
        ``(tokenizer, how)``: the tokenizer and a short note on how it was built
        (kept in the model description so a user can see which path was taken).

    Raises:
        InvalidGGUFError: the file carries no usable vocabulary.
    """
    model = gf.get("tokenizer.ggml.model")
    tokens = gf.get("tokenizer.ggml.tokens")
    if not model or not tokens:
        raise InvalidGGUFError(f"GGUF file {gf.path} carries no tokenizer (tokenizer.ggml.* keys)")
    pre = gf.get("tokenizer.ggml.pre") or "default"
    row = PRE_TOKENIZERS.get(pre) if model == "gpt2" else None
    if row is not None:
        tok = _byte_level_bpe(gf, tokens, row)
        how = f"byte-level BPE built by supertiny from GGUF metadata (pre-tokenizer {pre!r})"
    else:
        tok = _via_transformers(gf)
        # transformers' conversion leaves control and user-defined pieces to the
        # SentencePiece model; llama.cpp matches them verbatim first, so add them.
        from tokenizers import AddedToken

        control, user = _added_token_ids(gf, len(tokens))
        tok.add_special_tokens(
            {"additional_special_tokens": [AddedToken(tokens[i], normalized=False) for i in control]},
            replace_additional_special_tokens=False,
        )
        tok.add_tokens([AddedToken(tokens[i], normalized=False) for i in user])
        how = (
            f"transformers' GGUF conversion ({model!r} vocabulary, pre-tokenizer {pre!r}), "
            "special tokens set from GGUF metadata"
        )
    _set_special_tokens(tok, gf, tokens, default_add_bos=row.add_bos if row else model == "llama")
    # Saved with the tokenizer (tokenizer_config.json), so a student exported back to
    # GGUF keeps the file's pre-tokenizer name.
    tok.init_kwargs["gguf_pre"] = pre
    return tok, how


def _added_token_ids(gf: GGUFFile, n_tokens: int) -> tuple[list[int], list[int]]:
    types = gf.get("tokenizer.ggml.token_type") or [1] * n_tokens
    control = [i for i, t in enumerate(types) if t == TOKEN_CONTROL]
    user = [i for i, t in enumerate(types) if t == TOKEN_USER_DEFINED]
    return control, user


def _byte_level_bpe(gf: GGUFFile, tokens: list[str], spec: PreTokenizer) -> PreTrainedTokenizerFast:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    merges_raw = gf.get("tokenizer.ggml.merges")
    if not merges_raw:
        raise InvalidGGUFError(f"GGUF file {gf.path}: BPE vocabulary without tokenizer.ggml.merges")
    merges = [tuple(m.split(" ", 1)) for m in merges_raw]
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=spec.ignore_merges)
    backend = Tokenizer(bpe)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    control, user = _added_token_ids(gf, len(tokens))
    # llama.cpp matches control and user-defined tokens verbatim before BPE; added
    # tokens do the same in HF. Control tokens are "special" (skipped when decoding
    # with skip_special_tokens), user-defined ones are ordinary text.
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in control])
    backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user])
    # No clean-up of spaces on decode: decode(encode(text)) gives the text back, as
    # llama.cpp's token pieces do.
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False)


def _via_transformers(gf: GGUFFile) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(gf.path.parent), gguf_file=gf.path.name, trust_remote_code=False
        )
    except Exception as exc:  # transformers raises many kinds for vocabularies it cannot map
        raise InvalidGGUFError(f"cannot build a tokenizer from {gf.path}: {exc}") from None


def _set_special_tokens(
    tok: PreTrainedTokenizerFast, gf: GGUFFile, tokens: list[str], default_add_bos: bool
) -> None:
    """bos/eos/pad/unk, add_bos/add_eos and the chat template exactly as the file says."""
    from tokenizers import processors

    def token(key: str) -> str | None:
        i = gf.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos, eos, unk = token("bos"), token("eos"), token("unknown")
    pad = token("padding") or eos
    # llama.cpp's default when the key is absent depends on the vocabulary type:
    # SentencePiece and the llama3 pre-tokenizers add bos, other BPE ones do not.
    add_bos = bool(gf.get("tokenizer.ggml.add_bos_token", default_add_bos))
    add_eos = bool(gf.get("tokenizer.ggml.add_eos_token", False))
    if add_bos and bos is None:
        raise InvalidGGUFError(f"GGUF file {gf.path} asks to add a bos token but names none")
    if add_eos and eos is None:
        raise InvalidGGUFError(f"GGUF file {gf.path} asks to add an eos token but names none")
    tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token = bos, eos, pad, unk

    # Lists, not template strings: a token's text may contain spaces.
    bos_piece, eos_piece = ([bos] if add_bos else []), ([eos] if add_eos else [])
    specials = [(t, tok.convert_tokens_to_ids(t)) for t in dict.fromkeys((*bos_piece, *eos_piece))]
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=[*bos_piece, "$A", *eos_piece],
        pair=[*bos_piece, "$A", *eos_piece, *bos_piece, "$B:1", *eos_piece],
        special_tokens=specials,
    )
    # LlamaTokenizerFast (the SentencePiece path) keeps these flags and rebuilds its
    # post-processor from them when reloaded after save_pretrained: keep them in step.
    for name, value in (("add_bos_token", add_bos), ("add_eos_token", add_eos)):
        if hasattr(tok, f"_{name}"):
            setattr(tok, f"_{name}", value)
            tok.init_kwargs[name] = value
    chat_template = gf.get("tokenizer.chat_template")
    if chat_template:
        tok.chat_template = chat_template
    ctx = gf.arch_get("context_length")
    if ctx:
        tok.model_max_length = int(ctx)
