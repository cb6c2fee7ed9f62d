"""The MiniLM baseline on any task: heads on frozen all-MiniLM-L6-v2 embeddings, scored with the task's metric.

The BERT-style baseline a distilled bundle must beat (`supertiny.baselines.minilm`): one head per enum/bool
field, a yes/no head per value of a list field, ridge regression for a number, and the first-span rule for an
extractive string field, trained on TRAIN with weight decay and steps picked on DEV, then scored on each
--data set with the same metric `supertiny eval` uses. Prints one row per set (task score and every field).

    python benchmarks/minilm_baseline.py --task examples/support_emails/task.toml \\
        --train examples/support_emails/data/train.jsonl --dev examples/support_emails/data/dev.jsonl \\
        --data examples/support_emails/data/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import start  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "examples/factory_tickets/data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="factory-tickets", help="A shipped task's name or a task .toml file.")
    ap.add_argument("--train", type=Path, default=DATA / "train.jsonl")
    ap.add_argument("--dev", type=Path, default=DATA / "dev.jsonl")
    ap.add_argument("--data", type=Path, action="append", default=None,
                    help="A labelled set to score (repeatable; default: the factory-tickets test split and the two "
                    "hand-written sets).")
    ap.add_argument("--threads", type=int, default=2)
    args, work = start(ap, "supertiny-minilm-", "Write minilm_baseline.json here.")

    from supertiny.baselines.minilm import MiniLM, TaskBaseline
    from supertiny.tasks import load_task, read_task_data

    task = load_task(args.task)
    sets = args.data or [DATA / "test.jsonl", DATA / "handwritten.jsonl", DATA / "handwritten_dev.jsonl"]
    train, dev = (read_task_data(p, task, labelled=True) for p in (args.train, args.dev))
    base = TaskBaseline.train(task, train, dev, MiniLM(threads=args.threads))
    rows = {}
    for path in sets:
        evaluation, _ = base.evaluate(read_task_data(path, task, labelled=True))
        rows[str(path)] = {"n": evaluation.score.n, "task_score": evaluation.score.task_score,
                           "fields": evaluation.score.fields}
    fields = list(task.field_names)
    print(f"\nMiniLM + heads on {task.name}: trained on {args.train.name} ({len(train)}), dev {args.dev.name}\n")
    print("| set | n | task score | " + " | ".join(fields) + " |")
    print("|---|---|---|" + "---|" * len(fields))
    for path, r in rows.items():
        print(f"| {Path(path).name} | {r['n']} | {r['task_score']:.3f} | "
              + " | ".join(f"{r['fields'][f]:.3f}" for f in fields) + " |")
    (work / "minilm_baseline.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
