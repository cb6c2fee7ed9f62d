"""A minimal F32 GGUF writer for tests, on top of gguf-py.

It writes what llama.cpp's converter writes for a llama-family model (gguf-py's
tensor-name table, q/k rows permuted from the HF rotary layout, no output.weight
when embeddings are tied) so the loader can be tested on small files. The real
exporter lives in supertiny.export (issue: GGUF export).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def permute_for_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout (halves) -> llama.cpp's interleaved pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def bpe_vocab(tokenizer) -> tuple[list[str], list[str], list[int]]:
    """Tokens (by id), merges ("a b") and gguf token types of a HF byte-level BPE tokenizer."""
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    special = set(tokenizer.all_special_ids)
    types = [3 if i in special else 1 for i in range(n)]
    return tokens, merges, types


def write_gguf(
    path: Path,
    model,
    tokens: list[str],
    merges: list[str] | None,
    token_types: list[int],
    *,
    tokenizer_model: str = "gpt2",
    pre: str | None = "smollm",
    bos: int | None = 1,
    eos: int | None = 2,
    pad: int | None = None,
    add_bos: bool | None = False,
    add_eos: bool | None = None,
    scores: list[float] | None = None,
    chat_template: str | None = None,
    arch: str = "llama",
) -> Path:
    import gguf

    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(getattr(cfg, "rope_theta", 10000.0))
    w.add_rope_dimension_count(cfg.hidden_size // n_head)
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model(tokenizer_model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    for value, add in ((bos, w.add_bos_token_id), (eos, w.add_eos_token_id), (pad, w.add_pad_token_id)):
        if value is not None:
            add(value)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    if add_eos is not None:
        w.add_add_eos_token(add_eos)
    if chat_template:
        w.add_chat_template(chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = cfg.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        data = tensor.detach().float().numpy().copy()
        if name.endswith("q_proj.weight"):
            data = permute_for_llama_cpp(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = permute_for_llama_cpp(data, n_kv)
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        w.add_tensor(new, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
