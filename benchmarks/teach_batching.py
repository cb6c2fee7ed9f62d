"""`supertiny teach` with a local GGUF teacher: one engine per worker vs one batched engine.

The same task prompts, the same greedy replies cut at the first complete JSON object (what
teach asks), through

* ``engines``: :class:`~supertiny.stages.transfer.teachers.LocalTeacher`, one single-sequence
  llama.cpp engine per worker with ``--threads`` each (teach before issue 13; the recipes'
  ``concurrency = 2``, ``threads = 1``), each engine reusing its previous prompt's prefix;
* ``batched``: :class:`~supertiny.stages.transfer.teachers.BatchedTeacher`, one engine decoding the
  workers' requests together with the same threads in all (``teach --batched``), its prompt
  cache reusing the shared system prompt per slot.

Modes alternate (rounds), best round kept; prints prompts/s per mode, the speedup, and how
many replies the two agree on (greedy; the two paths differ by rounding).

    python benchmarks/teach_batching.py --model TEACHER.gguf [--workers 2,4] [-n 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supertiny.models import resolve  # noqa: E402
from supertiny.runtime.engines.sampling import Sampling  # noqa: E402
from supertiny.stages.transfer.teachers import BatchedTeacher, LocalTeacher, TeacherOptions  # noqa: E402
from supertiny.tasks import load_task, read_task_data  # noqa: E402


def run(teacher, pool: ThreadPoolExecutor, chats: list, max_tokens: int) -> tuple[float, list[str]]:
    greedy = Sampling()
    t0 = time.perf_counter()
    replies = list(pool.map(lambda c: teacher.complete(c, greedy, max_tokens, until_json=True), chats))
    return time.perf_counter() - t0, replies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="a .gguf teacher (default: the default teacher)")
    ap.add_argument("--task", default="factory-tickets")
    ap.add_argument("--prompts", default="examples/factory_tickets/data/train.jsonl")
    ap.add_argument("-n", type=int, default=48, help="prompts")
    ap.add_argument("--workers", default="2,4")
    ap.add_argument("--threads", type=int, default=1, help="threads per worker (teach --threads)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    task = load_task(args.task)
    chats = [task.messages(r.input) for r in read_task_data(args.prompts, task)[:args.n]]
    _, path = resolve(args.model)
    print(f"{Path(path).name}, {len(chats)} prompts of {args.task}, max {args.max_new_tokens} new tokens, greedy, "
          f"{args.threads} thread(s) per worker, {os.cpu_count()} cores, best of {args.rounds} round(s)")
    print("| workers | engines: prompts/s | batched: prompts/s | batched / engines | replies equal |")
    print("|---|---|---|---|---|")
    for workers in [int(w) for w in args.workers.split(",")]:
        options = TeacherOptions(threads=args.threads)
        teachers = {"engines": LocalTeacher(str(path), options, workers),
                    "batched": BatchedTeacher(path, str(path), options, workers)}
        # one pool per teacher for the whole run, as teach has: a local teacher's engine is per thread
        pools = {name: ThreadPoolExecutor(workers) for name in teachers}
        best: dict[str, float] = {}
        replies: dict[str, list[str]] = {}
        for name, teacher in teachers.items():  # warm up: weights paged in, system prompt cached
            run(teacher, pools[name], chats[:workers], 8)
        for _ in range(args.rounds):
            for name, teacher in teachers.items():
                seconds, replies[name] = run(teacher, pools[name], chats, args.max_new_tokens)
                best[name] = min(best.get(name, seconds), seconds)
                print(f"  {name} x{workers}: {seconds:.1f} s", file=sys.stderr, flush=True)
        for name, teacher in teachers.items():
            pools[name].shutdown()
            teacher.close()
        same = sum(a == b for a, b in zip(replies["engines"], replies["batched"], strict=True))
        e, b = len(chats) / best["engines"], len(chats) / best["batched"]
        print(f"| {workers} | {e:.2f} | {b:.2f} | {b / e:.2f}x | {same}/{len(chats)} |", flush=True)


if __name__ == "__main__":
    main()
