"""The eval stage: a model measured as ``supertiny eval`` measures it, on its own backend.

Two kinds of evaluation, one report file:

* **text** (:func:`evaluate_model`): perplexity on a text, or agreement with a teacher on the
  same windows (top-1 agreement, KL(teacher||student)), and greedy replies to a few prompts;
* **task** (:func:`evaluate_task_model`, when a task and its labelled data are given): the
  task's chat prompt, greedy replies, the task metric (:mod:`supertiny.tasks`).

The stage writes the report as JSON (with its manifest beside it); the command prints it.
The measures are :mod:`supertiny.evaluate`'s, on any engine (:mod:`supertiny.runtime.engines`).

Example::

    report = evaluate_model("student/", EvalConfig(max_tokens=2048, prompts=()), teacher="default")
    report.agreement.top1_agreement
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supertiny import evaluate as ev
from supertiny import schema
from supertiny.backends import BACKENDS, DTYPES, PROVIDER_ALIASES, PROVIDERS
from supertiny.errors import InvalidInputError, UserError
from supertiny.evaluate import Agreement, Generation, Progress, TextScore
from supertiny.manifest import Manifest, ManifestError, read_manifest
from supertiny.models import DEFAULT_TEACHER, resolve
from supertiny.outdir import check_output_file
from supertiny.runtime.engines.base import EngineOptions, open_engine
from supertiny.runtime.engines.constrain import answer_grammar
from supertiny.settings import POS_INT, Settings, at_least, setting
from supertiny.stages.registry import Input, Log, get, stage
from supertiny.stages.runs import model_run, settings
from supertiny.stages.transfer.training import prompt_setting
from supertiny.tasks import (
    MAX_ANSWER_TOKENS,
    engine_complete,
    evaluate_task,
    read_task_data,
    task_for,
    trained_on,
)

if TYPE_CHECKING:
    from supertiny.tasks import TaskEvaluation

STAGE, STAGE_VERSION = "eval", 1
TEXT_MAX_NEW_TOKENS = 48  # a sample reply to a prompt (text mode); a task answer takes MAX_ANSWER_TOKENS
PROVIDER = schema.expect(lambda v: v in PROVIDERS or v in PROVIDER_ALIASES,
                         f"one of {', '.join(PROVIDERS)} (or {', '.join(PROVIDER_ALIASES)})")


@dataclass(frozen=True)
class EngineSettings(Settings):
    """How a measuring stage opens the artifact (``eval``; ``bench`` has its own)."""

    backend: str = setting("auto", "auto: what you deploy on: llama.cpp for .gguf files, onnxruntime for ONNX "
                           "exports; torch for Hugging Face directories.", choices=BACKENDS)
    threads: int | None = setting(None, "llama.cpp / onnxruntime threads (default: all cores).", check=POS_INT)
    provider: str = setting("cpu", f"onnxruntime execution provider: {', '.join(PROVIDERS)}.", check=PROVIDER,
                            example="cuda")
    dtype: str = setting("float32", "Dtype the model runs in (torch backend).", choices=DTYPES)


@dataclass(frozen=True)
class EvalConfig(EngineSettings):
    """Settings of one evaluation (text or task); bad values fail before anything loads."""

    window: int = setting(ev.DEFAULT_WINDOW, "Tokens per evaluation window.", check=POS_INT)
    stride: int = setting(ev.DEFAULT_STRIDE, "Tokens each window moves (<= window).", check=POS_INT)
    max_tokens: int | None = setting(None, "Score only the first N tokens of the text.", check=at_least(2))
    prompts: tuple[str, ...] = setting(ev.DEFAULT_PROMPTS, "Prompt for greedy generation (repeatable).",
                                       flag="--prompt", off="--no-generate", multiple=True, example=("Hi",))
    max_new_tokens: int | None = setting(None, f"Tokens generated per prompt [default: {TEXT_MAX_NEW_TOKENS}; with "
                                         f"--task {MAX_ANSWER_TOKENS}, a whole JSON answer].", check=at_least(0))
    limit: int | None = setting(None, "With --task: score only the first N records.", check=at_least(1))
    prompt: str = prompt_setting("the one MODEL was trained with (its manifest), else full")
    batch_size: int = setting(8, "With --task: records decoded together (torch backend; 1: one at a time).",
                              check=POS_INT)
    constrained: bool | None = setting(None, "With --task: hold every answer to the task's JSON schema "
                                       "(constrained decoding), or decode freely [default: constrained for a model "
                                       "trained on the task (its manifest says so), free otherwise].",
                                       flag="--constrained", off="--free", example=True)

    def problems(self) -> list[str]:
        if self.prompts and self.max_new_tokens == 0:
            return ["max_new_tokens must be at least 1 to answer the prompts (give no prompts to generate nothing)"]
        try:
            next(ev.windows(2, self.window, self.stride))  # the window checks, before any slow loading
            self.engine_options()  # threads, provider and dtype checked by the engine's own rules
        except InvalidInputError as exc:
            return [str(exc)]
        return []

    def engine_options(self) -> EngineOptions:
        """The :class:`~supertiny.runtime.engines.base.EngineOptions` both engines open with."""
        return EngineOptions(threads=self.threads, n_ctx=self.window, provider=self.provider, dtype=self.dtype,
                             logits=True)

    def new_tokens(self, task: bool) -> int:
        """Tokens generated per reply: the setting, else a sample reply's or a whole task answer's."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return MAX_ANSWER_TOKENS if task else TEXT_MAX_NEW_TOKENS


