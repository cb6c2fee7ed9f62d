"""Self-consistency as a labeller: how right are the answers `supertiny teach --vote` accepts?

`teach --vote T` labels an unlabelled prompt with each field's majority over K samples and
keeps it only when every field's majority holds at least T of the K. Whether that is worth
training on depends on how often an agreed answer is right, which this measures on labelled
data with the labels hidden from the teacher: the same prompts through `teach` twice (K
samples with `--vote 0`, so every prompt's majority and agreement are recorded; and greedy
alone, the one answer a prompt gets without voting), then, per threshold T, the prompts
accepted, their share, and the task score on them of the majority answer and of the greedy
answer (and the greedy answer on every prompt: what keeping everything gives).

    python benchmarks/teach_vote.py --teacher DOMAIN_TEACHER.gguf \\
        --data examples/factory_tickets/data/handwritten_dev.jsonl -k 4 --keep vote-bench
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import start  # noqa: E402

HERE = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="The teacher: a model file or folder (a domain teacher's GGUF).")
    ap.add_argument("--task", default="factory-tickets")
    ap.add_argument("--data", type=Path, default=HERE / "examples/factory_tickets/data/handwritten_dev.jsonl",
                    help="Labelled task data; the labels are hidden from the teacher and used only to score.")
    ap.add_argument("-k", "--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--thresholds", default="0.5,0.75,1.0")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--constrained", action="store_true", help="Hold every sample to the task's schema.")
    args, work = start(ap, "supertiny-teach-vote-", "Keep the teach outputs here (a rerun reuses them).")

    from supertiny.stages.transfer.teach import TeachConfig, teach
    from supertiny.tasks import load_task, read_task_data, score

    task = load_task(args.task)
    records = read_task_data(args.data, task, labelled=True)[: args.limit]
    unlabelled = work / "prompts.jsonl"
    unlabelled.write_text("".join(json.dumps({"input": r.input}, ensure_ascii=False) + "\n" for r in records),
                          encoding="utf-8")
    reach = dict(concurrency=args.concurrency, threads=args.threads, constrained=args.constrained,
                 temperature=args.temperature, max_new_tokens=64, vote=0.0)
    runs = {}
    for name, k in (("greedy", 1), ("voted", args.samples)):
        out = work / f"{name}.jsonl"
        print(f"teach: {name} (K={k}) on {len(records)} prompts", flush=True)
        teach(args.teacher, task, unlabelled, out, TeachConfig(samples=k, **reach))
        runs[name] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]

    def task_score(lines: list[dict], idx: list[int]) -> float | None:
        if not idx:
            return None
        outs = [lines[i]["response"] or "" for i in idx]
        return score(task, outs, [records[i].label for i in idx]).task_score

    greedy, voted = runs["greedy"], runs["voted"]
    n = len(records)
    everything = list(range(n))
    rows = [("greedy, every prompt", n, 1.0, None, task_score(greedy, everything))]
    for t in (float(x) for x in args.thresholds.split(",")):
        idx = [i for i, v in enumerate(voted) if v["agreement"] and min(v["agreement"].values()) >= t]
        rows.append((f"vote >= {t:g} (K={args.samples})", len(idx), len(idx) / n, task_score(voted, idx),
                     task_score(greedy, idx)))
    rows.append((f"majority, every prompt (K={args.samples})", n, 1.0, task_score(voted, everything),
                 task_score(greedy, everything)))

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    print(f"\n{args.data.name}: {n} prompts, teacher {args.teacher}, temperature {args.temperature}\n")
    print("| accepted by | prompts | share | task score, majority answer | task score, greedy answer |")
    print("|---|---|---|---|---|")
    for name, count, share, maj, gre in rows:
        print(f"| {name} | {count} | {share:.2f} | {f(maj)} | {f(gre)} |")
    keys = ("accepted_by", "prompts", "share", "majority", "greedy")
    result = {"data": str(args.data), "teacher": args.teacher, "samples": args.samples,
              "rows": [dict(zip(keys, r, strict=True)) for r in rows]}
    (work / "teach_vote.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
