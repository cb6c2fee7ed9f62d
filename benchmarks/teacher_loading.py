"""Loading the default teacher: where the time goes, and what each tokenizer gets right.

Prints one table, measured in one run on this machine:
  - describe (metadata only) vs load_model (dequantize to float32), and load_model's
    GGUF path as it was (transformers' ``from_pretrained(dir, gguf_file=...)``) against
    supertiny's own loader (:mod:`supertiny.gguf_load`), each with the same validation
    and tokenizer steps, alternated so machine noise hits both,
  - supertiny's GGUF tokenizer vs transformers' own GGUF tokenizer conversion: build
    time, eos/add_bos, and agreement with llama.cpp's tokenization of the bundled text.

Run:  .venv/bin/python benchmarks/teacher_loading.py [--repeat 2]
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    import argparse

    import torch
    from llama_cpp import Llama
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from supertiny.evaluate import default_corpus_path
    from supertiny.gguf_file import GGUFFile
    from supertiny.gguf_tokenizer import tokenizer_from_gguf
    from supertiny.models import default_teacher_path, describe, describe_gguf, load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2, help="timed loads per loader (the minimum is shown)")
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    path = default_teacher_path()
    text = default_corpus_path().read_text(encoding="utf-8")
    probe = "It's 2026: café 你好 <|im_end|>\n  x"
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    reference = llm.tokenize(text.encode(), add_bos=False, special=True)

    def transformers_load():  # load_model's GGUF path before supertiny.gguf_load
        from transformers import AutoModelForCausalLM

        gf = GGUFFile(path)
        describe_gguf(gf)
        tokenizer_from_gguf(gf)
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)

    rows = []
    _, t = timed(lambda: describe("default"))
    rows.append(("describe (metadata only)", t, "", "", ""))
    load_model("default")  # warm imports and the page cache for both
    before, after = [], []
    for _ in range(args.repeat):
        before.append(timed(transformers_load)[1])
        after.append(timed(lambda: load_model("default"))[1])
    rows.append(("load_model (f32), transformers' GGUF loader", min(before), "", "", ""))
    rows.append(("load_model (f32), supertiny's GGUF loader", min(after), "", "", ""))

    def check(tok):
        adds_bos = tok("x")["input_ids"][:1] == [tok.bos_token_id]
        ids = tok(text, add_special_tokens=True)["input_ids"]
        if ids == reference:
            verdict = "exact"
        else:  # compare without the extra bos, so one shifted token does not hide the rest
            body = ids[1:] if adds_bos else ids
            same = sum(a == b for a, b in zip(body, reference, strict=False))
            verdict = f"differs: {len(ids)} tokens; w/o bos {same}/{len(reference)} equal"
        return (f"{tok.eos_token} / {adds_bos}", verdict,
                "yes" if tok.decode(tok(probe, add_special_tokens=False)["input_ids"]) == probe else "no")

    (tok, _), t = timed(lambda: tokenizer_from_gguf(GGUFFile(path)))
    rows.append(("tokenizer: supertiny (from GGUF)", t, *check(tok)))
    tok, t = timed(lambda: AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))
    rows.append(("tokenizer: transformers' GGUF conversion", t, *check(tok)))

    head = ("step", "seconds", "eos / adds bos", "vs llama.cpp on corpus", "decode round-trip")
    widths = [max(len(str(r[i])) if i != 1 else 8 for r in [head, *rows]) for i in range(5)]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        cells = [r[0], f"{r[1]:.1f}", r[2], r[3], r[4]]
        print(" | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)))
    print(f"\nllama.cpp reference: {len(reference)} tokens of {default_corpus_path().name}; "
          f"teacher file {path.name}, {os.cpu_count()} CPUs, torch threads default; load times are the "
          f"minimum of {args.repeat} alternated runs (before: {', '.join(f'{t:.1f}' for t in before)} s; "
          f"after: {', '.join(f'{t:.1f}' for t in after)} s).")


if __name__ == "__main__":
    main()