MODEL = Input("model", "A .gguf file, an ONNX export, a Hugging Face directory, a bundle or 'default'.",
              kind="model", argument=True)
INPUTS = (MODEL,
          Input("task", "Score a structured-output task instead: a shipped task's name (factory-tickets) or a task "
                ".toml file; needs --data.", kind="task", required=False),
          Input("data", "With --task: labelled JSON Lines, one {\"input\": ..., \"label\": {...}} a line.",
                required=False),
          Input("teacher", "Teacher to compare with: top-1 agreement and KL(teacher||student).", kind="model",
                required=False),
          Input("text", "UTF-8 text to score (default: the corpus bundled with supertiny).", required=False))


def check_inputs(inputs: dict[str, str | None], config: EvalConfig) -> None:
    """Which inputs go together (a task needs its data; a task evaluation takes no text or teacher)."""
    if (inputs["task"] is None) != (inputs["data"] is None):
        raise InvalidInputError("--task and --data go together: a task and the labelled records to score it on")
    if inputs["task"] is None and config.limit is not None:
        raise InvalidInputError("--limit counts task records; it needs --task and --data")
    if inputs["task"] is not None and (inputs["teacher"] is not None or inputs["text"] is not None):
        raise InvalidInputError("--task scores replies to the task's records; --teacher and --text do not apply")


@stage(STAGE, version=STAGE_VERSION, config=EvalConfig, inputs=INPUTS, output="file", command=("eval",),
       out_option="--out")
def run(inputs: dict[str, str | None], out: Path, config: EvalConfig, log: Log, progress: Progress | None
        ) -> Manifest:
    """Evaluate ``inputs["model"]`` and write the report (the command's ``--json``) to ``out`` with its manifest."""
    check_output_file(out)
    return write_report(evaluate(inputs, config, progress), out, inputs, config)


def write_report(report: EvalReport | TaskReport, out: Path, inputs: dict[str, str | None], config: EvalConfig
                 ) -> Manifest:
    """Install ``report`` as the JSON file ``out`` with its manifest (the headline figures in ``quality``)."""
    model = inputs["model"]
    assert model is not None
    data = report.to_dict()
    others = {k: v for k, v in inputs.items() if k != "model"}
    with model_run(STAGE, STAGE_VERSION, Path(out), model, settings(config, **others), single_file=True,
                   info=report.model) as run:
        staged = run.temp("report")
        staged.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        keys = ("task_score", "json_valid", "schema_valid", "fields", "n", "score", "agreement")
        return run.install(staged, quality={k: data[k] for k in keys if k in data},
                           details={"kind": "task" if inputs["task"] else "text"})


