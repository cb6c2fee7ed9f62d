"""How much llama.cpp's prompt-prefix cache saves `supertiny teach` (task prompts share a long system prompt).

One llama.cpp engine answers the same task prompts twice, interleaved prompt by prompt:
  cached: the engine is never reset (what `supertiny teach` does: one engine per worker), so a
          prompt re-evaluates only what it does not share with the previous one;
  reset:  engine.reset() before each prompt, so every prompt is evaluated in full.
Time to first token (prompt evaluation) and the whole sample time are reported per mode.

    python benchmarks/teach_prefix_cache.py --model default --prompts examples/factory_tickets/data/dev.jsonl -n 6
"""

from __future__ import annotations

import argparse
import statistics
import time

from supertiny.runtime.engines.base import open_engine
from supertiny.runtime.engines.sampling import Sampling
from supertiny.tasks import load_task, read_task_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--task", default="factory-tickets")
    ap.add_argument("--prompts", default="examples/factory_tickets/data/dev.jsonl")
    ap.add_argument("-n", type=int, default=6, help="prompts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()

    task = load_task(args.task)
    records = read_task_data(args.prompts, task)[: args.n]
    engine = open_engine(args.model, threads=args.threads)
    system = len(engine.prompt_ids(task.messages("x")[:1]))
    lengths = [len(engine.prompt_ids(task.messages(r.input))) for r in records]
    engine.complete(task.messages(records[0].input), max_tokens=1)  # warm-up
    times: dict[str, list[tuple[float, float, int]]] = {"cached": [], "reset": []}
    sampling = Sampling(temperature=0.7, top_p=0.95, seed=0)
    for r in records:
        for mode in ("reset", "cached"):
            if mode == "reset":
                engine.reset()
            else:  # the previous prompt on this engine was another ticket, as in a teach run
                engine.complete(task.messages(records[(records.index(r) + 1) % len(records)].input), max_tokens=1)
            t0 = time.perf_counter()
            c = engine.complete(task.messages(r.input), max_tokens=args.max_new_tokens, sampling=sampling)
            times[mode].append((c.ttft_s or 0.0, time.perf_counter() - t0, c.completion_tokens))
    print(f"model {args.model}, {args.threads} threads; system prompt {system} tokens, prompts "
          f"{min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}), {len(records)} prompts")
    print(f"{'mode':<8} {'prompt eval s (median)':>22} {'sample s (median)':>18} {'tokens out (mean)':>18}")
    for mode, rows in times.items():
        print(f"{mode:<8} {statistics.median(t[0] for t in rows):>22.3f} {statistics.median(t[1] for t in rows):>18.3f}"
              f" {statistics.mean(t[2] for t in rows):>18.1f}")
    speedup = statistics.median(t[0] for t in times["reset"]) / statistics.median(t[0] for t in times["cached"])
    print(f"prompt evaluation {speedup:.1f}x faster with the cached prefix")


if __name__ == "__main__":
    main()
