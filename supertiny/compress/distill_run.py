"""The orchestration of :func:`supertiny.compress.distill.distill` (kept apart from the settings and data)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..manifest import Manifest, StageRun, hash_path
from .distill import (
    AGREEMENT_SEQUENCES,
    STAGE,
    STAGE_VERSION,
    DistillConfig,
    _dev_eval,
    check_same_tokenizer,
    check_work_dir,
    load_examples,
    settings_dict,
    work_dir,
)


def _training_args(config: DistillConfig, work: Path) -> Any:
    import os

    import torch
    from transformers import TrainingArguments

    cpu = not torch.cuda.is_available()
    # gloo only under a launcher: asking for a backend makes accelerate expect a process group
    parallel = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return TrainingArguments(
        output_dir=str(work), seed=config.seed, data_seed=config.seed,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr, warmup_ratio=config.warmup_ratio, lr_scheduler_type="linear", weight_decay=0.0,
        max_steps=config.steps if config.steps else -1, num_train_epochs=config.epochs,
        bf16=config.bf16, use_cpu=cpu, ddp_backend="gloo" if cpu and parallel else None,
        save_strategy="steps" if config.save_every else "no", save_steps=config.save_every or 500,
        save_total_limit=2, save_safetensors=True, logging_steps=1, report_to=[], disable_tqdm=True,
        remove_unused_columns=False, dataloader_pin_memory=False, dataloader_num_workers=0,
    )


def run(student: Any, out: Any, task: Any, data: Any, config: DistillConfig, teacher: str | None, dev: Any,
        resume: bool, cache_dir: str | None, say: Callable[[str], None], progress: Any, callbacks: list[Any]
        ) -> Manifest | None:
    from transformers import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    from ..models import describe, load_model, resolve
    from ..outdir import check_output_dir
    from ..tasks import read_task_data, task_for
    from ..tasks.prompts import RECORD_KEY, prompt_record
    from .kdcache import TopKCache, build_cache, cache_key, examples_hash
    from .trainer import (
        Collator,
        DistillTrainer,
        EvalCallback,
        ExampleDataset,
        MetricsCallback,
        loaded,
        save_trained,
        train,
    )

    out = Path(out).expanduser().absolute()
    if config.loss != "sft" and teacher is None:
        raise InvalidInputError(f"--loss {config.loss} distils a teacher's logits: pass --teacher")
    spec = task_for(task, student, config.prompt, training=True)
    dev_records = read_task_data(dev, spec, labelled=True)[: config.dev_limit] if dev else []
    settings = settings_dict(config, task=spec.name, data=Path(data).absolute(), dev=dev and Path(dev).absolute(),
                             teacher=teacher and resolve(teacher)[1].absolute(), student=resolve(student)[1].absolute())
    work = work_dir(out)
    args = _training_args(config, work)  # sets up the process group under torchrun / accelerate launch
    main = args.process_index == 0
    if main and not (resume and work.is_dir() and get_last_checkpoint(str(work))):
        check_output_dir(out, config.overwrite)  # nothing to resume: a finished OUT is not replaced silently
    info = describe(student).to_dict()
    stage = StageRun(STAGE, STAGE_VERSION, out, source=student, info=info, settings=settings) if main else None
    lm = load_model(student)
    model, tok = lm.model, lm.tokenizer
    examples, counts = load_examples(data, spec, tok, config.max_length)  # bad data fails before OUT.work exists
    with args.main_process_first(local=False, desc="setup"):
        if main:
            check_work_dir(work, settings, resume, config.overwrite)
    loaded(stage, say, f"{len(examples)} examples from {counts['records']} records"
           + (f"; skipped {counts['no_response']} without a response" if counts["no_response"] else "")
           + (f"; skipped {counts['too_long']} longer than {config.max_length} tokens" if counts["too_long"] else ""),
           f"skipped {counts['too_long']} examples longer than max_length {config.max_length} "
           f"(first: {counts['first_too_long']})" if counts["too_long"] else None)
    cache, agree_rows, cache_info = None, [], {}
    if teacher is not None:
        cache_path, t_hash = None, hash_path(resolve(teacher)[1])
        if config.loss != "sft":
            key = cache_key(t_hash, examples_hash([(e.ids, e.prompt_len) for e in examples]), config.top_k,
                            config.temperature, config.cache_dtype)
            cache_path = Path(cache_dir or work) / f"kd-{key}.safetensors"
        with args.main_process_first(local=False, desc="teacher cache"):
            need_cache = cache_path is not None and not cache_path.is_file()
            if need_cache or (main and (dev_records or examples)):
                t = load_model(teacher)
                mismatch = None
                try:
                    check_same_tokenizer(t.tokenizer, tok, t.model, model, (str(teacher), str(student)))
                except InvalidInputError as exc:
                    if config.loss != "sft":
                        raise
                    mismatch = str(exc)
                if mismatch and stage:
                    stage.note(f"no agreement figures: {mismatch}")
                if need_cache:
                    import time

                    say(f"teacher top-{config.top_k} cache for {len(examples)} examples (once) -> {cache_path}")
                    t0 = time.perf_counter()
                    c = build_cache(t.model, [(e.ids, e.prompt_len) for e in examples], config.top_k,
                                    config.temperature, config.cache_dtype, {"teacher_sha256": t_hash},
                                    progress=progress if main else None)
                    Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
                    c.save(cache_path)
                    cache_info["build_seconds"] = round(time.perf_counter() - t0, 2)
                if main and not mismatch:
                    agree_rows = _agreement_rows(t.model, spec, tok, dev_records, examples)
                del t
        if cache_path is not None:
            cache = TopKCache.load(cache_path)
            if len(cache) != len(examples):
                raise InvalidInputError(f"{cache_path}: holds {len(cache)} examples, the data has {len(examples)}")
            cache_info.update(path=str(cache_path), bytes=cache_path.stat().st_size, k=cache.k,
                              tokens=int(cache.values.shape[0]),
                              bytes_per_token=round(cache_path.stat().st_size / max(1, cache.values.shape[0]), 1))
        if stage:
            stage.lap("teacher")
    model.train()
    metrics = MetricsCallback(work / "metrics.jsonl")
    trainer = DistillTrainer(model=model, args=args, train_dataset=ExampleDataset(examples),
                             data_collator=Collator(examples, tok.pad_token_id, cache), loss=config.loss,
                             alpha=config.alpha, temperature=config.temperature, beta=config.beta)
    trainer.remove_callback(PrinterCallback)
    evaluator = EvalCallback(_dev_eval(spec, tok, dev_records, agree_rows), config.eval_every, metrics, trainer)
    result = train(trainer, work, metrics, evaluator, progress, callbacks, resume, main, say, config.loss)
    if not main or stage is None:
        return None
    stage.lap("train")
    with stage:
        records = save_trained(stage, model, tok, work, f"{config.loss}: {out.name}")
        train_logs = [r for r in records if "tokens_per_s" in r]
        steady = train_logs[1:] or train_logs  # the first step pays for warm-up
        details = {
            "steps": trainer.state.global_step, "epochs": round(float(trainer.state.epoch or 0), 3),
            "examples": len(examples), "data": counts, "train_loss": round(result.training_loss, 6),
            "final": {k: train_logs[-1][k] for k in ("loss", "ce", "kd") if train_logs and k in train_logs[-1]},
            "tokens_per_s": _mean([r["tokens_per_s"] for r in steady]),
            "answer_tokens_per_s": _mean([r["answer_tokens_per_s"] for r in steady]),
            "world_size": args.world_size, RECORD_KEY: prompt_record(spec), "cache": cache_info,
        }
        quality = evaluator.last or {"skipped": "no --dev data and no teacher to compare with"}
        manifest = stage.install(quality=quality, details=details)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 1) if xs else None


def _agreement_rows(teacher: Any, spec: Any, tok: Any, dev: list[Any], examples: list[Any]
                    ) -> list[tuple[list[int], Any]]:
    """A few sequences and the teacher's logits on them, kept so that training can drop the teacher."""
    import torch

    if dev:
        seqs = []
        for r in dev[:AGREEMENT_SEQUENCES]:
            text = tok.apply_chat_template([*spec.messages(r.input), {"role": "assistant",
                                            "content": spec.format_answer(r.label)}], tokenize=False)
            seqs.append(tok(text, add_special_tokens=False)["input_ids"])
    else:
        seqs = [list(e.ids) for e in examples[:AGREEMENT_SEQUENCES]]
    rows = []
    with torch.inference_mode():
        for ids in seqs:
            rows.append((ids, teacher(input_ids=torch.tensor([ids])).logits[0].float()))
    return rows
