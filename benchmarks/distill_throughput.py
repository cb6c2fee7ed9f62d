"""KD training tokens/s of the distill stage's step, before and after each change, measured side by side.

One student (and, with --trimmed, its `supertiny trim-vocab` copy) takes KD steps from the cached teacher top-k:
forward, the loss (`mixed_loss`: alpha*KD + (1-alpha)*CE, fkl over the top-32 and the tail), backward, gradient
clipping and fused AdamW, in bf16 autocast: the step `DistillTrainer` takes. The variants add one change each:

    before    sdpa attention, a plain shuffle (the stage until now)
    eager     + eager attention (what --attention auto picks on a CPU for short examples)
    grouped   + batches of examples of about one length (--group-by-length, the new default)
    trimmed   + the trimmed student (a 5x smaller embedding and output layer; the teacher cut to its vocabulary)

Every variant takes its own batches of one epoch's order (seeded) and they take turns step by step, so a noisy
machine slows all alike; the first round is warm-up. tokens/s counts real (unpadded) tokens, as the stage does.

    python benchmarks/distill_throughput.py RUN/prune --trimmed TRIMMED --teacher RUN/prototype \\
        --data examples/factory_tickets/data/train.jsonl --records 240 --steps 24
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from supertiny.manifest import hash_path
from supertiny.models import load_model
from supertiny.stages.transfer.examples import load_examples
from supertiny.stages.transfer.kdcache import TopKCache, build_cache, cache_key, examples_hash
from supertiny.stages.transfer.losses import mixed_loss
from supertiny.stages.transfer.trainer import Collator, LengthGroupedBatches, answer_logits
from supertiny.stages.transfer.training import map_digest, teacher_view
from supertiny.tasks import task_for

VARIANTS = ("before", "eager", "grouped", "trimmed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("student", help="A Hugging Face student (e.g. RUN/prune, what distill starts from).")
    ap.add_argument("--trimmed", help="The same student through `supertiny trim-vocab` (adds the last variant).")
    ap.add_argument("--teacher", required=True, help="The teacher whose top-k is distilled.")
    ap.add_argument("--data", required=True, help="Teacher data or task data.")
    ap.add_argument("--task", default="factory-tickets")
    ap.add_argument("--records", type=int, default=240, help="The first N examples make the epoch.")
    ap.add_argument("--steps", type=int, default=24, help="Measured steps per variant (after one warm-up step).")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/distill-throughput", help="Teacher caches are kept here.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = load_model(args.teacher)
    students = {"full": args.student, **({"trimmed": args.trimmed} if args.trimmed else {})}
    runs = {}
    for name, path in students.items():
        lm = load_model(path)
        examples, _ = load_examples(args.data, task_for(args.task, path, training=True), lm.tokenizer, 1024)
        examples = examples[:args.records]
        pairs = [(e.ids, e.prompt_len) for e in examples]
        key = cache_key(hash_path(Path(args.teacher)), examples_hash(pairs), args.top_k, 1.0, "float16",
                        map_digest(Path(path)))
        cache_path = work / f"kd-{key}.safetensors"
        if not cache_path.is_file():
            seen = teacher_view(teacher.tokenizer, lm.tokenizer, teacher.model, lm.model, Path(path),
                                (args.teacher, path))
            t0 = time.perf_counter()
            build_cache(seen, pairs, args.top_k, 1.0).save(cache_path)
            print(f"{name}: teacher cache for {len(pairs)} examples in {time.perf_counter() - t0:.0f} s")
        model = lm.model.train()
        runs[name] = {"examples": examples, "model": model,
                      "collate": Collator(examples, lm.tokenizer.pad_token_id, TopKCache.load(cache_path)),
                      "opt": torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True),
                      "vocab": model.get_input_embeddings().weight.shape[0], "params": model.num_parameters()}
    del teacher
    variants = [v for v in VARIANTS if v != "trimmed" or args.trimmed]
    n = len(runs["full"]["examples"])
    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    grouped = list(LengthGroupedBatches([len(e.ids) for e in runs["full"]["examples"]], args.batch_size, 0))
    need = (args.steps + 1) * args.batch_size
    if need > n:
        raise SystemExit(f"--records {n} holds fewer than ({args.steps} + 1) x {args.batch_size} examples")
    totals = {v: {"s": 0.0, "tokens": 0, "padded": 0, "answer": 0} for v in variants}
    for step in range(args.steps + 1):
        for v in variants[step % len(variants):] + variants[:step % len(variants)]:  # rotate who goes first
            r = runs["trimmed" if v == "trimmed" else "full"]
            order = grouped if v in ("grouped", "trimmed") else shuffled
            batch = r["collate"]([{"index": i} for i in order[step * args.batch_size:(step + 1) * args.batch_size]])
            values, indices = batch.pop("kd_values"), batch.pop("kd_indices")
            model = r["model"]
            model.config._attn_implementation = "sdpa" if v == "before" else "eager"
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits, labels = answer_logits(model, batch)
                loss, _ = mixed_loss(logits, labels, values, indices, "fkl", 0.5, 1.0, 0.5)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the Trainer's max_grad_norm
            r["opt"].step()
            r["opt"].zero_grad(set_to_none=True)
            if step:
                t = totals[v]
                t["s"] += time.perf_counter() - t0
                t["tokens"] += int(batch["attention_mask"].sum())
                t["padded"] += batch["attention_mask"].numel()
                t["answer"] += int(labels.numel())
        print(f"step {step}/{args.steps}", flush=True)
    base = totals["before"]["tokens"] / totals["before"]["s"]
    print(f"\n{args.steps} KD steps per variant (fkl, top-{args.top_k}, alpha 0.5, batch {args.batch_size}, bf16, "
          f"{args.threads} threads), {n} examples of {args.data}\n")
    print("| variant | vocab | parameters | padding | s/step | tokens/s | answer tokens/s | vs before |")
    print("|---|---|---|---|---|---|---|---|")
    for v in variants:
        t, r = totals[v], runs["trimmed" if v == "trimmed" else "full"]
        rate = t["tokens"] / t["s"]
        print(f"| {v} | {r['vocab']:,} | {r['params'] / 1e6:.1f}M | {1 - t['tokens'] / t['padded']:.1%} | "
              f"{t['s'] / args.steps:.2f} | {rate:.0f} | {t['answer'] / t['s']:.1f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
