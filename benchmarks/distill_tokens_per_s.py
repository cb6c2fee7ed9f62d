"""Training tokens/s of SFT vs KD from the cached teacher top-k (on the answer, with
``--input-kd`` on the input's tokens too, and with ``--hidden-kd``: the teacher run on every
batch for its hidden states), measured side by side.

The losses run on the same batches of the same student, taking turns step by step (so a
noisy, shared machine slows them alike); a step is forward + backward + AdamW update.
The teacher caches are built once (their times are printed) or reused from --cache-dir.
The ``fkl+hidden`` row needs a student depth-pruned from --teacher (``distill --hidden-kd``'s
layer map); with another student it is left out.

    python benchmarks/distill_tokens_per_s.py /tmp/student --teacher default --records 20 --reps 3
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch

from supertiny.errors import InvalidInputError
from supertiny.manifest import hash_path
from supertiny.models import load_model, resolve
from supertiny.stages.transfer.distill import attention_kernel, layer_map
from supertiny.stages.transfer.examples import load_examples
from supertiny.stages.transfer.kdcache import TopKCache, build_cache, cache_key, examples_hash
from supertiny.stages.transfer.trainer import Collator, HiddenTeacher, batch_loss
from supertiny.tasks import task_for


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("student")
    ap.add_argument("--teacher", default="default")
    ap.add_argument("--data", default="examples/factory_tickets/data/train.jsonl")
    ap.add_argument("--records", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--cache-dir", default="/tmp/dmeas/cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("both", "fp32", "bf16"), default="both")
    ap.add_argument("--prompt", choices=("auto", "full", "brief"), default="auto")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    # the prompt the distill stage trains with (a student of the domain teacher: brief); --prompt full for the
    # ~700-token definitions
    task = task_for("factory-tickets", a.student, a.prompt, training=True)
    lm = load_model(a.student)
    data = Path(a.cache_dir) / f"records-{a.records}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(Path(a.data).read_text().splitlines(True)[: a.records]))
    examples, _ = load_examples(data, task, lm.tokenizer, 1024)
    # batches of about one length, as the stage's --group-by-length makes them (the logits kept for --input-kd
    # span a batch's longest input and answer: mixed lengths would cost it more than the stage pays)
    examples.sort(key=lambda e: len(e.ids))
    collate = {}
    for inputs in (False, True):  # the answer's rows; the input's and the answer's (--input-kd)
        pairs = [(e.ids, e.rows_from(inputs)) for e in examples]
        key = cache_key(hash_path(resolve(a.teacher)[1]), examples_hash(pairs), a.top_k, 1.0, "float16")
        path = Path(a.cache_dir) / f"kd-{key}.safetensors"
        if not path.is_file():
            t = load_model(a.teacher)
            t0 = time.perf_counter()
            build_cache(t.model, pairs, a.top_k, 1.0).save(path)
            print(f"cache build ({'input and answer' if inputs else 'answer'}): {time.perf_counter() - t0:.1f} s "
                  f"for {len(pairs)} examples")
            del t
        cache = TopKCache.load(path)
        print(f"cache ({'input and answer' if inputs else 'answer'}): {path.stat().st_size} bytes, "
              f"{cache.values.shape[0]} rows, {path.stat().st_size / cache.values.shape[0]:.0f} bytes/token")
        collate[inputs] = Collator(examples, lm.tokenizer.pad_token_id, cache, inputs=inputs, hidden=True)
    losses: tuple[str, ...] = ("sft", "fkl", "fkl+input")
    teacher, layers = load_model(a.teacher).model.eval(), []
    try:
        layers, _ = layer_map(lm.model, teacher)
        losses += ("fkl+hidden",)
        print(f"hidden-state KD: student layers from teacher layers {layers}")
    except InvalidInputError as exc:
        print(f"no fkl+hidden row: {exc}")
    model = lm.model.train()
    # the attention kernel the distill stage trains with (eager on a CPU for short examples)
    model.config._attn_implementation = attention_kernel("auto", "cpu", max(len(e.ids) for e in examples))
    print(f"attention: {model.config._attn_implementation}")
    # the optimizer the distill stage's Trainer makes (transformers' default: AdamW, fused; the unfused loop
    # costs 0.3-0.4 s more per step of the 16-layer student here)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    print("| precision | loss | steps | tokens/step | tokens/s | answer tokens/s |")
    print("|---|---|---|---|---|---|")
    for bf16 in {"both": (False, True), "fp32": (False,), "bf16": (True,)}[a.precision]:
        total = {loss: [0.0, 0, 0] for loss in losses}
        for rep in range(a.reps + 1):  # rep 0 warms up and is not counted
            idx = [(rep * a.batch_size + i) % len(examples) for i in range(a.batch_size)]
            turn = rep % len(losses)
            for loss in losses[turn:] + losses[:turn]:  # take turns going first
                batch = collate[loss == "fkl+input"]([{"index": i} for i in idx])
                t0 = time.perf_counter()
                ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
                # the distill stage's loss (alpha 0.5, T 1; --input-kd 1 with the input's rows; --hidden-kd 1 with the
                # teacher run on the batch, in bfloat16 autocast when the student trains in it, as the stage does)
                hidden = HiddenTeacher(teacher, layers, bf16) if loss == "fkl+hidden" else None
                if hidden is None:
                    batch.pop("hidden_mask")
                with ctx:
                    value, _, answer_tokens = batch_loss(model, batch, loss.split("+")[0], 0.5, 1.0, 0.5, 1.0,
                                                         hidden, 1.0)
                value.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if rep:
                    t = total[loss]
                    t[0] += time.perf_counter() - t0
                    t[1] += int(batch["attention_mask"].sum())
                    t[2] += answer_tokens
        for loss, (secs, toks, ans) in total.items():
            print(f"| {'bf16 autocast' if bf16 else 'fp32'} | {loss} | {a.reps} | {toks / a.reps:.0f} | "
                  f"{toks / secs:.1f} | {ans / secs:.2f} |")
        for loss in losses[1:]:
            print(f"| {'bf16' if bf16 else 'fp32'} | **{loss} / sft** | | | "
                  f"**{(total[loss][1] / total[loss][0]) / (total['sft'][1] / total['sft'][0]):.2f}x** | |")


if __name__ == "__main__":
    main()
