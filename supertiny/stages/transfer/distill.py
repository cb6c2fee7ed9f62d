"""The distill stage: a student trained on a task's answers, by SFT or by logit KD from a cached teacher.

Examples come from teacher data or task data (:mod:`.examples`). With a KD loss the teacher's
top-k distribution per answer token is computed once (:mod:`.kdcache`) and reused by every
epoch and resume; the loss is :func:`.losses.mixed_loss` on the answer tokens
(:class:`.trainer.DistillTrainer`). ``--input-kd W`` adds W times the KD loss on the input's
tokens (the record's text, not the system prompt every record shares; the cache then holds
their rows too): the student also learns how the teacher reads the input. ``--hidden-kd W`` adds
W times :func:`.trainer.hidden_state_loss`: the teacher runs on every batch and each layer of a
depth-pruned student learns the hidden states of the teacher layer it was kept from
(:func:`layer_map` finds which by the weights), on the record's text and the answer. Checkpoints,
resume, dev evaluation and the install are the training stages' shared scaffolding
(:mod:`.training`); runs data-parallel under ``torchrun``/``accelerate launch``.

Example::

    distill("/tmp/student", "/tmp/kd", "factory-tickets", "teacher.jsonl",
            DistillConfig(loss="fkl", steps=200), teacher="/tmp/domain-teacher")

torch and transformers are imported inside the functions that train (the CLI reads the Config without them).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny import schema
from supertiny.checkpoint import number_runs
from supertiny.errors import InvalidInputError
from supertiny.manifest import Manifest, hash_path
from supertiny.models import load_model, resolve
from supertiny.settings import NON_NEG, NON_NEG_INT, POS_INT, POSITIVE, UNIT, setting
from supertiny.stages.registry import Log, Progress, get, stage
from supertiny.stages.transfer.examples import load_examples
from supertiny.stages.transfer.kdcache import TopKCache, build_cache, cache_key, examples_hash
from supertiny.stages.transfer.losses import LOSS_NAMES
from supertiny.stages.transfer.training import (
    AGREEMENT_SEQUENCES,
    Setup,
    TrainingConfig,
    dev_evaluator,
    finish,
    fit,
    loaded,
    map_digest,
    mean,
    setup,
    teacher_view,
    train_loss,
    training_args,
    training_inputs,
)
from supertiny.tasks.prompts import RECORD_KEY, prompt_record

STAGE, STAGE_VERSION = "distill", 1
# eager attention keeps [batch, heads, T, T] scores per layer for the backward pass: only for short examples
EAGER_MAX_TOKENS = 384
# --hidden-kd: a student layer this far (relative weight distance) from every teacher layer stands for none of them
# (two unrelated layers of one init scale are ~1.4 apart; a kept layer after KD stays far closer)
MAX_MAP_DISTANCE = 0.5


@dataclass(frozen=True)
class DistillConfig(TrainingConfig):
    """Settings of one distillation run (the shared training settings first: :class:`.training.TrainingConfig`)."""

    loss: str = setting("sft", "sft: cross-entropy on the answers; fkl/rkl/jsd: logit KD from the teacher's cached "
                        "top-k.", choices=LOSS_NAMES)
    epochs: float = setting(1.0, "Passes over the data (when --steps is not given).", check=POSITIVE)
    steps: int | None = setting(None, "Optimizer steps (default: --epochs).", check=POS_INT)
    lr: float = setting(1e-4, "Peak learning rate (linear warm-up, then linear decay).", check=POSITIVE)
    batch_size: int = setting(4, "Examples per step and process.", check=POS_INT)
    grad_accum: int = setting(1, "Steps whose gradients are summed before each optimizer update.", check=POS_INT)
    max_length: int = setting(1024, "Longer examples are skipped and counted in the manifest.", check=POS_INT)
    temperature: float = setting(1.0, "KD softmax temperature (loss scaled by T^2).", check=POSITIVE)
    alpha: float = setting(0.5, "loss = alpha*KD + (1-alpha)*CE.", check=UNIT)
    input_kd: float = setting(0.0, "Weight of a KD term on the input's tokens (the record's text, not the system "
                              "prompt every record shares), added to the loss: the student also learns the teacher's "
                              "next-token distribution there. 0: the answer tokens only.", check=NON_NEG)
    hidden_kd: float = setting(0.0, "Weight of a loss on the hidden states, added to the loss: each student layer's "
                               "output learns the teacher's at the layer it was kept from (a depth-pruned student; "
                               "found by the weights), on the record's text and the answer. The teacher runs on every "
                               "batch (0.61x the tokens/s of KD on the answer: benchmarks/distill_tokens_per_s.py). 0: "
                               "off.", check=NON_NEG)
    beta: float = setting(0.5, "jsd's mixture weight.", check=UNIT)
    top_k: int = setting(32, "Teacher tokens cached per answer token.", check=POS_INT)
    cache_dtype: str = setting("float16", "Storage type of the cached teacher probabilities.",
                               choices=("float16", "float32"), role="internal")
    warmup_ratio: float = setting(0.03, "Share of the steps spent warming up.", role="internal",
                                  check=schema.expect(lambda v: schema.is_number(v) and 0 <= v < 1,
                                                      "a number from 0 up to 1"))
    save_every: int = setting(50, "Checkpoint every N steps (0: never).", check=NON_NEG_INT)
    group_by_length: bool = setting(True, "Batch examples of about one length together (less padding); the order "
                                    "of the batches stays random.")
    attention: str = setting("auto", "The student's attention kernel while training. auto: eager on a CPU when the "
                             f"longest example has at most {EAGER_MAX_TOKENS} tokens (faster there than sdpa's), "
                             "else sdpa.", choices=("auto", "eager", "sdpa"))
    cache_dir: str | None = setting(None, "Keep KD caches here (default: OUT.work/, removed when done).",
                                    role="run")


INPUTS = training_inputs("Teacher data from `supertiny teach` (input, response) or task data (input, label).",
                         "Teacher model (HF dir, .gguf or 'default'); needed for KD losses.")


@stage(STAGE, version=STAGE_VERSION, config=DistillConfig, inputs=INPUTS, output="dir", command=("distill",),
       out_option="--out")
def run(inputs: dict[str, str | None], out: Path, config: DistillConfig, log: Log, progress: Progress | None,
        callbacks: Sequence[Any] = ()) -> Manifest | None:
    """Train ``inputs["student"]`` into ``out`` (None on the other processes of a data-parallel run);
    ``callbacks``: extra Trainer callbacks (a library caller's)."""
    # torch and transformers: heavy, and only a training process needs them
    from supertiny.stages.transfer.trainer import Collator, DistillTrainer, ExampleDataset, HiddenTeacher

    if config.loss != "sft" and inputs["teacher"] is None:
        raise InvalidInputError(f"--loss {config.loss} distils a teacher's logits: pass --teacher")
    if config.hidden_kd and inputs["teacher"] is None:
        raise InvalidInputError("--hidden-kd distils a teacher's hidden states: pass --teacher")
    if config.input_kd and config.loss == "sft":
        raise InvalidInputError("--input-kd distils the teacher's logits on the input: pass a KD --loss (fkl, rkl "
                                "or jsd)")
    s = setup(STAGE, STAGE_VERSION, inputs, out, config, log, lambda work: training_args(
        config, work, batch_size=config.batch_size, lr=config.lr, steps=config.steps, epochs=config.epochs,
        grad_accum=config.grad_accum, warmup_ratio=config.warmup_ratio, save_every=config.save_every))
    assert inputs["data"] is not None
    examples, counts = load_examples(inputs["data"], s.spec, s.tokenizer, config.max_length)  # before OUT.work
    loaded(s, f"{len(examples)} examples from {counts['records']} records"
           + (f"; skipped {counts['no_response']} without a response" if counts["no_response"] else "")
           + (f"; skipped {counts['too_long']} longer than {config.max_length} tokens" if counts["too_long"] else ""),
           f"skipped {counts['too_long']} examples longer than max_length {config.max_length} "
           f"(first: {counts['first_too_long']})" if counts["too_long"] else None)
    cache, agree_rows, cache_info, kept = _teacher(s, inputs["teacher"], config, examples, progress)
    hidden, hidden_info = None, {}
    if kept is not None:
        t_model, layers, distance = kept
        hidden = HiddenTeacher(t_model.to(s.args.device).eval(), layers, config.bf16)
        hidden_info = {"weight": config.hidden_kd, "layer_map": layers, "map_weight_distance": round(distance, 6)}
        s.say(f"hidden-state KD: student layers from the teacher's {', '.join(number_runs(layers))} (weights "
              f"{distance:.2g} apart at most)")
    s.model.train()
    saved_attention = s.model.config._attn_implementation
    attention = attention_kernel(config.attention, s.args.device.type, max(len(e.ids) for e in examples))
    s.model.config._attn_implementation = attention
    trainer = DistillTrainer(model=s.model, args=s.args, train_dataset=ExampleDataset(examples),
                             data_collator=Collator(examples, s.tokenizer.pad_token_id, cache,
                                                    inputs=bool(config.input_kd), hidden=hidden is not None),
                             loss=config.loss, alpha=config.alpha, temperature=config.temperature, beta=config.beta,
                             input_kd=config.input_kd, group_lengths=config.group_by_length, hidden=hidden,
                             hidden_kd=config.hidden_kd)
    try:
        _, evaluator = fit(s, trainer, dev_evaluator(s.spec, s.tokenizer, s.dev, agree_rows), progress, callbacks,
                           config.loss)
    finally:  # the model is saved with the kernel it came with
        s.model.config._attn_implementation = saved_attention
    if not s.main:
        return None

    def details(logs: list[dict[str, Any]]) -> dict[str, Any]:
        steady = logs[1:] or logs  # the first step pays for warm-up
        return {"steps": trainer.state.global_step, "epochs": round(float(trainer.state.epoch or 0), 3),
                "examples": len(examples), "data": counts, "train_loss": train_loss(logs),
                "final": {k: logs[-1][k] for k in ("loss", "ce", "kd", "kd_input", "kd_hidden")
                          if logs and k in logs[-1]},
                "tokens_per_s": mean([r["tokens_per_s"] for r in steady]),
                "answer_tokens_per_s": mean([r["answer_tokens_per_s"] for r in steady]),
                "world_size": s.args.world_size, "attention": attention, RECORD_KEY: prompt_record(s.spec),
                "cache": cache_info, **({"hidden_kd": hidden_info} if hidden_info else {})}

    quality = evaluator.last or {"skipped": "no --dev data and no teacher to compare with"}
    return finish(s, f"{config.loss}: {s.out.name}", ("loss", "ce", "kd", "kd_input", "kd_hidden"), details,
                  quality)


def layer_map(student: Any, teacher: Any) -> tuple[list[int], float]:
    """The teacher layer each student layer stands for, found by the weights: for every student layer the teacher
    layer whose attention-output and MLP-down projections are nearest (relative Frobenius distance; 0 for a layer
    a depth prune kept and nothing has trained since). Returns the map and the largest distance.

    Raises:
        InvalidInputError: the hidden sizes or the layers' shapes differ (a width-pruned or another model), a student
            layer is far from every teacher layer (``MAX_MAP_DISTANCE``), or the nearest layers are not in the
            teacher's order.
    """
    import torch

    def weights(model: Any) -> list[torch.Tensor]:
        inner = getattr(model, "model", model)
        inner = getattr(inner, "model", inner)  # a TrimmedTeacher wraps the causal LM
        try:
            return [torch.cat([layer.self_attn.o_proj.weight.detach().flatten(),
                               layer.mlp.down_proj.weight.detach().flatten()]) for layer in inner.layers]
        except AttributeError:
            raise InvalidInputError(f"--hidden-kd: {type(model).__name__} has no llama-style layers "
                                    "(self_attn.o_proj, mlp.down_proj) to match") from None

    if student.config.hidden_size != teacher.config.hidden_size:
        raise InvalidInputError(f"--hidden-kd compares hidden states: the student's are {student.config.hidden_size} "
                                f"wide, the teacher's {teacher.config.hidden_size} (a width-pruned student: use the "
                                "logit losses)")
    ws, wt = weights(student), weights(teacher)
    if any(w.shape != wt[0].shape for w in ws + wt):
        raise InvalidInputError("--hidden-kd: the student's layers are not the teacher's shape (a width-pruned "
                                "student: use the logit losses)")
    table = torch.stack([torch.stack([(a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12) for b in wt])
                         for a in ws])
    best, where = table.min(dim=1)
    layers = [int(i) for i in where]
    if float(best.max()) > MAX_MAP_DISTANCE:
        raise InvalidInputError(f"--hidden-kd: student layer {int(best.argmax())} is {float(best.max()):.2f} "
                                "(relative) from every teacher layer: the student is not a depth-pruned copy of this "
                                "teacher")
    if any(b <= a for a, b in zip(layers, layers[1:], strict=False)):
        raise InvalidInputError(f"--hidden-kd: the student's layers match teacher layers {layers}, not in order: the "
                                "student is not a depth-pruned copy of this teacher")
    return layers, float(best.max())



def attention_kernel(setting: str, device: str, longest: int) -> str:
    """The attention kernel a run trains with (see ``DistillConfig.attention``)."""
    if setting != "auto":
        return setting
    return "eager" if device == "cpu" and longest <= EAGER_MAX_TOKENS else "sdpa"


def _teacher(s: Setup, teacher: str | None, config: DistillConfig, examples: list[Any], progress: Progress | None
             ) -> tuple[Any, list[tuple[list[int], Any]], dict[str, Any], Any]:
    """The teacher's part, done once and then dropped (kept with ``hidden_kd``): its top-k cache (KD losses; reused
    when it exists) and its logits on a few sequences for the agreement figures. Returns ``(cache, agreement rows,
    cache info, kept)``; ``kept``: with ``hidden_kd``, the teacher as the student sees it, the :func:`layer_map` and
    its largest distance (checked before the cache is built), else None."""

    if teacher is None:
        return None, [], {}, None
    cache_path, t_hash, cache_info = None, hash_path(resolve(teacher)[1]), {}
    # the cache keeps the rows KD trains on: the answer's, with --input-kd from the input's first token
    pairs = [(e.ids, e.rows_from(bool(config.input_kd))) for e in examples]
    compute = "bfloat16" if config.bf16 else "float32"  # what the teacher runs in for the cache, as training does
    if config.loss != "sft":
        key = cache_key(t_hash, examples_hash(pairs), config.top_k, config.temperature, config.cache_dtype,
                        map_digest(s.source), compute=compute)
        cache_path = Path(config.cache_dir or s.work) / f"kd-{key}.safetensors"
    agree_rows: list[tuple[list[int], Any]] = []
    kept = None
    with s.args.main_process_first(local=False, desc="teacher cache"):
        need_cache = cache_path is not None and not cache_path.is_file()
        if need_cache or config.hidden_kd or (s.main and (s.dev or examples)):
            t = load_model(teacher)
            mismatch, t_model = None, t.model
            try:
                t_model = teacher_view(t.tokenizer, s.tokenizer, t.model, s.model, s.source,
                                       (str(teacher), str(s.out)))
            except InvalidInputError as exc:
                if config.loss != "sft" or config.hidden_kd:
                    raise
                mismatch = str(exc)
            if config.hidden_kd:  # a student that is no copy of the teacher fails here, before the cache is built
                kept = (t_model, *layer_map(s.model, t_model))
            if mismatch and s.stage:
                s.stage.note(f"no agreement figures: {mismatch}")
            if need_cache:
                assert cache_path is not None
                s.say(f"teacher top-{config.top_k} cache for {len(examples)} examples (once) -> {cache_path}")
                t0 = time.perf_counter()
                c = build_cache(t_model, pairs, config.top_k, config.temperature, config.cache_dtype,
                                {"teacher_sha256": t_hash, "compute": compute},
                                progress=progress if s.main else None, bf16=config.bf16)
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                c.save(cache_path)
                cache_info["build_seconds"] = round(time.perf_counter() - t0, 2)
            if s.main and not mismatch:
                agree_rows = _agreement_rows(t_model, s, examples)
            del t, t_model
    cache = None
    if cache_path is not None:
        cache = TopKCache.load(cache_path)
        rows = sum(len(ids) - start for ids, start in pairs)
        if len(cache) != len(examples) or cache.values.shape[0] != rows:
            raise InvalidInputError(f"{cache_path}: holds {len(cache)} examples and {cache.values.shape[0]} rows, "
                                    f"the data has {len(examples)} and {rows}")
        size = cache_path.stat().st_size
        cache_info.update(path=str(cache_path), bytes=size, k=cache.k, tokens=int(cache.values.shape[0]),
                          bytes_per_token=round(size / max(1, cache.values.shape[0]), 1))
    if s.stage:
        s.stage.lap("teacher")
    return cache, agree_rows, cache_info, kept


def _agreement_rows(teacher: Any, s: Setup, examples: list[Any]) -> list[tuple[list[int], Any]]:
    """A few sequences and the teacher's logits on them, kept so that training can drop the teacher."""
    import torch

    tok, spec = s.tokenizer, s.spec
    if s.dev:
        seqs = []
        for r in s.dev[:AGREEMENT_SEQUENCES]:
            text = tok.apply_chat_template([*spec.messages(r.input), {"role": "assistant",
                                            "content": spec.format_answer(r.label)}], tokenize=False)
            seqs.append(tok(text, add_special_tokens=False)["input_ids"])
    else:
        seqs = [list(e.ids) for e in examples[:AGREEMENT_SEQUENCES]]
    with torch.inference_mode():
        return [(ids, teacher(input_ids=torch.tensor([ids])).logits[0].float()) for ids in seqs]


def distill(student: str | os.PathLike[str], out: str | os.PathLike[str], task: str | os.PathLike[str],
            data: str | os.PathLike[str], config: DistillConfig | None = None, teacher: str | None = None,
            dev: str | os.PathLike[str] | None = None, resume: bool = False, cache_dir: str | None = None,
            log: Log | None = None, progress: Progress | None = None, callbacks: Sequence[Any] = ()
            ) -> Manifest | None:
    """Train STUDENT on DATA into OUT (a plain Hugging Face directory with a ``distill`` manifest).

    Args:
        student: a Hugging Face directory, a ``.gguf`` file or ``"default"``.
        out: the directory to create; checkpoints live in ``OUT.work/`` until it is installed.
        task: a shipped task's name or a ``.toml`` file (its chat prompt).
        data: teacher data or task data (:mod:`.examples`); config: :class:`DistillConfig`.
        teacher: the model whose top-k is distilled (required for fkl/rkl/jsd; with sft it is
            only compared against during evaluation); dev: labelled task data for evaluation.
        resume: continue from the last checkpoint in ``OUT.work/``.
        cache_dir: where KD caches are kept (default ``OUT.work/``, removed with it).
        log: one line per phase; progress: (step, steps in all); callbacks: extra Trainer callbacks.

    Returns:
        The manifest (``quality``: final dev figures; ``details``: losses, tokens/s, steps), or
        ``None`` on the other processes of a data-parallel run.
    """
    config = config or DistillConfig()
    if resume:
        config = dataclasses.replace(config, resume=True)
    if cache_dir is not None:
        config = dataclasses.replace(config, cache_dir=str(cache_dir))
    inputs = {"student": student, "task": task, "data": data, "teacher": teacher, "dev": dev}
    return get(STAGE).call(inputs, out, config, log, progress, callbacks=callbacks)
