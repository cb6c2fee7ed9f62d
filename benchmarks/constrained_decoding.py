"""Constrained vs free decoding: decode tokens/s on the same GGUF file, single engine and continuous batch.

The same task records (factory-tickets' test split) go through each engine twice, the two
modes taking turns record by record (batch by batch) so drift on a shared machine hits both:

* ``constrained``: held to the task's JSON schema (:mod:`supertiny.runtime.engines.constrain`;
  the asset narrowed to the ticket's tags), ending when the object closes;
* ``free``: the same prompt decoded without a grammar for exactly as many tokens (eos ignored),
  so both modes decode the same number of tokens at the same positions.

Only decoding is timed (from the first reply token to the last; prefill is the same work in
both modes and would hide the difference), in wall time and in this process's CPU time (all
its threads): on a shared machine other processes steal wall time, so the CPU-time ratio is
the steadier figure. Single: :class:`LlamaCppEngine.stream`. Batched:
:class:`BatchedLlamaEngine` with ``--parallel`` sequences, timed from the step where every
sequence has its first token. ``mask`` is the time spent computing full masks (llguidance, unpacked to a
boolean row) per token; most steps need none (the free pick is checked first). ``valid`` counts the
constrained replies that are schema-valid answers. Target (issue 24): constrained >= 0.9x free, single and batched.

Run:  .venv/bin/python benchmarks/constrained_decoding.py [--model BUNDLE.gguf] [--records 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supertiny.models import DEFAULT_TEACHER, resolve  # noqa: E402
from supertiny.runtime.engines import constrain  # noqa: E402
from supertiny.runtime.engines.batched import BatchedLlamaEngine  # noqa: E402
from supertiny.runtime.engines.llamacpp import LlamaCppEngine  # noqa: E402
from supertiny.tasks import read_task_data, task_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MASK_SECONDS = [0.0]


def _timed_allowed(original):
    def allowed(self, width):
        start = time.perf_counter()
        try:
            return original(self, width)
        finally:
            MASK_SECONDS[0] += time.perf_counter() - start
    return allowed


def single(engine: LlamaCppEngine, prompt: list[int], budget: int, constraint=None
           ) -> tuple[int, float, float, str]:
    """Tokens decoded after the first, the wall and CPU seconds they took, and the reply."""
    first, cpu, tokens = None, 0.0, []
    for token in engine.stream(prompt, budget, stop_ids=engine.stop_ids if constraint else [],
                               constraint=constraint):
        tokens.append(token)
        if first is None:
            first, cpu = time.perf_counter(), time.process_time()
    return (len(tokens) - 1, time.perf_counter() - first, time.process_time() - cpu,
            engine.tokenizer.decode(tokens))


def batched(engine: BatchedLlamaEngine, prompts: list[list[int]], budgets: list[int],
            constraints: list | None) -> tuple[list[list[int]], int, float, float]:
    """Per sequence its reply; tokens decoded once every sequence had its first; their wall and CPU seconds."""
    slots = {engine.add(p, b, None, engine.stop_ids if constraints else [], constraints[i] if constraints else None):
             i for i, (p, b) in enumerate(zip(prompts, budgets, strict=True))}
    produced: list[list[int]] = [[] for _ in prompts]
    start, cpu, counted = None, 0.0, 0
    while engine.active:
        events = engine.step()
        for slot, token, _ in events:
            if token is not None:
                produced[slots[slot]].append(token)
                if start is not None:
                    counted += 1
        if start is None and all(produced):
            start, cpu = time.perf_counter(), time.process_time()
    return produced, counted, time.perf_counter() - (start or time.perf_counter()), time.process_time() - cpu


def add(total: list, tokens: int, wall: float, cpu: float) -> None:
    total[0] += tokens
    total[1] += wall
    total[2] += cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_TEACHER, help="a .gguf file (default: the default teacher)")
    ap.add_argument("--records", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    constrain.Constraint.allowed = _timed_allowed(constrain.Constraint.allowed)

    path = resolve(args.model)[1]
    spec = task_for("factory-tickets", path)
    records = read_task_data(ROOT / "examples/factory_tickets/data/test.jsonl", spec, labelled=True)[:args.records]
    grammar = constrain.answer_grammar(spec)
    rows, valid = [], {"single": 0, "batched": 0}

    engine = LlamaCppEngine(path, n_ctx=2048, n_threads=args.threads)
    engine.vocabulary.for_width(engine.n_vocab)  # built once per engine (~0.5 s), not per reply: not timed
    totals = {"constrained": [0, 0.0, 0.0], "free": [0, 0.0, 0.0]}
    mask = 0.0
    for r in records:
        prompt = engine.chat_ids(spec.messages(r.input))
        MASK_SECONDS[0] = 0.0
        n, secs, cpu, text = single(engine, prompt, args.max_new_tokens, engine.constraint(grammar(r.input)))
        valid["single"] += spec.parse(text).schema_valid
        mask += MASK_SECONDS[0]
        add(totals["constrained"], n, secs, cpu)
        add(totals["free"], *single(engine, prompt, n + 1)[:3])
    rows.append(("single", totals, mask))
    engine.close()

    engine = BatchedLlamaEngine(path, n_ctx=2048 * args.parallel, n_threads=args.threads, parallel=args.parallel)
    engine.vocabulary.for_width(engine.n_vocab)
    totals = {"constrained": [0, 0.0, 0.0], "free": [0, 0.0, 0.0]}
    mask = 0.0
    for start in range(0, len(records), args.parallel):
        chunk = records[start:start + args.parallel]
        prompts = [engine.chat_ids(spec.messages(r.input)) for r in chunk]
        MASK_SECONDS[0] = 0.0
        replies, n, secs, cpu = batched(engine, prompts, [args.max_new_tokens] * len(chunk),
                                        [engine.constraint(grammar(r.input)) for r in chunk])
        valid["batched"] += sum(spec.parse(engine.tokenizer.decode(t)).schema_valid for t in replies)
        lengths = [len(t) for t in replies]
        mask += MASK_SECONDS[0]
        add(totals["constrained"], n, secs, cpu)
        add(totals["free"], *batched(engine, prompts, lengths, None)[1:])
    rows.append((f"batched x{args.parallel}", totals, mask))
    engine.close()

    print(f"model {path.name}, {len(records)} records, {args.threads} threads, decode only (prefill excluded)")
    print(f"{'engine':<12} {'free tok/s':>11} {'constrained':>12} {'ratio':>6} {'per CPU-s: free':>16} "
          f"{'constrained':>12} {'ratio':>6} {'tokens':>7} {'mask µs/token':>14} {'valid':>8}")
    for (name, t, mask), ok in zip(rows, valid.values(), strict=True):
        free, held = t["free"][0] / t["free"][1], t["constrained"][0] / t["constrained"][1]
        free_cpu, held_cpu = t["free"][0] / t["free"][2], t["constrained"][0] / t["constrained"][2]
        print(f"{name:<12} {free:>11.1f} {held:>12.1f} {held / free:>6.2f} {free_cpu:>16.1f} {held_cpu:>12.1f} "
              f"{held_cpu / free_cpu:>6.2f} {t['constrained'][0]:>7} {1e6 * mask / max(t['constrained'][0], 1):>14.1f} "
              f"{ok:>4}/{len(records)}")


if __name__ == "__main__":
    main()
