"""Continuous batching vs today's single-sequence engine: total decode tokens/s under concurrency.

Same GGUF file (the default teacher, SmolLM2-135M Q4_1, unless given), same threads, same
requests, one run: at each concurrency level c, ``c`` clients send requests back to back
(a closed loop, as :mod:`supertiny.runtime.bench.measure` does) through

* ``single``: today's server, a :class:`~supertiny.runtime.serving.scheduler.Scheduler` over one
  single-sequence :class:`~supertiny.runtime.engines.llamacpp.LlamaCppEngine` (``--slots 1``):
  requests take turns;
* ``batched``: a :class:`~supertiny.runtime.serving.batch_scheduler.BatchScheduler` over one
  :class:`~supertiny.runtime.engines.batched.BatchedLlamaEngine` (``--parallel 8``): requests
  join the running batch.

The two alternate level by level (and round by round with ``--rounds``) so drift in a
shared machine's speed hits both alike; the best round of each is kept. Throughput is
generated tokens / wall time (short prompts, eos ignored, so decoding dominates).
Targets (issue 13): batched at 8 streams >= 2.5x the batched single-stream rate, and
batched single-stream >= 0.97x the single engine's.

``--steps`` measures decode throughput alone, at a finer grain (which a busy shared
machine needs): decode-step times, the engines taking turns every few tokens, medians of
many. Single engine: seconds per token of its own ``stream`` (requests take turns, so c
streams get the 1-stream rate); batched: ``stream`` on one sequence, then one ``step()``
with c sequences decoding (c tokens). Prefill is not in these figures: this is the
issue's "total decode throughput". With several ``--model`` files (comma-separated) it
ends with one table of them all: decode tok/s per stream count and the 8-vs-1 ratio.

Run:  .venv/bin/python benchmarks/batched_decode.py [--threads 2] [--rounds 2] [--steps] [--model A.gguf,B.gguf]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import cpu_seconds  # noqa: E402

from supertiny.runtime.bench.measure import closed_loop  # noqa: E402


def throughput(scheduler, prompts: list[list[int]], clients: int, requests: int, new: int) -> tuple[float, float]:
    """Generated tokens per second of wall time, and per CPU-second of this process, with
    ``clients`` closed-loop clients. On a shared machine other processes steal wall time;
    CPU time is what the work itself cost, so its ratios are the steadier figure."""

    def send(i: int):
        for chunk in scheduler.submit(prompts[i % len(prompts)], new, ignore_eos=True):
            yield len(chunk.token_ids)

    cpu = cpu_seconds()
    run = closed_loop(clients, requests, send)
    cpu = cpu_seconds() - cpu
    if run.errors:
        raise RuntimeError(f"{len(run.errors)} requests failed: {run.errors[0]!r}")
    return run.tokens / run.wall_s, run.tokens / cpu


def main() -> None:
    from supertiny.models import default_teacher_path
    from supertiny.runtime.serving.batch_scheduler import BatchScheduler
    from supertiny.runtime.serving.scheduler import Scheduler

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a .gguf file (default: the default teacher); with --steps, "
                    "several, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--min-requests", type=int, default=4, help="requests per level (at least one per client)")
    ap.add_argument("--steps", action="store_true", help="time decode steps, interleaved (see above)")
    ap.add_argument("--no-flash-attn", action="store_true", help="both engines without fused attention")
    args = ap.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    paths = [Path(m) for m in args.model.split(",")] if args.model else [default_teacher_path()]
    if args.steps and len(paths) > 1:
        rows = {}
        for path in paths:
            rows[path.name] = run_steps(path, levels, args)
        one = levels[0]
        top = 8 if 8 in levels else levels[-1]
        import llama_cpp

        build = llama_cpp.llama_print_system_info().decode().replace(" = 1", "").replace(" |", "")
        print(f"\ndecode tok/s (batched engine, median step times), {args.threads} threads, cores {os.cpu_count()}, "
              f"flash attention {'off' if args.no_flash_attn else 'on'}; build: {build.strip()}")
        print("| file | single engine | " + " | ".join(f"{c} streams" for c in levels)
              + f" | {top}/{one} | {top} / single engine |")
        print("|---|---|" + "---|" * len(levels) + "---|---|")
        for name, (single_rate, rates) in rows.items():
            print(f"| {name} | {single_rate:.1f} | " + " | ".join(f"{rates[c]:.1f}" for c in levels)
                  + f" | {rates[top] / rates[one]:.2f}x | {rates[top] / single_rate:.2f}x |")
        return None
    path = paths[0]
    if args.steps:
        run_steps(path, levels, args)
        return None
    single, batched, prompts = open_engines(path, args)
    for sched in (Scheduler([single], request_timeout_s=None), BatchScheduler(batched, request_timeout_s=None)):
        throughput(sched, prompts, 1, 1, args.new_tokens)  # warm up: page in the weights, size the buffers
        sched.close()
    best: dict[tuple[str, int], float] = {}
    per_cpu: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for c in levels:
            requests = max(args.min_requests, c)
            for name in ("single", "batched"):
                sched = (Scheduler([single], max_queue=64, request_timeout_s=None) if name == "single"
                         else BatchScheduler(batched, max_queue=64, request_timeout_s=None))
                rate, cpu_rate = throughput(sched, prompts, c, requests, args.new_tokens)
                sched.close()
                best[name, c] = max(best.get((name, c), 0.0), rate)
                per_cpu[name, c] = max(per_cpu.get((name, c), 0.0), cpu_rate)
                print(f"  {name:>7} c={c}: {rate:.1f} tok/s, {cpu_rate:.1f} tok/CPU-s", file=sys.stderr, flush=True)

    print(f"{path.name}, {args.threads} threads, prompts {args.prompt_tokens} + {args.new_tokens} new tokens, "
          f"--parallel {args.parallel}, best of {args.rounds} round(s), cores {os.cpu_count()}")
    print(f"{'streams':>7}  {'single tok/s':>12}  {'batched tok/s':>13}  {'batched/single':>14}  "
          f"{'vs batched 1-stream':>19}  {'tok/CPU-s single':>16}  {'batched':>7}  {'ratio':>6}  "
          f"{'vs 1-stream':>11}")
    base, cbase = best["batched", levels[0]], per_cpu["batched", levels[0]]
    for c in levels:
        s, b = best["single", c], best["batched", c]
        cs, cb = per_cpu["single", c], per_cpu["batched", c]
        print(f"{c:>7}  {s:>12.1f}  {b:>13.1f}  {b / s:>13.2f}x  {b / base:>18.2f}x  {cs:>16.1f}  {cb:>7.1f}  "
              f"{cb / cs:>5.2f}x  {cb / cbase:>10.2f}x")


def open_engines(path: Path, args):
    from supertiny.evaluate import default_corpus_path
    from supertiny.runtime.engines.batched import BatchedLlamaEngine
    from supertiny.runtime.engines.llamacpp import LlamaCppEngine

    fa, n_ctx = not args.no_flash_attn, args.prompt_tokens + args.new_tokens + 16
    single = LlamaCppEngine(path, n_ctx=n_ctx, n_threads=args.threads, flash_attn=fa)
    # no prompt cache: every request prefills in full, in both engines
    batched = BatchedLlamaEngine(path, n_ctx=n_ctx, n_threads=args.threads, parallel=args.parallel,
                                 cache_prompts=False, flash_attn=fa)
    corpus = single.tokenize(default_corpus_path().read_text(), add_special=False)
    prompts = [corpus[i * 211:i * 211 + args.prompt_tokens] for i in range(16)]
    single.stream = _no_prefix_cache(single)
    return single, batched, prompts


def run_steps(path: Path, levels: list[int], args) -> tuple[float, dict[int, float]]:
    single, batched, prompts = open_engines(path, args)
    try:
        return step_table(single, batched, prompts, levels, args)
    finally:
        batched.close()
        single.close()


def step_table(single, batched, prompts, levels, args) -> tuple[float, dict[int, float]]:
    """Median decode-step times, the engines and levels taking turns every few tokens."""
    import statistics
    import time

    per_token: dict[str, list[float]] = {"single": [], "batched": []}
    step_s: dict[int, list[float]] = {c: [] for c in levels}
    burst = 6
    for r in range(args.rounds * 8):
        prompt = prompts[r % len(prompts)]
        for name, engine in (("single", single), ("batched", batched)):
            t0, times = time.perf_counter(), []
            for _ in engine.stream(prompt, burst + 1, stop_ids=[]):
                times.append(time.perf_counter() - t0)
            per_token[name] += [b - a for a, b in zip(times, times[1:], strict=False)]
        for c in levels:
            slots = [batched.add(prompts[(r + i) % len(prompts)], burst + 2, stop_ids=[]) for i in range(c)]
            batched.step()  # prefill: not timed
            for _ in range(burst):
                t0 = time.perf_counter()
                batched.step()
                step_s[c].append(time.perf_counter() - t0)
            for slot in slots:
                batched.release(slot)
    one = 1 / statistics.median(per_token["single"])
    print(f"{Path(batched.path).name}, {args.threads} threads, decode-step medians over {args.rounds * 8} "
          f"interleaved rounds of {burst} tokens, cores {os.cpu_count()}")
    print(f"  single-stream: single engine {one:.1f} tok/s, batched engine "
          f"{1 / statistics.median(per_token['batched']):.1f} tok/s "
          f"({one and (1 / statistics.median(per_token['batched'])) / one:.2f}x)")
    print(f"{'streams':>7}  {'single tok/s':>12}  {'batched tok/s':>13}  {'batched/single':>14}")
    rates = {}
    for c in levels:
        rates[c] = rate = c / statistics.median(step_s[c])
        print(f"{c:>7}  {one:>12.1f}  {rate:>13.1f}  {rate / one:>13.2f}x", flush=True)
    return one, rates


def _no_prefix_cache(engine):
    stream = engine.stream

    def fresh(*args, **kw):
        engine.reset()
        return stream(*args, **kw)

    return fresh


if __name__ == "__main__":
    main()
