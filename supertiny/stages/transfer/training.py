"""What the training stages (``distill``, ``rl``) share around their Trainer: the settings both take, the
run's setup and finish, checkpoints and resuming, dev evaluation, metrics files and their plot.

A training stage is: :func:`setup` (task prompt, dev records, settings, ``OUT.work/``, the
Trainer's arguments, the manifest run, the student) -> its own data and Trainer ->
:func:`fit` (callbacks, resume, train) -> :func:`finish` (save, plot, install, drop the work
folder). Checkpoints go to ``OUT.work/`` (``checkpoint-N/``: safetensors weights, optimizer,
scheduler, RNG states, step) with ``metrics.jsonl``; ``--resume`` continues from the last
one with bit-identical results. ``OUT`` is a plain Hugging Face directory with
``metrics.jsonl``, ``training.png`` and its manifest.

torch and transformers are imported inside the functions that train (the Configs are read without them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny import evaluate as ev
from supertiny.errors import InvalidInputError
from supertiny.manifest import Manifest, StageRun
from supertiny.models import load_model, resolve
from supertiny.outdir import check_output_dir
from supertiny.settings import NON_NEG_INT, POS_INT, Settings, setting
from supertiny.stages.registry import Input, Log, Progress
from supertiny.stages.runs import model_run, settings
from supertiny.stages.trim.vocab import ID_MAP, read_id_map
from supertiny.tasks import MAX_ANSWER_TOKENS, PROMPT_CHOICES, Task, evaluate_task, read_task_data, task_for

AGREEMENT_SEQUENCES = 2  # dev sequences on which student and teacher are compared during training


def prompt_setting(auto: str) -> Any:
    """The ``--task-prompt`` setting of a stage that runs a task (``auto``: what auto means for it)."""
    return setting("auto", f"The task's system prompt: full (every definition) or brief (one line and the schema, "
                   f"for models fine-tuned on the task). auto: {auto}.", choices=PROMPT_CHOICES,
                   flag="--task-prompt")


@dataclass(frozen=True)
class TrainingConfig(Settings):
    """The settings every training stage takes (each stage adds its own after these)."""

    bf16: bool = setting(False, "bfloat16 autocast (weights stay float32; distill's teacher cache too).")
    eval_every: int = setting(0, "Evaluate every N steps (0: at the end only).", check=NON_NEG_INT)
    dev_limit: int = setting(10, "Dev records scored (greedy generation: slow).", check=POS_INT)
    seed: int = setting(0, "Seed of the run (data order, sampling).", check=NON_NEG_INT)
    prompt: str = prompt_setting("the one STUDENT was trained with, else brief when the task has one")
    resume: bool = setting(False, "Continue the unfinished run from its last checkpoint in OUT.work/.", off="",
                           role="run")
    overwrite: bool = setting(False, "Replace OUT and start over.", off="", role="run")


def training_inputs(data_help: str, teacher_help: str) -> tuple[Input, ...]:
    """A training stage's inputs: STUDENT, --task, --data, --teacher, --dev."""
    return (Input("student", "A Hugging Face directory, a .gguf file or 'default'.", kind="model", argument=True),
            Input("task", "A shipped task's name (factory-tickets) or a task .toml file.", kind="task"),
            Input("data", data_help),
            Input("teacher", teacher_help, kind="model", required=False),
            Input("dev", "Labelled task data for evaluation.", required=False))


def training_args(config: TrainingConfig, work: Path, *, batch_size: int, lr: float, steps: int | None,
                  epochs: float = 1.0, grad_accum: int = 1, warmup_ratio: float = 0.0, save_every: int = 0,
                  constant_lr: bool = False) -> Any:
    """transformers' ``TrainingArguments`` of a run (sets up the process group under torchrun / accelerate)."""
    import torch
    from transformers import TrainingArguments
    from transformers.trainer_utils import SchedulerType

    cpu = not torch.cuda.is_available()
    # gloo only under a launcher: asking for a backend makes accelerate expect a process group
    parallel = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return TrainingArguments(
        output_dir=str(work), seed=config.seed, data_seed=config.seed,
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
        learning_rate=lr, warmup_ratio=warmup_ratio, weight_decay=0.0, max_steps=steps if steps else -1,
        num_train_epochs=epochs, bf16=config.bf16, use_cpu=cpu, ddp_backend="gloo" if cpu and parallel else None,
        # a constant learning rate for RL: a linear decay would make the last steps do nothing
        lr_scheduler_type=SchedulerType.CONSTANT if constant_lr else "linear",
        save_strategy="steps" if save_every else "no", save_steps=save_every or 500,
        save_total_limit=2, save_safetensors=True, logging_steps=1, report_to=[], disable_tqdm=True,
        remove_unused_columns=False, dataloader_pin_memory=False, dataloader_num_workers=0,
    )