def evaluate(inputs: dict[str, str | None], config: EvalConfig, progress: Progress | None = None
             ) -> EvalReport | TaskReport:
    """The evaluation ``inputs`` ask for: a task's when a task is given, else the text one."""
    check_inputs(inputs, config)
    model = inputs["model"]
    assert model is not None
    if inputs["task"] is not None:
        assert inputs["data"] is not None
        return evaluate_task_model(model, inputs["task"], inputs["data"], config, progress=progress)
    return evaluate_model(model, config, teacher=inputs["teacher"], progress=progress, text=inputs["text"])


@dataclass
class EvalReport:
    """Everything ``supertiny eval`` measures, ready for JSON."""

    model: dict[str, Any]
    text: str
    score: TextScore
    teacher: dict[str, Any] | None = None
    agreement: Agreement | None = None
    generations: list[Generation] = field(default_factory=list)
    manifest: dict[str, Any] | None = None  # what the artifact's manifest says it is, when it has one

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for g, gd in zip(self.generations, d["generations"], strict=True):
            gd["tokens_per_s"] = g.tokens_per_s
        if self.manifest is None:
            del d["manifest"]
        return d


def evaluate_model(model: str | os.PathLike[str], config: EvalConfig | None = None,
                   teacher: str | os.PathLike[str] | None = None, progress: Progress | None = None,
                   text: str | os.PathLike[str] | None = None) -> EvalReport:
    """Measure ``model``: perplexity on a text, agreement with ``teacher``, greedy generations.

    Args:
        model: a ``.gguf`` file, an ONNX export, a Hugging Face directory or ``"default"``.
        config: :class:`EvalConfig` (the defaults when None).
        teacher: a model to compare with on the same windows: top-1 agreement and
            KL(teacher‖student). It runs on its native backend unless ``config.backend``
            is ``torch`` (then both run in torch), and must share the model's vocabulary.
        progress: called with (windows done, windows in all) while the text is scored.
        text: the UTF-8 text file to score (default: the corpus bundled with supertiny).

    Returns:
        :class:`EvalReport`: the model's description, the score, the teacher's
        description and the agreement (with a teacher), the generations.

    Raises:
        UserError: a missing text or model, bad options, a teacher with another vocabulary.
    """
    config = config or EvalConfig()
    text_file = str(text) if text else str(ev.default_corpus_path())
    content = ev.read_text(text_file)
    resolve(model)  # a missing model or teacher fails before anything slow loads
    if teacher is not None:
        resolve(teacher)
    options = config.engine_options()
    with open_engine(model, config.backend, options) as lm:
        ids = ev.tokenize_text(lm.tokenizer, content, config.max_tokens)
        teacher_info, agreement = None, None
        if teacher is None:
            score = ev.perplexity(lm.logits, ids, config.window, config.stride, progress)
        else:
            # the teacher runs where it natively runs, unless torch was asked for both
            with open_engine(teacher, "torch" if config.backend == "torch" else "auto", options) as tm:
                if tm.tokenizer.get_vocab() != lm.tokenizer.get_vocab():
                    raise UserError("the teacher's tokenizer differs from the student's; "
                                    "agreement needs a shared vocabulary")
                teacher_info = tm.info
                agreement = ev.agreement(tm.logits, lm.logits, ids, config.window, config.stride, progress)
            # leaving the block freed the teacher before the student generates
            score = agreement.student
        generations = []
        if config.prompts:
            generations = ev.generate(lm.generate, lm.tokenizer, config.prompts, config.new_tokens(task=False))
        return EvalReport(model=lm.info, text=text_file, score=score, teacher=teacher_info, agreement=agreement,
                          generations=generations, manifest=manifest_summary(model))


@dataclass
class TaskReport:
    """What ``supertiny eval MODEL --task TASK --data FILE`` measures, ready for JSON."""

    model: dict[str, Any]
    data: str
    evaluation: TaskEvaluation
    seconds: float
    max_new_tokens: int
    manifest: dict[str, Any] | None = None
    prompt: str = "full"
    constrained: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {"model": self.model, "data": self.data, **self.evaluation.to_dict(),
             "max_new_tokens": self.max_new_tokens, "prompt": self.prompt, "seconds": self.seconds,
             "decoding": "constrained" if self.constrained else "free"}
        if self.manifest is not None:
            d["manifest"] = self.manifest
        return d


