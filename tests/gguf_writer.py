"""An F32 GGUF writer for tests that need tokenizer metadata the exporter would not write.

supertiny's exporter derives the ``tokenizer.ggml.*`` keys from a HF tokenizer; the
loader tests need files with chosen keys (another ``pre``, ``add_bos`` absent,
user-defined tokens, a SentencePiece vocabulary, an unsupported architecture), so
this writes the exporter's hyper-parameters and tensors with a vocabulary given as
plain lists.
"""

from __future__ import annotations

import json
from pathlib import Path


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

    from supertiny.stages.export.gguf_writer import add_hparams, permute_qk

    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    w = gguf.GGUFWriter(str(path), arch)
    add_hparams(w, cfg, "tiny test model", "f32", notes=[])
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
            data = permute_qk(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = permute_qk(data, n_kv)
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        w.add_tensor(new, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
