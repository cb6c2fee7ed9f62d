"""How fast distill's teacher top-k cache is built, and what each way costs in fidelity, side by side.

The same examples (the task's brief prompt and the labelled answer, as distill trains them) go through the
teacher three ways, each timed ``--rounds`` times in turn (the best round shown): one example per forward pass in
float32 (the cache before issue 25's last stop), batched by length in float32, and batched in bfloat16 autocast
(what ``distill --bf16`` does now). Fidelity is against the float32 one-by-one logits at every answer token:
KL(float32 || way) over the whole vocabulary, the largest difference of the cached top-k log-probabilities (and
the reference probability of that token; then the largest where that probability is over 1%), and how often the
top-1 token agrees.

    python benchmarks/kd_cache_speed.py --teacher RUN/prototype --records 160
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from supertiny.models import load_model
from supertiny.stages.transfer.examples import load_examples
from supertiny.stages.transfer.kdcache import batch_rows, length_batches, teacher_rows
from supertiny.stages.transfer.losses import teacher_topk
from supertiny.tasks import task_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="default", help="a HF directory (the domain teacher: RUN/prototype)")
    ap.add_argument("--task", default="factory-tickets")
    ap.add_argument("--data", default="examples/factory_tickets/data/train.jsonl")
    ap.add_argument("--records", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = load_model(a.teacher)
    model = m.model.eval()
    examples, _ = load_examples(a.data, task_for(a.task, a.teacher, training=True), m.tokenizer, 2048)
    pairs = [(e.ids, e.prompt_len) for e in examples[:a.records]]
    tokens = sum(len(ids) for ids, _ in pairs)
    answers = sum(len(ids) - p for ids, p in pairs)

    def one_by_one(bf16: bool) -> list[torch.Tensor]:
        return [teacher_rows(model, ids, p) for ids, p in pairs]

    def batched(bf16: bool) -> list[torch.Tensor]:
        rows: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
        for batch in length_batches(pairs, 16, 4096):
            for i, r in zip(batch, batch_rows(model, [pairs[i] for i in batch], bf16), strict=True):
                rows[i] = r
        return rows

    ways = [("float32, one example a pass", one_by_one, False), ("float32, batched by length", batched, False),
            ("bfloat16 autocast, batched by length", batched, True)]
    best = {name: float("inf") for name, _, _ in ways}
    out: dict[str, list[torch.Tensor]] = {}
    for _ in range(a.rounds):
        for name, fn, bf16 in ways:
            t0 = time.perf_counter()
            out[name] = fn(bf16)
            best[name] = min(best[name], time.perf_counter() - t0)
    ref = out[ways[0][0]]
    print(f"teacher {a.teacher}; {len(pairs)} examples, {tokens} tokens ({answers} answer tokens); "
          f"{a.threads} threads; best of {a.rounds} rounds")
    print(f"| way | seconds | tokens/s | vs one by one | KL mean / max (nats) | top-{a.top_k} max diff (at p) | "
          f"... where p > 1% | top-1 agree |")
    print("|---|---|---|---|---|---|---|---|")
    base = best[ways[0][0]]
    for name, _, _ in ways:
        rows = torch.cat(out[name])
        r = torch.cat(ref)
        p, q = torch.log_softmax(r, -1), torch.log_softmax(rows, -1)
        kl = (p.exp() * (p - q)).sum(-1)
        v_ref, ix_ref = teacher_topk(r, a.top_k)
        diff = (q.gather(-1, ix_ref.long()) - v_ref).abs()  # at the reference's top-k tokens
        worst = diff.flatten().argmax()
        likely = diff[v_ref > math.log(0.01)]  # where the reference gives the token more than 1%
        agree = (r.argmax(-1) == rows.argmax(-1)).float().mean().item()
        print(f"| {name} | {best[name]:.1f} | {tokens / best[name]:.0f} | {base / best[name]:.2f}x | "
              f"{kl.mean().item():.1e} / {kl.max().item():.1e} | {diff.max().item():.3f} "
              f"({v_ref.flatten()[worst].exp().item():.0e}) | {likely.max().item():.3f} | {agree:.2%} |")


if __name__ == "__main__":
    main()
