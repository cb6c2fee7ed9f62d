"""One evaluation of a model, as ``supertiny eval`` runs it: the text, the engines, the
measures of :mod:`supertiny.evaluate`, the report.

:func:`evaluate_model` opens the model (and a teacher) on its backend, scores a text
(perplexity, or agreement with the teacher on the same windows), generates greedy
replies and returns an :class:`EvalReport`. The CLI only builds the
:class:`EvalConfig`, draws the progress bar and prints the report.

Example::

    report = evaluate_model("student/", EvalConfig(max_tokens=2048, prompts=()), teacher="default")
    report.agreement.top1_agreement
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from . import evaluate as ev
from .errors import InvalidInputError, UserError
from .evaluate import Agreement, Generation, Progress, TextScore
from .models import resolve
from .runtime.engine import EngineOptions, open_engine

if TYPE_CHECKING:
    from .tasks import TaskEvaluation

# A task's answer is one JSON object: ~30-60 tokens for factory-tickets; room for more fields.
TASK_MAX_NEW_TOKENS = 128


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation; bad values fail before anything loads.

    Attributes:
        text: UTF-8 text file to score (default: the corpus bundled with supertiny).
        window: tokens per evaluation window.
        stride: tokens each window moves (``1..window``).
        max_tokens: score only the first N tokens of the text (at least 2).
        prompts: prompts for greedy generation; empty: no generations.
        max_new_tokens: tokens generated per prompt.
        backend: ``auto`` (the artifact's native backend) or a backend name.
        threads: llama.cpp / onnxruntime threads (default: all cores).
        provider: onnxruntime execution provider.
        dtype: the dtype the torch backend runs in.
    """

    text: str | os.PathLike[str] | None = None
    window: int = ev.DEFAULT_WINDOW
    stride: int = ev.DEFAULT_STRIDE
    max_tokens: int | None = None
    prompts: tuple[str, ...] = ev.DEFAULT_PROMPTS
    max_new_tokens: int = 48
    backend: str = "auto"
    threads: int | None = None
    provider: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        next(ev.windows(2, self.window, self.stride))  # the window checks, before any slow loading
        if self.max_tokens is not None and self.max_tokens < 2:
            raise InvalidInputError(f"max_tokens must be at least 2, got {self.max_tokens}")
        if isinstance(self.prompts, str) or not all(isinstance(p, str) for p in self.prompts):
            raise InvalidInputError("prompts must be a list of strings")
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if self.prompts and self.max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        self.engine_options()  # threads, provider and dtype checked by the engine's own rules

    def engine_options(self) -> EngineOptions:
        """The :class:`~supertiny.runtime.engine.EngineOptions` both engines open with."""
        return EngineOptions(threads=self.threads, n_ctx=self.window, provider=self.provider, dtype=self.dtype,
                             logits=True)

    def text_path(self) -> str:
        """The text file scored, as the report names it."""
        return str(self.text) if self.text else str(ev.default_corpus_path())


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
                   teacher: str | os.PathLike[str] | None = None, progress: Progress | None = None) -> EvalReport:
    """Measure ``model``: perplexity on a text, agreement with ``teacher``, greedy generations.

    Args:
        model: a ``.gguf`` file, an ONNX export, a Hugging Face directory or ``"default"``.
        config: :class:`EvalConfig` (the defaults when None).
        teacher: a model to compare with on the same windows: top-1 agreement and
            KL(teacher‖student). It runs on its native backend unless ``config.backend``
            is ``torch`` (then both run in torch), and must share the model's vocabulary.
        progress: called with (windows done, windows in all) while the text is scored.

    Returns:
        :class:`EvalReport`: the model's description, the score, the teacher's
        description and the agreement (with a teacher), the generations.

    Raises:
        UserError: a missing text or model, bad options, a teacher with another vocabulary.
    """
    config = config or EvalConfig()
    text_file = config.text_path()
    text = ev.read_text(text_file)
    resolve(model)  # a missing model or teacher fails before anything slow loads
    if teacher is not None:
        resolve(teacher)
    options = config.engine_options()
    with open_engine(model, config.backend, options) as lm:
        ids = ev.tokenize_text(lm.tokenizer, text, config.max_tokens)
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
            generations = ev.generate(lm.generate, lm.tokenizer, config.prompts, config.max_new_tokens)
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

    def to_dict(self) -> dict[str, Any]:
        d = {"model": self.model, "data": self.data, **self.evaluation.to_dict(),
             "max_new_tokens": self.max_new_tokens, "prompt": self.prompt, "seconds": self.seconds}
        if self.manifest is not None:
            d["manifest"] = self.manifest
        return d


def evaluate_task_model(model: str | os.PathLike[str], task: str | os.PathLike[str], data: str | os.PathLike[str],
                        config: EvalConfig | None = None, max_new_tokens: int = TASK_MAX_NEW_TOKENS,
                        limit: int | None = None, progress: Progress | None = None,
                        prompt: str = "auto", batch_size: int = 8) -> TaskReport:
    """Score ``model`` on a structured-output task: its chat template, greedy replies, the task metric.

    Args:
        model: a ``.gguf`` file, an ONNX export, a Hugging Face directory or ``"default"``.
        task: a shipped task's name (``factory-tickets``) or a task ``.toml`` file.
        data: labelled JSON Lines (``{"input": ..., "label": {...}}`` a line).
        config: backend, threads, provider and dtype are read from it.
        max_new_tokens: reply length limit (an answer cut short is JSON-invalid).
        limit: score only the first N records.
        progress: called with (records done, records in all).
        prompt: the task prompt (``auto``: the one the model was trained with, else full).
        batch_size: records decoded together where the backend batches (torch); 1: one at a time.

    Returns:
        :class:`TaskReport`: ``evaluation.score.task_score`` is the mean field accuracy.

    Example::

        r = evaluate_task_model("default", "factory-tickets", "examples/factory_tickets/data/dev.jsonl", limit=5)
        r.evaluation.score.task_score
    """
    import time

    from .tasks import engine_complete, evaluate_task, read_task_data, task_for

    config = config or EvalConfig()
    if max_new_tokens < 1:
        raise InvalidInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise InvalidInputError(f"limit must be at least 1, got {limit}")
    spec = task_for(task, model, prompt)
    records = read_task_data(data, spec, labelled=True)[:limit]  # bad files fail before the model loads
    resolve(model)
    options = EngineOptions(threads=config.threads, provider=config.provider, dtype=config.dtype)
    start = time.perf_counter()
    with open_engine(model, config.backend, options) as engine:
        many = getattr(engine, "complete_batch", None)
        evaluation = evaluate_task(engine_complete(engine, max_new_tokens), spec, records, progress,
                                   complete_batch=many and partial(many, max_tokens=max_new_tokens),
                                   batch_size=batch_size)
        info = engine.info
    return TaskReport(model=info, data=str(data), evaluation=evaluation, seconds=time.perf_counter() - start,
                      max_new_tokens=max_new_tokens, manifest=manifest_summary(model), prompt=spec.prompt)


def manifest_summary(model: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What an artifact's manifest says it is (stage, source, files), or None without one."""
    from .manifest import ManifestError, read_manifest
    from .models import DEFAULT_TEACHER

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
