"""llama.cpp prefill vs torch fp32 on the same machine: which runtime setting and which GGUF type helps.

Prefill = the forward pass over a prompt before the first token (TTFT): ``--tokens``
(512) tokens of the bundled corpus, logits for the last position only on both sides
(torch: ``logits_to_keep=1``; llama.cpp: ``logits_all=False``). One "scoring" row also
keeps every position's logits on both sides (what ``eval`` does; the issue's 3.3 s vs
1.6 s). Settings tried on llama.cpp (``llama_cpp.Llama``, no rebuild): ``n_batch`` /
``n_ubatch`` (how many tokens one graph evaluation takes), threads, flash attention,
and the GGUF type: the shipped Q4_1 and, from ``--work`` (the concurrency sweep's
cache, made by ``benchmarks/concurrency_sweep.py --export-only``), Q4_0, Q8_0 and F16.

Within one file the settings take turns round by round (drift on a shared machine hits
them alike); torch runs before and after every file. Medians of ``--rounds``.

Run:  python benchmarks/prefill.py [--threads 2] [--rounds 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (label, n_batch, n_ubatch, flash attention, logits for every position)
SETTINGS = [
    ("default (512/512)", 512, 512, False, False),
    ("flash attention", 512, 512, True, False),
    ("n_ubatch 128", 512, 128, False, False),
    ("n_ubatch 256 + flash", 512, 256, True, False),
    ("n_batch 128", 128, 128, False, False),
]
SCORING = ("scoring: every position's logits", 512, 512, False, True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "supertiny-concurrency-sweep"))
    ap.add_argument("--types", default="Q4_1,Q4_0,Q8_0,F16")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import llama_cpp
    import torch

    from supertiny.evaluate import default_corpus_path, read_text
    from supertiny.models import default_teacher_path, load_model

    torch.set_num_threads(args.threads)
    teacher = load_model(default_teacher_path())
    ids = list(teacher.tokenizer(read_text(default_corpus_path()), add_special_tokens=False)["input_ids"])
    ids = ids[:args.tokens]
    x = torch.tensor([ids])

    def torch_s(keep: int) -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            teacher.model(input_ids=x, logits_to_keep=keep)
            return time.perf_counter() - t0

    torch_s(1)  # warm up
    torch_runs = {1: [], 0: []}

    def run_torch() -> None:
        for keep in (1, 0):
            torch_runs[keep].append(torch_s(keep))

    files = {"Q4_1": default_teacher_path(), **{t: Path(args.work) / f"teacher-{t}.gguf"
                                                for t in args.types.split(",") if t != "Q4_1"}}
    rows = []
    for qtype in args.types.split(","):
        path = files[qtype]
        if not path.is_file():
            print(f"  {qtype}: {path} missing (run benchmarks/concurrency_sweep.py --export-only)", file=sys.stderr)
            continue
        run_torch()
        settings = [*SETTINGS, SCORING] if qtype == "Q4_1" else SETTINGS
        llms = {s: llama_cpp.Llama(model_path=str(path), n_ctx=args.tokens + 64, n_batch=s[1], n_ubatch=s[2],
                                   n_threads=args.threads, n_threads_batch=args.threads, flash_attn=s[3],
                                   logits_all=s[4], verbose=False) for s in settings}
        times: dict[tuple, list[float]] = {s: [] for s in settings}
        for r in range(args.rounds + 1):  # round 0 warms up
            for s, llm in llms.items():
                llm.reset()
                t0 = time.perf_counter()
                llm.eval(ids)
                if r:
                    times[s].append(time.perf_counter() - t0)
        for s, llm in llms.items():
            llm.close()
            rows.append((qtype, s, statistics.median(times[s])))
            print(f"  {qtype} {s[0]}: {rows[-1][2]:.2f} s", file=sys.stderr, flush=True)
    run_torch()
    t_pre, t_all = statistics.median(torch_runs[1]), statistics.median(torch_runs[0])
    print(f"default teacher (SmolLM2-135M), {len(ids)}-token prompt, {args.threads} threads, {os.cpu_count()} cores, "
          f"medians of {args.rounds}; llama.cpp {llama_cpp.__version__}: "
          f"{llama_cpp.llama_print_system_info().decode().strip()}")
    print(f"torch fp32: prefill {t_pre:.2f} s ({len(ids) / t_pre:.0f} tok/s), scoring (all logits) {t_all:.2f} s\n")
    print("| GGUF | setting | seconds | tokens/s | vs torch fp32 |")
    print("|---|---|---|---|---|")
    for qtype, s, t in rows:
        ref = t_all if s[4] else t_pre
        print(f"| {qtype} | {s[0]} | {t:.2f} | {len(ids) / t:.0f} | {ref / t:.2f}x |")


if __name__ == "__main__":
    main()
