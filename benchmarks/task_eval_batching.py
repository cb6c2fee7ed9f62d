"""Task evaluation on the torch backend: one record at a time vs left-padded batches.

One run, side by side: ``supertiny eval MODEL --task TASK --data FILE --batch-size B`` for
each B in ``--batch-sizes`` on the same records, the same model loaded once; prints
records/s, the speed-up over B=1, the task score and whether every reply equals B=1's
(greedy decoding; a padded batch may flip a near-tied token, which the table would show).

Run:  .venv/bin/python benchmarks/task_eval_batching.py MODEL [--limit 32] [--batch-sizes 1,4,16]
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="A Hugging Face directory (e.g. a distilled student).")
    ap.add_argument("--task", default="factory-tickets")
    ap.add_argument("--data", default="examples/factory_tickets/data/test.jsonl")
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args, _ = start(ap, "supertiny-evalbatch-", "Unused (nothing is written).")
    from functools import partial

    from supertiny.runtime.engines.torch_engine import TorchEngine
    from supertiny.tasks import engine_complete, evaluate_task, read_task_data, task_for

    task = task_for(args.task, args.model)
    records = read_task_data(args.data, task, labelled=True)[: args.limit]
    engine = TorchEngine(args.model, threads=args.threads)
    many = partial(engine.complete_batch, max_tokens=args.max_new_tokens)
    engine.complete_batch([task.messages(records[0].input)], max_tokens=4)  # warm-up
    rows, base = [], None
    for b in (int(x) for x in args.batch_sizes.split(",")):
        t0 = time.perf_counter()
        ev = evaluate_task(engine_complete(engine, args.max_new_tokens), task, records, complete_batch=many,
                           batch_size=b)
        secs = time.perf_counter() - t0
        base = base or (secs, ev.outputs)
        rows.append((b, len(records) / secs, base[0] / secs, ev.score.task_score,
                     sum(a == c for a, c in zip(ev.outputs, base[1], strict=True))))
    print(f"{args.model}: {len(records)} records of {args.data}, prompt {task.prompt}, {engine.threads} threads")
    print(f"{'batch':>5} {'records/s':>9} {'speed-up':>8} {'task score':>10} {'replies = batch 1':>17}")
    for b, rps, up, score, same in rows:
        print(f"{b:>5} {rps:>9.2f} {up:>7.2f}x {score:>10.3f} {same:>11}/{len(records)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
