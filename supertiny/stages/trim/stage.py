"""The trim-vocab stage: a model in, the same model with only the tokens its task needs out.

A student keeps its teacher's whole vocabulary (SmolLM2: 49,152 rows of a tied 576-wide embedding, a third of the
85M parameters of a 16-layer student and of every decode step), and a domain task uses a small part of it
(VocabTailor, 2025; vocabulary reduction for SLMs, COLING 2025). The kept set is

* every token of the task's data as the student is trained on it (``--data``: chat prompt + answer, with
  ``--min-count``), so that data tokenizes exactly as before;
* the tokenizer's ``--keep`` most frequent tokens: the first of its merge order (BPE learns its merges most
  frequent first), or with ``--text``, the most frequent tokens of that text, so unseen text stays short;
* the special tokens, every single-byte token and the merge parts of every kept token (:mod:`.vocab`): the trimmed
  tokenizer encodes *any* text, unseen words in shorter pieces and at worst bytes, never an unknown token.

The embedding and output rows of the kept ids are sliced out (new ids in the old order), and the result is a plain
Hugging Face directory with its own ``tokenizer.json``; both exporters write it as they write any model. The
manifest records the kept count, how many more tokens the same text needs (the task's data, ``--dev`` inputs, the
bundled general text), the id map (``vocab_map.json``: new id -> old id), and what it costs: on the task's
examples, how often the trimmed model's next-token argmax is the source's, and how much probability the source put
on dropped tokens; on general text, bits per byte (tokenizer-independent) of both.

Example::

    trim_vocab("distilled/", "trimmed/", TrimVocabConfig(keep=8000), task="factory-tickets", data="teacher.jsonl")
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError
from supertiny.manifest import Manifest, read_manifest
from supertiny.models import load_model, resolve
from supertiny.outdir import check_output_dir
from supertiny.readers import default_corpus_path, read_jsonl, read_text
from supertiny.settings import NON_NEG_INT, POS_INT, Settings, setting
from supertiny.stages.registry import Input, Log, Progress, get, stage
from supertiny.stages.runs import model_run, settings
from supertiny.stages.transfer.examples import chat_pair, check_chat_template
from supertiny.stages.trim.vocab import ID_MAP, check_byte_level_bpe, closure, merge_order, trim_spec

STAGE, STAGE_VERSION = "trim-vocab", 1
BPB_CHARS = 4000  # of the bundled general text, scored in bits per byte by both models
CHECK_EXAMPLES = 32  # task examples on which trimmed and source model are compared
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id")


@dataclass(frozen=True)
class TrimVocabConfig(Settings):
    """What to keep."""

    keep: int = setting(8000, "Also keep the tokenizer's N most frequent tokens: the first N of its merge order, or "
                        "with --text, that text's N most frequent (0: only the task's tokens).", check=NON_NEG_INT)
    min_count: int = setting(1, "Keep a token of --data (or --text) only when it occurs at least this often.",
                             check=POS_INT)
    check_examples: int = setting(CHECK_EXAMPLES, "Task examples on which the trimmed and the source model's "
                                  "next-token choices are compared.", check=NON_NEG_INT, role="internal")
    overwrite: bool = setting(False, "Replace OUT_DIR if it is not empty.", off="", role="run")


INPUTS = (Input("model", "A Hugging Face directory, a .gguf file or 'default' (before quantization).", kind="model",
                argument=True),
          Input("task", "A shipped task's name (factory-tickets) or a task .toml file (renders --data as the student "
                "is trained on it).", kind="task", required=False),
          Input("data", "With --task: teacher data (input, response) or task data (input, label) whose tokens are "
                "kept.", required=False),
          Input("dev", "With --task: task data whose inputs measure the token-count increase on unseen text (not "
                "kept).", required=False),
          Input("text", "UTF-8 text: with --keep N, its N most frequent tokens are kept (default: the tokenizer's "
                "merge order).", required=False))


@stage(STAGE, version=STAGE_VERSION, config=TrimVocabConfig, inputs=INPUTS, output="dir", command=("trim-vocab",))
def run(inputs: dict[str, str | None], out: Path, config: TrimVocabConfig, log: Log, progress: Progress | None
        ) -> Manifest:
    """Trim ``inputs["model"]``'s vocabulary into the Hugging Face directory ``out`` (see the module docstring)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: only a trimming process needs them

    from supertiny.tasks.prompts import task_for

    model = inputs["model"]
    if (inputs["data"] or inputs["dev"]) and not inputs["task"]:
        raise InvalidInputError("--data and --dev are task data: pass --task too")
    if inputs["data"] is None and inputs["text"] is None and config.keep == 0:
        raise InvalidInputError("nothing to keep: give --task with --data, --text, or --keep N")
    check_output_dir(out, config.overwrite)
    source = read_manifest(resolve(model)[1])
    if source is not None and source.stage == "quantize":
        raise InvalidInputError(f"{model} is a quantized checkpoint: trim the vocabulary before `supertiny quantize` "
                                "(its stored codes, which the exporters carry, would no longer match the rows)")
    # the prompt the model was trained with (its manifest's record), as distill renders it
    task = task_for(inputs["task"], model, training=True) if inputs["task"] else None
    run_ = model_run(STAGE, STAGE_VERSION, out, model, settings(config, task=inputs["task"], data=inputs["data"],
                                                                     dev=inputs["dev"], text=inputs["text"]))
    lm = load_model(model)
    run_.lap("load")
    tok = lm.tokenizer
    spec = json.loads(tok.backend_tokenizer.to_str())
    check_byte_level_bpe(spec)
    full_size = lm.model.get_input_embeddings().weight.shape[0]

    pairs = rendered_examples(inputs["data"], task, tok) if inputs["data"] else []
    data_texts = [p + a for p, a in pairs]
    counts: Counter[int] = Counter()
    for prompt, answer in pairs:  # as distill tokenizes them: the prompt, then the answer
        counts.update(tok(prompt, add_special_tokens=False)["input_ids"])
        counts.update(tok(answer, add_special_tokens=False)["input_ids"])
    from_data = {i for i, n in counts.items() if n >= config.min_count}
    wanted = set(from_data)
    if inputs["text"]:
        text_counts = Counter(tok(read_text(inputs["text"]), add_special_tokens=False)["input_ids"])
        wanted |= {i for i, n in text_counts.most_common(config.keep) if n >= config.min_count}
    else:
        wanted |= merge_order(spec, config.keep)
    kept = closure(spec, {i for i in wanted if i < full_size})
    new_spec, old_ids = trim_spec(spec, kept)
    log(f"keeping {len(old_ids):,} of {full_size:,} tokens ({len(from_data):,} from the task's data)")

    with run_:
        source_model = copy.deepcopy(lm.model)
        _slice(lm.model, old_ids)
        trimmed_tok = _tokenizer(tok, new_spec)
        lm.model.save_pretrained(run_.dir, safe_serialization=True)
        trimmed_tok.save_pretrained(run_.dir)
        (run_.dir / ID_MAP).write_text(json.dumps({"old_ids": old_ids, "source_vocab_size": full_size}) + "\n")
        log("reloading the trimmed model with transformers and comparing it with the source")
        student = AutoModelForCausalLM.from_pretrained(str(run_.dir), use_safetensors=True,
                                                       trust_remote_code=False).eval()
        new_tok = AutoTokenizer.from_pretrained(str(run_.dir), trust_remote_code=False)
        with run_.step("compare"):
            general = read_text(default_corpus_path())
            tokens = _token_counts(tok, new_tok, data_texts, _inputs(inputs["dev"]) if inputs["dev"] else [], general)
            quality = {**_next_token(source_model, student, new_tok, pairs, old_ids, config.check_examples),
                       **_bits_per_byte(source_model, student, tok, new_tok, general[:BPB_CHARS])}
        details = {"vocab": {"before": full_size, "after": len(old_ids), "kept": round(len(old_ids) / full_size, 4),
                             "from_data": len(from_data), "data_distinct": len(counts),
                             "from_keep": config.keep, "merges_before": len(spec["model"]["merges"]),
                             "merges_after": len(new_spec["model"]["merges"])},
                   "id_map": ID_MAP, "tokens": tokens,
                   "parameters": {"before": source_model.num_parameters(), "after": student.num_parameters()}}
        return run_.install(quality=quality, details=details)