def evaluate_task_model(model: str | os.PathLike[str], task: str | os.PathLike[str], data: str | os.PathLike[str],
                        config: EvalConfig | None = None, progress: Progress | None = None, **settings: Any
                        ) -> TaskReport:
    """Score ``model`` on a structured-output task: its chat template, greedy replies, the task metric.

    Args:
        model: a ``.gguf`` file, an ONNX export, a Hugging Face directory or ``"default"``.
        task: a shipped task's name (``factory-tickets``) or a task ``.toml`` file.
        data: labelled JSON Lines (``{"input": ..., "label": {...}}`` a line).
        config: :class:`EvalConfig`: the engine (backend, threads, provider, dtype) and the task's settings
            (``max_new_tokens``: the reply limit, an answer cut short is JSON-invalid; ``limit``: the first N
            records; ``prompt``: the task prompt, ``auto`` = the one the model was trained with, else full;
            ``batch_size``: records decoded together where the backend batches; ``constrained``: answers held
            to the task's JSON schema, None = when the model was trained on the task).
        progress: called with (records done, records in all).
        settings: :class:`EvalConfig` fields replacing ``config``'s (``limit=5``).

    Returns:
        :class:`TaskReport`: ``evaluation.score.task_score`` is the mean field accuracy.

    Example::

        r = evaluate_task_model("default", "factory-tickets", "examples/factory_tickets/data/dev.jsonl", limit=5)
        r.evaluation.score.task_score
    """

    config = dataclasses.replace(config or EvalConfig(), **settings)
    max_new_tokens = config.new_tokens(task=True)
    if max_new_tokens < 1:
        raise InvalidInputError(f"max_new_tokens must be at least 1 (a task answer), got {max_new_tokens}")
    spec = task_for(task, model, config.prompt)
    records = read_task_data(data, spec, labelled=True)[:config.limit]  # bad files fail before the model loads
    resolve(model)
    options = EngineOptions(threads=config.threads, provider=config.provider, dtype=config.dtype)
    start = time.perf_counter()
    constrained = config.constrained if config.constrained is not None else trained_on(model, spec)
    with open_engine(model, config.backend, options) as engine:
        many = getattr(engine, "complete_batch", None)
        evaluation = evaluate_task(engine_complete(engine, max_new_tokens), spec, records, progress,
                                   complete_batch=many and partial(many, max_tokens=max_new_tokens),
                                   batch_size=config.batch_size, grammar=answer_grammar(spec) if constrained else None)
        info = engine.info
    return TaskReport(model=info, data=str(data), evaluation=evaluation, seconds=time.perf_counter() - start,
                      max_new_tokens=max_new_tokens, manifest=manifest_summary(model), prompt=spec.prompt,
                      constrained=constrained)


def manifest_summary(model: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What an artifact's manifest says it is (stage, source, files), or None without one."""
    if str(model) == DEFAULT_TEACHER:
        return None
    try:
        m = read_manifest(resolve(model)[1])
    except ManifestError as exc:  # a broken sidecar does not stop an evaluation; it is reported
        return {"error": str(exc)}
    if m is None:
        return None
    return {"stage": m.stage, "stage_version": m.stage_version, "source": m.source.get("path"),
            "source_sha256": m.source.get("sha256"), "created": m.created, "files": len(m.files),
            "bytes": m.bytes}


def eval_model(model: str | os.PathLike[str], out: str | os.PathLike[str], config: EvalConfig | None = None,
               log: Log | None = None, progress: Progress | None = None, **inputs: str | os.PathLike[str] | None
               ) -> Manifest:
    """Run the stage: evaluate MODEL (``inputs``: ``task`` + ``data``, or ``teacher``/``text``) into the report OUT."""
    return get(STAGE).call({"model": model, **inputs}, out, config or EvalConfig(), log, progress)