def work_dir(out: Path) -> Path:
    """Where a run's checkpoints, metrics and (by default) KD cache live until it is installed."""
    return out.with_name(out.name + ".work")


def last_checkpoint(work: Path) -> str | None:
    """The newest *complete* ``checkpoint-N`` in ``work`` (None if there is none). The Trainer writes a
    checkpoint's files in place and its ``trainer_state.json`` last, so a run killed while saving leaves a
    folder without it: that one is passed over (the resumed run redoes its steps and writes it again)."""
    if not work.is_dir():
        return None
    steps = [(trainer_step(str(p)), p) for p in work.iterdir()
             if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").is_file()]
    return str(max(steps)[1]) if steps else None


def check_work_dir(work: Path, recorded: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an unfinished run needs --resume (same settings) or --overwrite."""
    run_file = work / "run.json"
    if work.is_dir() and overwrite and not resume:
        shutil.rmtree(work)
    last = last_checkpoint(work)
    if last and run_file.is_file():  # a run that died before its first checkpoint has nothing to keep
        if not resume:
            raise InvalidInputError(f"{work} holds an unfinished run (last: {Path(last).name});"
                                    " pass --resume to continue it or --overwrite to start over")
        before = json.loads(run_file.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(before) | set(recorded)
                         if k != "steps" and before.get(k) != recorded.get(k))
        if changed:
            raise InvalidInputError(f"--resume with other settings than the run in {work}: "
                                    + ", ".join(f"{k} {before.get(k)!r} -> {recorded.get(k)!r}" for k in changed))
    work.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(recorded, indent=2, sort_keys=True), encoding="utf-8")


def check_same_tokenizer(teacher: Any, student: Any, teacher_model: Any, student_model: Any, names: tuple[str, str]
                         ) -> None:
    """Logit KD compares distributions token by token: both models must share one vocabulary."""
    tv, sv = teacher.get_vocab(), student.get_vocab()
    t_rows, s_rows = teacher_model.config.vocab_size, student_model.config.vocab_size
    if tv != sv or t_rows != s_rows:
        raise InvalidInputError(
            f"teacher {names[0]} and student {names[1]} use different tokenizers ({len(tv)} vs {len(sv)} tokens, "
            f"{t_rows} vs {s_rows} logits): logit KD needs the same vocabulary (or a student trimmed from it by "
            "`supertiny trim-vocab`); use --loss sft on teacher data")


def map_digest(student_dir: Path | None) -> str | None:
    """A short digest of the trim-vocab id map in ``student_dir`` (None without one): part of a KD cache's key."""
    link = read_id_map(student_dir) if student_dir is not None else None
    return None if link is None else hashlib.sha256(json.dumps(link[0]).encode()).hexdigest()[:16]


def teacher_view(teacher: Any, student: Any, teacher_model: Any, student_model: Any, student_dir: Path | None,
                 names: tuple[str, str]) -> Any:
    """The teacher model as the student's logits need it.

    A student with the teacher's vocabulary gets the teacher itself. A student whose vocabulary
    ``supertiny trim-vocab`` cut out of the teacher's (``vocab_map.json`` in its directory, every
    kept token the teacher's string at the mapped id) gets a :class:`.trainer.TrimmedTeacher`: the
    student's ids are mapped to the teacher's and the teacher's logits are cut to the kept tokens,
    so its softmax is over the student's vocabulary (the mass the teacher puts on dropped tokens
    is renormalised away: ~1e-4 on the factory tickets' answers). So a pruned student can be
    trimmed *before* distillation and train with a 5x smaller output layer.

    Raises:
        InvalidInputError: the vocabularies differ and the student is not a trimmed copy of the teacher's.
    """
    try:
        check_same_tokenizer(teacher, student, teacher_model, student_model, names)
        return teacher_model
    except InvalidInputError:
        link = read_id_map(student_dir) if student_dir is not None else None
        if link is None:
            raise
    old_ids, size = link
    by_id = {i: t for t, i in teacher.get_vocab().items()}
    sv = student.get_vocab()
    same = (size == teacher_model.config.vocab_size and len(old_ids) == student_model.config.vocab_size == len(sv)
            and all(by_id.get(old_ids[i]) == t for t, i in sv.items()))
    if not same:
        raise InvalidInputError(f"student {names[1]} was trimmed from another vocabulary than teacher {names[0]}'s "
                                f"({len(old_ids)} of {size} tokens; the teacher has {teacher_model.config.vocab_size} "
                                "logits): logit KD needs the teacher its vocabulary was trimmed from")
    from supertiny.stages.transfer.trainer import TrimmedTeacher

    return TrimmedTeacher(teacher_model, old_ids)


@dataclass
class Setup:
    """A training run once it is set up: what :func:`setup` made (``stage`` is None on the other processes of a
    data-parallel run, which train but do not install)."""

    out: Path
    config: TrainingConfig
    spec: Task
    dev: list[Any]
    settings: dict[str, Any]
    work: Path
    args: Any
    stage: StageRun | None
    model: Any
    tokenizer: Any
    say: Log
    source: Path | None = None  # the student's directory (None: a GGUF file)

    @property
    def main(self) -> bool:
        return self.stage is not None


def setup(name: str, version: int, inputs: dict[str, str | None], out: Path, config: TrainingConfig, log: Log,
          make_args: Callable[[Path], Any]) -> Setup:
    """Resolve the task prompt, read the dev records, set up the work folder, the Trainer's arguments
    (``make_args(work)``), the manifest run and the student."""
    student, teacher = inputs["student"], inputs["teacher"]
    assert student is not None and inputs["task"] is not None
    out = out.absolute()
    spec = task_for(inputs["task"], student, config.prompt, training=True)
    dev = read_task_data(inputs["dev"], spec, labelled=True)[: config.dev_limit] if inputs["dev"] else []
    # the models resolved ("default", a bundle): the record says which files they were
    recorded = settings(config, task=spec.name, data=inputs["data"], dev=inputs["dev"],
                        teacher=teacher and resolve(teacher)[1], student=resolve(student)[1])
    work = work_dir(out)
    args = make_args(work)  # sets up the process group under torchrun / accelerate launch
    main = args.process_index == 0
    if main and not (config.resume and last_checkpoint(work)):
        check_output_dir(out, config.overwrite)  # nothing to resume: a finished OUT is not replaced silently
    stage = model_run(name, version, out, student, recorded) if main else None
    lm = load_model(student)
    kind, path = resolve(student)
    return Setup(out, config, spec, dev, recorded, work, args, stage, lm.model, lm.tokenizer, log,
                 path if kind == "hf" else None)


def loaded(s: Setup, summary: str, skipped: str | None) -> None:
    """Report the loaded training data: ``summary`` to the log; on the main process the "load" lap and, when some
    records were skipped, the note ``skipped``. Then the work folder is checked (after bad data could fail)."""
    s.say(summary)
    with s.args.main_process_first(local=False, desc="setup"):
        if s.stage:
            check_work_dir(s.work, s.settings, s.config.resume, s.config.overwrite)
    if s.stage:
        s.stage.lap("load")
        if skipped:
            s.stage.note(skipped)


def dev_evaluator(task: Task, tokenizer: Any, dev: list[Any], teacher_rows: list[tuple[list[int], Any]]
                  ) -> Callable[[Any], dict[str, Any]]:
    """The evaluation run during training: task score on dev records, agreement with the teacher."""
    import torch

    def complete(model: Any) -> Callable[[list[dict[str, str]]], str]:
        def fn(messages: list[dict[str, str]]) -> str:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            x = torch.tensor([tokenizer(ids, add_special_tokens=False)["input_ids"]])
            with torch.inference_mode():
                out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                     max_new_tokens=MAX_ANSWER_TOKENS, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            return tokenizer.decode(out[0, x.shape[1]:], skip_special_tokens=True)
        return fn

    def evaluate(model: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if dev:
            out.update(evaluate_task(complete(model), task, dev).score.to_dict())
            out.pop("task", None)
        if teacher_rows:
            agree, kl, n = 0.0, 0.0, 0
            for ids, logits in teacher_rows:
                a = ev.agreement(lambda _ids, t=logits: t, ev.torch_logits(model), ids, window=len(ids),
                                 stride=len(ids))
                m = a.student.tokens_scored
                agree, kl, n = agree + a.top1_agreement * m, kl + a.kl_mean * m, n + m
            out.update(top1_agreement=agree / n, kl_mean=kl / n)
        return out

    return evaluate


def fit(s: Setup, trainer: Any, evaluate: Callable[[Any], dict[str, Any]], progress: Progress | None,
        callbacks: Sequence[Any], what: str) -> tuple[Any, Any]:
    """Train ``trainer`` with the metrics, evaluation and progress callbacks, from the last checkpoint in the work
    folder with ``resume`` (the metrics file then loses the records of the steps redone); ``what`` names the run
    in the log. Returns ``(trainer.train's result, the evaluation callback)``."""
    from transformers import PrinterCallback

    from supertiny.stages.transfer.trainer import EvalCallback, MetricsCallback, ProgressCallback

    metrics = MetricsCallback(s.work / "metrics.jsonl")
    evaluator = EvalCallback(evaluate, s.config.eval_every, metrics, trainer)
    trainer.remove_callback(PrinterCallback)
    for cb in [metrics, evaluator, *([ProgressCallback(progress)] if progress else []), *callbacks]:
        trainer.add_callback(cb)
    last = last_checkpoint(s.work) if s.config.resume else None
    if s.main:
        truncate_metrics(s.work / "metrics.jsonl", trainer_step(last))
    s.say(f"training ({what}) from {'step ' + str(trainer_step(last)) if last else 'the start'}; "
          f"checkpoints in {s.work}")
    result = trainer.train(resume_from_checkpoint=last)
    _leave_process_group()
    return result, evaluator


def _leave_process_group() -> None:
    """End a data-parallel run's process group on every process once training is done: the other processes then
    exit cleanly while the main one installs (one that exits holding a gloo group can abort in its destructor,
    "terminate called without an active exception", and fail the launch)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def finish(s: Setup, title: str, keys: Sequence[str], details: Callable[[list[dict[str, Any]]], dict[str, Any]],
           quality: dict[str, Any]) -> Manifest:
    """Write the trained student with its metrics and plot, install it with ``details(train log records)`` and
    ``quality``, and remove the work folder."""
    assert s.stage is not None
    s.stage.lap("train")
    with s.stage:
        d = s.stage.dir
        s.model.eval()
        s.model.save_pretrained(d, safe_serialization=True)
        s.tokenizer.save_pretrained(d)
        if s.source is not None and (s.source / ID_MAP).is_file():  # a trimmed student stays linked to its teacher
            shutil.copyfile(s.source / ID_MAP, d / ID_MAP)
        records = read_metrics(s.work / "metrics.jsonl")
        shutil.copyfile(s.work / "metrics.jsonl", d / "metrics.jsonl")
        if not plot_metrics(records, d / "training.png", title, keys):
            s.stage.note("no training.png: matplotlib is missing (pip install 'supertiny[plot]')")
        manifest = s.stage.install(quality=quality, details=details([r for r in records if "tokens_per_s" in r]))
    shutil.rmtree(s.work, ignore_errors=True)
    return manifest


def mean(xs: Sequence[float], digits: int = 1) -> float | None:
    """The mean of ``xs`` rounded, None for none."""
    return round(sum(xs) / len(xs), digits) if xs else None


def train_loss(logs: Sequence[dict[str, Any]]) -> float | None:
    """The mean loss over every step of the run's log. Not the Trainer's ``training_loss``: after a resume it
    sums only the steps this process ran but divides by every step, so a resumed run would report less."""
    return mean([r["loss"] for r in logs if "loss" in r], 6)


def trainer_step(checkpoint: str | None) -> int:
    """The step of a ``checkpoint-N`` folder (0 for none)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else 0


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics JSON Lines file (empty when it does not exist)."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step`` (a resumed run redoes those steps and logs them again)."""
    records = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def plot_metrics(records: Sequence[dict[str, Any]], png: Path, title: str = "",
                 keys: Sequence[str] = ("loss", "ce", "kd")) -> bool:
    """Training figures ``keys`` (loss and its CE/KD parts; RL adds its reward) by step, with dev figures
    on a second axis; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=f"train {key}", lw=1.5 if key == "loss" else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss, reward" if "reward_mean" in keys else "loss")
    lines, labels = ax.get_legend_handles_labels()
    if evals:
        ax2 = ax.twinx()
        for key in ("task_score", "top1_agreement"):
            pts = [(r["step"], r["eval"][key]) for r in evals if isinstance(r["eval"].get(key), (int, float))]
            if pts:
                ax2.plot(*zip(*pts, strict=True), "o--", label=f"dev {key}")
        ax2.set_ylabel("dev score")
        ax2.set_ylim(0, 1.02)
        more = ax2.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    if lines:
        ax.legend(lines, labels, loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True