def rendered_examples(path: str, task: Any, tok: Any) -> list[tuple[str, str]]:
    """Each record as distill renders it (:func:`~supertiny.stages.transfer.examples.chat_pair`): ``(prompt,
    answer)``, the answer with the end token; a prompt whose response was rejected keeps its prompt, answer ``""``."""
    check_chat_template(tok)
    pairs = []
    for r in read_jsonl(path):
        prompt, answer = chat_pair(r, task, tok)
        pairs.append((prompt, answer + (tok.eos_token or "") if answer is not None else ""))
    return pairs


def _inputs(path: str) -> list[str]:
    return [r.field("input", str) for r in read_jsonl(path)]


def _slice(model: Any, old_ids: list[int]) -> None:
    """Keep the embedding (and output) rows of ``old_ids`` in that order; renumber the config's special ids."""
    import torch

    index = torch.tensor(old_ids, dtype=torch.long)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    with torch.no_grad():
        emb.weight = torch.nn.Parameter(emb.weight[index].clone())
        emb.num_embeddings = len(old_ids)
        if head is not None:
            head.weight = emb.weight if tied else torch.nn.Parameter(head.weight[index].clone())
            if getattr(head, "bias", None) is not None:
                head.bias = torch.nn.Parameter(head.bias[index].clone())
            head.out_features = len(old_ids)
    model.config.vocab_size = len(old_ids)
    new_id = {old: new for new, old in enumerate(old_ids)}
    for cfg in (model.config, getattr(model, "generation_config", None)):
        for key in SPECIAL_IDS:
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int):
                setattr(cfg, key, new_id.get(value))
            elif isinstance(value, list):
                setattr(cfg, key, [new_id[v] for v in value if v in new_id])


