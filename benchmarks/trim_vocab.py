"""Vocabulary trimming, side by side: one student at each vocabulary size, through the bundle's own chain.

For each ``--keeps`` value (``full``: no trimming) the student (a distilled Hugging Face dir) goes through
``supertiny trim-vocab`` (the task's data + the tokenizer's N most frequent tokens) → ``supertiny quantize``
(the quick recipe's W4A16: GPTQ, 4-bit groups of 32, symmetric, 4-bit head) → ``supertiny export gguf``
(codes carried), and the GGUF is measured in one run with the teacher's F16 GGUF (the speed reference) and F32
checkpoint (the size reference):

  vocab, GGUF bytes and compression vs the teacher's F32 bytes; decode tokens/s and TTFT (2 threads, one config
  for all) and the speed-up vs the teacher F16; how many more tokens the same text needs (the test split's
  inputs, the hand-written inputs, general text); the task score (llama.cpp, constrained, as the bundle
  is scored) on the test split and each hand-written set, and as a share of the domain teacher's.

Stage outputs live in WORK/keep-N/ (a rerun reuses them); scores are cached like paper_table.py's. The timings run
last: every GGUF and the teacher's, one after another, ``--rounds`` times; each one's best round is kept.
Writes WORK/trim_vocab.json and a plot (WORK/trim_vocab.png: bytes and speed vs the teacher, quality kept).

RUN is a `supertiny run` folder of the factory-tickets task: its student (RUN/distill), domain teacher
(RUN/prototype), the data the student learnt (its distill manifest's ``--data``: the teacher data, or the labelled
train split of a recipe without teach) and the teacher's scores as the bundle reports them
(RUN/eval-teacher*/report.json: its Q8_0 GGUF, constrained).

Run:  python benchmarks/trim_vocab.py --run RUN --work /tmp/trimbench [--keeps full,0,8000] [--no-speed]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from paper_table import DATA, TASK, cached, cli, content_hash, model_bytes, speed, task_eval, teacher_gguf

SETS = {"test": DATA / "test.jsonl", "handwritten": DATA / "handwritten.jsonl",
        "handwritten_dev": DATA / "handwritten_dev.jsonl"}
QUANTIZE = ("--scheme", "w4a16", "--method", "gptq", "--group", "32", "--symmetric", "--head-bits", "4")


def run_stage(argv: list[Any], out: Path) -> None:
    """Run a ``supertiny`` stage into ``out`` unless a finished output is already there."""
    done = out / "supertiny.json" if not out.suffix else out.with_name(out.name + ".supertiny.json")
    if done.is_file():
        return
    print("$ supertiny " + " ".join(map(str, argv)), file=sys.stderr)
    subprocess.run(cli(*argv), check=True, stdout=subprocess.DEVNULL)


def make(student: Path, keep: str, data: Path, work: Path, threads: int) -> tuple[Path, dict[str, Any] | None]:
    """The carried-Q4 GGUF of ``student`` with ``keep`` (and the trim manifest's figures)."""
    folder = work / f"keep-{keep}"
    folder.mkdir(parents=True, exist_ok=True)
    model, trim = student, None
    if keep != "full":
        model = folder / "trimmed"
        run_stage(["trim-vocab", student, model, "--task", TASK, "--data", data, "--dev", DATA / "dev.jsonl",
                   "--keep", keep], model)
        trim = json.loads((model / "supertiny.json").read_text())
    quantized = folder / "quantized"
    run_stage(["quantize", model, quantized, "--task", TASK, "--data", data, *QUANTIZE], quantized)
    gguf = folder / "model.gguf"
    run_stage(["export", "gguf", quantized, gguf, "--quant", "carry", "--threads", threads], gguf)
    return gguf, trim


def token_ratios(student: Path, trimmed: Path | None) -> dict[str, float]:
    """Tokens the trimmed tokenizer needs per token of the full one, on each set's inputs and general text."""
    if trimmed is None:
        return {}
    from transformers import AutoTokenizer

    from supertiny.readers import default_corpus_path, read_jsonl

    full, trim = (AutoTokenizer.from_pretrained(str(p)) for p in (student, trimmed))
    texts = {name: [r.data["input"] for r in read_jsonl(path)] for name, path in SETS.items()}
    texts["general"] = [default_corpus_path().read_text(encoding="utf-8")]

    def n(tok: Any, xs: list[str]) -> int:
        return sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in xs)

    return {name: round(n(trim, xs) / n(full, xs), 4) for name, xs in texts.items()}


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Left: bytes and decode speed vs the teacher, per vocabulary size; right: the task score on each set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['vocab'] or 49152:,}\n(keep {r['keep']})" for r in rows]
    x = list(range(len(rows)))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar([i - 0.2 for i in x], [r["compression"] for r in rows], 0.4, label="x fewer bytes than the F32 teacher")
    a.bar([i + 0.2 for i in x], [r["speedup"] for r in rows], 0.4, label="x the teacher F16's decode tok/s")
    a.axhline(20, color="C0", ls=":", lw=1)
    a.axhline(6, color="C1", ls=":", lw=1)
    a.set_xticks(x, labels, fontsize=8)
    a.set_xlabel("vocabulary (tokens kept)")
    a.legend(fontsize=8)
    a.set_title("size and speed (dotted: the 20x and 6x targets)", fontsize=9)
    for name, key in (("test split", "test"), ("hand-written 24", "handwritten"), ("hand-written 120",
                                                                                "handwritten_dev")):
        b.plot(x, [r[f"of_teacher_{key}"] for r in rows], marker="o", label=name)
    b.axhline(0.95, color="grey", ls=":", lw=1)
    b.set_xticks(x, labels, fontsize=8)
    b.set_ylabel("task score / domain teacher's")
    b.legend(fontsize=8)
    b.set_title("quality kept (dotted: 95%)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="A `supertiny run` folder (distill, prototype, eval-teacher*).")
    ap.add_argument("--work", required=True)
    ap.add_argument("--keeps", default="full,0,8000", help="Comma-separated --keep values; full: untrimmed.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="Measured runs per timing.")
    ap.add_argument("--new-tokens", type=int, default=64, help="Tokens decoded per measured run.")
    ap.add_argument("--rounds", type=int, default=3, help="Timings of every GGUF, in turn; the best is kept.")
    ap.add_argument("--no-speed", action="store_true", help="Make and score only (e.g. while the machine is busy); "
                    "a later run reuses both and times every GGUF together.")
    ap.add_argument("--json", default=None, help="Write the rows here (default WORK/trim_vocab.json).")
    ap.add_argument("--plot", default=None, help="Write the plot here (default WORK/trim_vocab.png).")
    args = ap.parse_args()
    from supertiny.runtime.bench.measure import BenchConfig

    run = Path(args.run).resolve()
    missing = [p for p in ("distill/supertiny.json", "prototype", "eval-teacher/report.json") if not (run / p).exists()]
    if missing:
        raise SystemExit(f"{run} is not a finished `supertiny run` folder of factory-tickets: no {', '.join(missing)}")
    work, student, teacher = Path(args.work), run / "distill", run / "prototype"
    teach_data = Path(json.loads((student / "supertiny.json").read_text())["settings"]["data"])
    if not teach_data.is_file():
        raise SystemExit(f"{student}: the data it learnt is gone: {teach_data}")
    work.mkdir(parents=True, exist_ok=True)
    config = BenchConfig(prompt_lengths=(128,), new_tokens=args.new_tokens, repeats=args.repeats, warmup=1,
                         concurrency=(1,), requests=1, threads=args.threads)
    t_gguf = teacher_gguf(teacher, content_hash(teacher), work, args.threads)
    teacher_scores = {name: json.loads((run / f"eval-teacher{'' if name == 'test' else '-' + name}" / "report.json")
                                       .read_text()) for name in SETS}
    f32 = model_bytes(teacher)
    made = []
    for keep in args.keeps.split(","):  # every artifact and score first; the timings after, together
        gguf, trim = make(student, keep, teach_data, work, args.threads)
        h = content_hash(gguf)
        scores = {name: cached(work, "eval", {"model": h, "data": str(p)},
                               lambda p=p, g=gguf: task_eval(g, p, None, args.threads)) for name, p in SETS.items()}
        made.append((keep, gguf, trim, scores))
    if args.no_speed:
        return 0
    # the timings: every GGUF, the teacher's first, once per round; each one's best round (a busy moment slows a
    # single measurement, never speeds it up)
    times: dict[Path, list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        for g in [t_gguf, *(m[1] for m in made)]:
            times.setdefault(g, []).append(speed(g, config))
        shown = ", ".join(f"{g.parent.name}/{g.name} {t[-1]['decode_tokens_per_s']:.0f}" for g, t in times.items())
        print(f"round {r + 1}/{args.rounds} (decode tok/s): {shown}", file=sys.stderr)
    best = {g: max(t, key=lambda x: x["decode_tokens_per_s"]) for g, t in times.items()}
    t_speed = best[t_gguf]
    rows = []
    for keep, gguf, trim, scores in made:
        s = best[gguf]
        trimmed = None if trim is None else work / f"keep-{keep}" / "trimmed"
        rows.append({"keep": keep, "vocab": trim["details"]["vocab"]["after"] if trim else None,
                     "bytes": gguf.stat().st_size, "compression": f32 / gguf.stat().st_size,
                     "decode": s["decode_tokens_per_s"], "ttft_ms": s["ttft_ms"],
                     "speedup": s["decode_tokens_per_s"] / t_speed["decode_tokens_per_s"],
                     # round by round (the teacher timed just before): how steady the ratio is on this machine
                     "speedup_median": statistics.median(a["decode_tokens_per_s"] / b["decode_tokens_per_s"]
                                                         for a, b in zip(times[gguf], times[t_gguf], strict=True)),
                     "tokens": token_ratios(student, trimmed), "trim_quality": trim["quality"] if trim else None,
                     **{f"score_{n}": sc["task_score"] for n, sc in scores.items()},
                     **{f"of_teacher_{n}": sc["task_score"] / teacher_scores[n]["task_score"]
                        for n, sc in scores.items()}})
    ts = {n: sc["task_score"] for n, sc in teacher_scores.items()}
    print(f"teacher: F32 {f32 / 1e6:.1f} MB; F16 GGUF decode {t_speed['decode_tokens_per_s']:.1f} tok/s, TTFT "
          f"{t_speed['ttft_ms']:.0f} ms; task score (Q8_0, constrained) test {ts['test']:.3f}, hand-written 24 "
          f"{ts['handwritten']:.3f}, 120 {ts['handwritten_dev']:.3f}")
    print("| keep | vocab | GGUF MB | vs F32 | decode tok/s | vs teacher F16 (best / median round) | TTFT ms | "
          "tokens test / hw24 / hw120 / general | test | hw24 | hw120 | % of teacher test / hw24 / hw120 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["tokens"]
        tokens = " / ".join(f"{t[k]:.3f}" for k in ("test", "handwritten", "handwritten_dev", "general")) if t \
            else "1 (full)"
        print(f"| {r['keep']} | {r['vocab'] or 49152:,} | {r['bytes'] / 1e6:.1f} | {r['compression']:.1f}x | "
              f"{r['decode']:.1f} | {r['speedup']:.2f}x / {r['speedup_median']:.2f}x | {r['ttft_ms']:.0f} | {tokens} | "
              f"{r['score_test']:.3f} | "
              f"{r['score_handwritten']:.3f} | {r['score_handwritten_dev']:.3f} | {r['of_teacher_test']:.1%} / "
              f"{r['of_teacher_handwritten']:.1%} / {r['of_teacher_handwritten_dev']:.1%} |")
    plot(rows, Path(args.plot or work / "trim_vocab.png"))
    out = Path(args.json or work / "trim_vocab.json")
    out.write_text(json.dumps({"teacher": {"f32_bytes": f32, "speed": t_speed, "scores": teacher_scores},
                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
