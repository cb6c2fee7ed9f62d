"""A byte-level BPE tokenizer cut down to a kept set of tokens that still encodes any text.

The kept set (:func:`closure`) is what the caller asks for, plus every added/special token,
every single-byte token and, for each kept token, the two parts of the merge that makes it
(recursively), so every kept token stays reachable. The trimmed tokenizer (:func:`trim_spec`)
keeps the merges whose parts and result are all kept, in their order: a word whose tokens were
all kept tokenizes exactly as before (the merges BPE applied to it are all still there and no
new one can win over them); any other word falls back to shorter kept pieces and, at worst,
single bytes; never to an unknown token. New ids follow the old order, so the special tokens at
the front keep their ids.

Only byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen2 style) is handled: there every byte is a
token, which is what makes "encodes any text" hold. Works on ``tokenizer.json`` as a dict;
imports neither torch nor transformers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError, UnsupportedArchitectureError

ID_MAP = "vocab_map.json"  # in a trimmed model's directory: {"old_ids": [new id -> source id], "source_vocab_size"}


def read_id_map(directory: str | Path) -> tuple[list[int], int] | None:
    """A trimmed model's id map ``(old_ids, source vocabulary size)`` (``old_ids[new id]`` = the source's id), or
    None when ``directory`` holds none (a model that was not trimmed, or not a directory).

    Raises:
        InvalidInputError: the file is there but is not a map of distinct ids below the source's size.
    """
    path = Path(directory) / ID_MAP
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        old_ids, size = data["old_ids"], data["source_vocab_size"]
        ok = (isinstance(size, int) and isinstance(old_ids, list) and all(type(i) is int for i in old_ids)
              and len(set(old_ids)) == len(old_ids) and all(0 <= i < size for i in old_ids))
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise InvalidInputError(f"{path}: not a trim-vocab id map (distinct ids below source_vocab_size)")
    return old_ids, size


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level alphabet: each of the 256 bytes as the printable character byte-level BPE writes it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


BYTE_CHARS = _bytes_to_unicode()


def _pair(merge: Any) -> tuple[str, str]:
    if isinstance(merge, str):
        left, _, right = merge.partition(" ")
        return left, right
    return merge[0], merge[1]


def check_byte_level_bpe(spec: dict[str, Any]) -> None:
    """Raise :class:`UnsupportedArchitectureError` unless ``spec`` (a ``tokenizer.json``) is byte-level BPE."""
    model = spec.get("model") or {}
    decoder = spec.get("decoder") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in repr(decoder) or "ByteLevel" not in repr(
            spec.get("pre_tokenizer")):
        raise UnsupportedArchitectureError(
            f"trim-vocab handles byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen2 style); this one is "
            f"{model.get('type')!r} with a {decoder.get('type')!r} decoder")
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise UnsupportedArchitectureError("trim-vocab: a BPE model with dropout or subword prefixes/suffixes is not "
                                           "supported")


def base_ids(spec: dict[str, Any]) -> set[int]:
    """The ids every trimmed vocabulary keeps: added (special) tokens and the single-byte tokens."""
    vocab = spec["model"]["vocab"]
    ids = {int(t["id"]) for t in spec.get("added_tokens", [])}
    ids.update(vocab[c] for c in BYTE_CHARS.values() if c in vocab)
    return ids


def closure(spec: dict[str, Any], wanted: Iterable[int]) -> set[int]:
    """``wanted`` plus :func:`base_ids` plus the merge parts that make each kept token, recursively."""
    vocab = spec["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    maker: dict[str, tuple[str, str]] = {}
    for merge in spec["model"]["merges"]:
        left, right = _pair(merge)
        maker.setdefault(left + right, (left, right))  # the first (highest-ranked) merge making a token
    wanted = set(wanted)
    unknown = sorted(wanted - set(by_id) - {int(t["id"]) for t in spec.get("added_tokens", [])})
    if unknown:
        raise AssertionError(f"ids outside the vocabulary: {unknown[:5]}")
    kept = base_ids(spec) | wanted
    stack = list(kept)
    while stack:
        for part in maker.get(by_id.get(stack.pop(), ""), ()):
            j = vocab[part]
            if j not in kept:
                kept.add(j)
                stack.append(j)
    return kept


def merge_order(spec: dict[str, Any], n: int) -> set[int]:
    """The ids the first ``n`` merges make: a BPE tokenizer's most frequent tokens (merges are learnt most frequent
    first)."""
    vocab = spec["model"]["vocab"]
    return {vocab[a + b] for a, b in map(_pair, spec["model"]["merges"][:n]) if a + b in vocab}


def trim_spec(spec: dict[str, Any], kept: set[int]) -> tuple[dict[str, Any], list[int]]:
    """The ``tokenizer.json`` of the trimmed tokenizer and ``old_ids`` (new id -> old id).

    ``kept`` must be closed (:func:`closure`). Ids are renumbered in their old order; merges keep their order and are
    kept when both parts and the result are kept; added tokens and the post-processor's special ids follow.
    """
    check_byte_level_bpe(spec)
    model = spec["model"]
    vocab = model["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    added = {int(t["id"]): t["content"] for t in spec.get("added_tokens", [])}
    old_ids = sorted(kept)
    new_id = {old: new for new, old in enumerate(old_ids)}
    kept_text = {by_id[i] for i in old_ids if i in by_id}
    merges = []
    for merge in model["merges"]:
        left, right = _pair(merge)
        if left in kept_text and right in kept_text and left + right in kept_text:
            merges.append(merge)
    out = {**spec, "model": {**model, "vocab": {by_id[i]: new_id[i] for i in old_ids if i in by_id},
                             "merges": merges}}
    out["added_tokens"] = [{**t, "id": new_id[int(t["id"])]} for t in spec.get("added_tokens", [])]
    missing = [i for i in old_ids if i not in by_id and i not in added]
    if missing:
        raise AssertionError(f"kept ids with no token: {missing[:5]}")
    out["post_processor"] = _remap_post(spec.get("post_processor"), new_id)
    if spec.get("padding"):
        out["padding"] = {**spec["padding"], "pad_id": new_id[spec["padding"]["pad_id"]]}
    return out, old_ids


def _remap_post(post: Any, new_id: dict[int, int]) -> Any:
    """A post-processor with its special tokens' ids renumbered (TemplateProcessing, Roberta/Bert, Sequence)."""
    if post is None:
        return None
    kind = post.get("type")
    if kind == "Sequence":
        return {**post, "processors": [_remap_post(p, new_id) for p in post["processors"]]}
    if kind == "TemplateProcessing":
        specials = {name: {**s, "ids": [new_id[i] for i in s["ids"]]} for name, s in post["special_tokens"].items()}
        return {**post, "special_tokens": specials}
    if kind in ("RobertaProcessing", "BertProcessing"):
        return {**post, "sep": [post["sep"][0], new_id[post["sep"][1]]],
                "cls": [post["cls"][0], new_id[post["cls"][1]]]}
    if kind == "ByteLevel":
        return post
    raise UnsupportedArchitectureError(f"trim-vocab: unknown post-processor {kind!r}")