def _tokenizer(tok: Any, spec: dict[str, Any]) -> Any:
    """A fast tokenizer over the trimmed ``tokenizer.json``, with the source's special tokens and chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    new = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token=tok.bos_token, eos_token=tok.eos_token,
        pad_token=tok.pad_token, unk_token=tok.unk_token, model_max_length=tok.model_max_length,
        clean_up_tokenization_spaces=getattr(tok, "clean_up_tokenization_spaces", False),
        additional_special_tokens=list(getattr(tok, "additional_special_tokens", []) or []))
    if getattr(tok, "chat_template", None):
        new.chat_template = tok.chat_template
    if tok.init_kwargs.get("gguf_pre"):
        new.init_kwargs["gguf_pre"] = tok.init_kwargs["gguf_pre"]
    return new


def _ratio(before: int, after: int) -> dict[str, Any]:
    return {"before": before, "after": after, "ratio": round(after / before, 4) if before else None}


def _token_counts(tok: Any, new: Any, data: list[str], dev: list[str], general: str) -> dict[str, Any]:
    """How many tokens the same text needs before and after trimming."""
    def n(t: Any, texts: list[str]) -> int:
        return sum(len(t(x, add_special_tokens=False)["input_ids"]) for x in texts)

    out = {"general_text": _ratio(n(tok, [general]), n(new, [general]))}
    if data:
        out["data"] = _ratio(n(tok, data), n(new, data))
    if dev:
        out["dev_inputs"] = _ratio(n(tok, dev), n(new, dev))
    return out


def _next_token(source: Any, trimmed: Any, new_tok: Any, pairs: list[tuple[str, str]], old_ids: list[int],
                limit: int) -> dict[str, Any]:
    """On the answers of the task's examples (tokenized by the trimmed tokenizer, fed to both models): the share of
    answer positions where the trimmed model's argmax is the source's, and the source's mean probability there on
    dropped tokens (what decoding an answer can no longer pick)."""
    import torch

    pairs = [(p, a) for p, a in pairs if a][:limit]
    if not pairs:
        return {}
    index = torch.tensor(old_ids)
    agree = positions = 0
    dropped_mass = 0.0
    with torch.inference_mode():
        for prompt, answer in pairs:
            p_ids = new_tok(prompt, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + new_tok(answer, add_special_tokens=False)["input_ids"]])
            at = slice(max(len(p_ids) - 1, 0), ids.shape[1] - 1)  # the positions that predict answer tokens
            p = source(input_ids=index[ids]).logits[0, at].float().softmax(-1)
            q = trimmed(input_ids=ids).logits[0, at].float()
            agree += int((index[q.argmax(-1)] == p.argmax(-1)).sum())
            dropped_mass += float((1 - p[:, index].sum(-1)).clamp_min(0).sum())
            positions += p.shape[0]
    return {"examples": len(pairs), "answer_positions": positions, "top1_agreement": round(agree / positions, 6),
            "dropped_mass_mean": round(dropped_mass / positions, 8)}


def _bits_per_byte(source: Any, trimmed: Any, tok: Any, new_tok: Any, text: str) -> dict[str, Any]:
    """Bits per byte of ``text`` under each model with its own tokenizer (comparable across vocabularies)."""
    from supertiny import evaluate as ev

    size = len(text.encode("utf-8"))
    out = {}
    for name, model, t in (("source", source, tok), ("trimmed", trimmed, new_tok)):
        ids = ev.tokenize_text(t, text)
        score = ev.perplexity(ev.torch_logits(model), ids)
        out[f"{name}_bits_per_byte"] = round(score.nll_mean * score.tokens_scored / math.log(2) / size, 5)
    return {"general_text": out}


def trim_vocab(model: str | os.PathLike[str], out: str | os.PathLike[str], config: TrimVocabConfig | None = None,
               task: str | os.PathLike[str] | None = None, data: str | os.PathLike[str] | None = None,
               dev: str | os.PathLike[str] | None = None, text: str | os.PathLike[str] | None = None,
               log: Log | None = None, progress: Progress | None = None) -> Manifest:
    """Trim MODEL's vocabulary into OUT, a plain Hugging Face directory (see the module docstring)."""
    return get(STAGE).call({"model": model, "task": task, "data": data, "dev": dev, "text": text}, out,
                           config or TrimVocabConfig(), log, progress)
