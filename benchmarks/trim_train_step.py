"""Training steps of a student and of its vocabulary-trimmed copy, side by side: what trimming before KD would buy.

Both models take the same SFT steps (forward + backward + fused AdamW, bf16 autocast, the trainer's own collator
and answer-span logits) on the same examples (the trimmed tokenizer encodes the task's data to the same tokens),
alternating pass by pass so a noisy machine slows both alike. Prints wall seconds and CPU seconds per pass and
tokens/s of each model's best pass. (KD on a trimmed student would also need the teacher's cached top-k mapped
into the trimmed ids; the step it would take is this one plus the same KD term.)

    python benchmarks/trim_train_step.py RUN/distill TRIMMED/ --data RUN/teach/teacher-data.jsonl
"""

from __future__ import annotations

import argparse
import time

import torch

from supertiny.models import load_model
from supertiny.stages.transfer.examples import load_examples
from supertiny.stages.transfer.trainer import Collator, answer_logits
from supertiny.tasks import task_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("student", help="A Hugging Face student (e.g. RUN/distill).")
    ap.add_argument("trimmed", help="The same student through `supertiny trim-vocab`.")
    ap.add_argument("--data", required=True, help="Teacher data or task data the examples come from.")
    ap.add_argument("--task", default="factory-tickets")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    for name, path in (("student", args.student), ("trimmed", args.trimmed)):
        lm = load_model(path)
        examples, _ = load_examples(args.data, task_for(args.task, path, training=True), lm.tokenizer, 1024)
        examples = examples[:args.examples]
        collate = Collator(examples, lm.tokenizer.pad_token_id)
        batches = [collate([{"index": i} for i in range(b, min(b + args.batch_size, len(examples)))])
                   for b in range(0, len(examples), args.batch_size)]
        model = lm.model.train()
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True), batches,
                        sum(len(e.ids) for e in examples), model.get_input_embeddings().weight.shape[0],
                        model.num_parameters())
    assert models["student"][3] == models["trimmed"][3], "the two tokenizers encode the data differently"
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for _ in range(args.passes):
        for name, (model, opt, batches, _, _, _) in models.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for batch in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits, labels = answer_logits(model, batch)
                    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    print(f"{args.examples} examples, batch {args.batch_size}, {args.threads} threads, {args.passes} passes each")
    print("| model | vocab | parameters | wall s per pass | CPU s per pass | tokens/s (best pass) |")
    print("|---|---|---|---|---|---|")
    best = {}
    for name, (_, _, _, tokens, vocab, params) in models.items():
        walls, cpus = [t[0] for t in times[name]], [t[1] for t in times[name]]
        best[name] = tokens / min(walls)
        print(f"| {name} | {vocab:,} | {params / 1e6:.1f}M | {' / '.join(f'{w:.1f}' for w in walls)} | "
              f"{' / '.join(f'{c:.1f}' for c in cpus)} | {best[name]:.1f} |")
    print(f"trimmed vs student: {best['trimmed'] / best['student']:.2f}x tokens/s (best passes), "
          f"{min(c for _, c in times['student']) / min(c for _, c in times['trimmed']):.2f}x less CPU (best passes)")


if __name__ == "__main__":
    main()
