"""Teacher data by rejection sampling: K answers per prompt, each scored, the best accepted one kept.

For each prompt of a task data file, :func:`teach` asks a teacher (:mod:`.teachers`: a local
artifact or an OpenAI-compatible server) for ``samples`` answers with the task's chat
messages. Sample 0 is greedy (``greedy_first``), the others sampled with ``temperature`` and
``top_p`` from a seed derived from (``seed``, prompt index, sample index), so a prompt's
samples do not depend on the order the workers take prompts in. Each answer is parsed with
the task's parser and scored:

- a prompt **with a label**: the fraction of fields right (:func:`supertiny.tasks.field_matches`);
  accepted when every field is right (the judge is not asked);
- **without a label**: 0 unless schema-valid; then, with a judge, the judge's grade mapped to
  [0, 1] (:attr:`.judge.Judgement.normalized`), accepted at ``judge_threshold`` or above; an
  unparseable grade rejects the sample and is recorded; without a judge, schema validity alone
  (1.0) accepts.

The best accepted answer (highest score, the earliest sample on a tie) is kept, written
canonically with ``task.format_answer``. The output is JSON Lines, one line per prompt in
file order, the contract ``supertiny distill`` reads::

    {"input": str, "response": str | null, "accepted": bool, "score": float, "samples": K,
     "scores": [float, ...], "label": {...} (only if the prompt had one),
     "judge": [{"score", "reason", "error"?} | null, ...] (only when a judge graded a sample)}

``score`` is the best sample score (the kept answer's when accepted). A manifest
(``D.jsonl.supertiny.json``) records the acceptance rate, mean score, samples/s and settings.

Resuming: every finished prompt is appended (flushed, fsynced) to ``D.jsonl.partial`` next to
the output. A rerun with the same settings skips the prompts found there (and in a finished
output whose manifest has the same settings, so a larger ``--limit`` extends it); other
settings are refused unless ``overwrite``. ``concurrency`` and ``limit`` may change between
runs: they do not change any prompt's result.

Prompts that do not fit: a local teacher's prompts are all measured before any sampling, and
one whose prompt plus ``max_new_tokens`` exceeds the context is an error naming its file and
line; a server that refuses a prompt (HTTP 400) is an error naming the line too. Finished
prompts stay in the progress file, so after fixing the line a rerun continues.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..runtime.sampling import Sampling
from ..tasks import Task, TaskRecord, field_matches, read_task_data, task_for
from .judge import Judge, Judgement
from .teach_records import (
    PROGRESS_SUFFIX,
    RESUME_KEYS,
    STAGE,
    STAGE_VERSION,
    ProgressFile,
    PromptResult,
    progress_path,
    read_finished,
    read_progress,
)
from .teachers import PromptError, Teacher, TeacherOptions, is_url, open_teacher

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TeachConfig:
    """Settings of :func:`teach`.

    Args:
        samples: answers asked per prompt (K).
        temperature, top_p: sampling of every sample but a greedy first one.
        max_new_tokens: reply length limit (a cut-off answer is JSON-invalid).
        seed: base of the per-sample seeds.
        greedy_first: sample 0 is greedy (the teacher's best guess is always among the candidates).
        judge: a model or server URL grading unlabelled answers (None: schema validity only).
        judge_threshold: the lowest grade (1-5) that accepts an answer.
        concurrency: prompts in flight (local: one engine per worker; server: requests in flight).
        limit: use only the first N prompts.
        stop_when_perfect: stop a prompt's sampling at the first answer with the highest score (all fields
            right, or the judge's top grade): the kept answer is the same, the later samples are not made.
        prompt: the task prompt (``auto``: the one the teacher was trained with, else the full one;
            see :mod:`supertiny.tasks.prompts`).
    """

    samples: int = 4
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0
    greedy_first: bool = True
    judge: str | None = None
    judge_threshold: float = 4.0
    concurrency: int = 1
    limit: int | None = None
    prompt: str = "auto"
    stop_when_perfect: bool = False

    def __post_init__(self) -> None:
        for name, low in (("samples", 1), ("max_new_tokens", 1), ("concurrency", 1)):
            if getattr(self, name) < low:
                raise InvalidInputError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {self.limit}")
        if not 1 <= self.judge_threshold <= 5:
            raise InvalidInputError(f"judge_threshold is a grade in 1-5, got {self.judge_threshold:g}")
        Sampling(temperature=self.temperature, top_p=self.top_p)  # the same checks as everywhere


@dataclass(frozen=True)
class TeachReport:
    """What :func:`teach` did: the manifest written, and this run's own figures."""

    out: Path
    manifest: dict[str, Any]
    resumed: int  # prompts taken from an earlier run
    generated: int  # samples asked of the teacher in this run
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), **self.manifest["quality"], "resumed": self.resumed,
                "samples_generated": self.generated, "seconds": round(self.seconds, 2),
                "manifest": self.manifest}


def sample_seed(seed: int, index: int, k: int) -> int:
    """The seed of sample ``k`` of prompt ``index``: fixed whatever order prompts are run in."""
    digest = hashlib.sha256(f"{seed}:{index}:{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class _Sampler:
    """Runs one prompt's K samples, scores them and picks the answer to keep."""

    def __init__(self, task: Task, teacher: Teacher, judge: Judge | None, config: TeachConfig):
        self.task, self.teacher, self.judge, self.config = task, teacher, judge, config
        self.generated = 0
        self.judge_unparseable = 0
        self._lock = threading.Lock()

    def sampling(self, index: int, k: int) -> Sampling:
        c = self.config
        if k == 0 and c.greedy_first:
            return Sampling()
        return Sampling(temperature=c.temperature, top_p=c.top_p, seed=sample_seed(c.seed, index, k))

    def run(self, index: int, record: TaskRecord) -> PromptResult:
        task, messages = self.task, self.task.messages(record.input)
        scores: list[float] = []
        judged: list[dict[str, Any] | None] = []
        grades: dict[str, Judgement] = {}  # a repeated answer is graded once
        best: tuple[float, str] | None = None
        for k in range(self.config.samples):
            try:
                text = self.teacher.complete(messages, self.sampling(index, k), self.config.max_new_tokens,
                                             until_json=True)
            except PromptError as exc:
                raise PromptError(f"{record.source}:{record.line}: {exc}") from None
            with self._lock:
                self.generated += 1
            parsed = task.parse(text)
            judgement = None
            if record.label is not None:
                hits = field_matches(task, parsed, record.label)
                score = sum(hits.values()) / len(hits)
                accepted = all(hits.values())
                answer = task.format_answer(parsed.values) if accepted else None
            elif not parsed.schema_valid:
                score, accepted, answer = 0.0, False, None
            elif self.judge is None:
                score, accepted, answer = 1.0, True, task.format_answer(parsed.values)
            else:
                answer = task.format_answer(parsed.values)
                if answer not in grades:
                    try:
                        grades[answer] = self.judge.grade(task, record.input, answer)
                    except PromptError as exc:
                        raise PromptError(f"{record.source}:{record.line}: judge: {exc}") from None
                    if grades[answer].score is None:
                        with self._lock:
                            self.judge_unparseable += 1
                judgement = grades[answer]
                score, accepted = judgement.normalized, self.judge.accepts(judgement)
            scores.append(score)
            judged.append(None if judgement is None else judgement.to_dict())
            if accepted and answer is not None and (best is None or score > best[0]):
                best = (score, answer)
                if score >= 1.0 and self.config.stop_when_perfect:
                    break
        use_judge = any(j is not None for j in judged)
        return PromptResult(index, record.input, None if best is None else best[1], best is not None, max(scores),
                            scores, record.label, judged if use_judge else None)


# -- the stage -----------------------------------------------------------------------------

def _check_lengths(task: Task, teacher: Teacher, records: list[tuple[int, TaskRecord]], max_new: int) -> None:
    """Every prompt and its reply fit the local teacher's context; else the first line that does not."""
    if teacher.n_ctx is None:
        return
    for _, r in records:
        n = teacher.prompt_tokens(task.messages(r.input))
        if n is not None and n + max_new > teacher.n_ctx:
            raise PromptError(f"{r.source}:{r.line}: the prompt has {n} tokens and the reply may take {max_new} "
                              f"more; the teacher's context holds {teacher.n_ctx} (shorten the input, lower "
                              "--max-new-tokens or raise --n-ctx)")


def _settings(teacher: str, task: Task, config: TeachConfig, options: TeacherOptions,
              judge_options: TeacherOptions) -> dict[str, Any]:
    def spec(s: str | None) -> str | None:
        return s if s is None or is_url(s) or s == "default" else str(Path(s).resolve())

    task_sha = hashlib.sha256(json.dumps({**task.to_dict(), "source": ""}, sort_keys=True).encode()).hexdigest()
    return {**asdict(config), "teacher": spec(teacher), "model_name": options.model_name, "task": task.name,
            "task_sha256": task_sha, "prompt": task.prompt, "judge": spec(config.judge),
            "judge_model_name": judge_options.model_name,
            "n_ctx": options.n_ctx, "threads": options.threads, "backend": options.backend}


def teach(teacher: str, task: str | os.PathLike[str], prompts: str | os.PathLike[str], out: str | os.PathLike[str],
          config: TeachConfig | None = None, options: TeacherOptions | None = None,
          judge_options: TeacherOptions | None = None, overwrite: bool = False,
          progress: Progress | None = None) -> TeachReport:
    """Generate teacher data for ``prompts`` by rejection sampling; see the module docstring.

    Args:
        teacher: a local artifact (``.gguf``, ONNX export, HF directory, ``default``) or a server URL.
        task: a shipped task's name or a task ``.toml`` file.
        prompts: task data (``{"input", "label"?}`` a line).
        out: the output ``.jsonl`` (its manifest goes beside it).
        config: :class:`TeachConfig`; options / judge_options: how to reach the teacher / the judge.
        overwrite: replace an existing output and drop an unfinished run's progress.
        progress: called with (prompts done, prompts in all).

    Returns:
        :class:`TeachReport`; ``manifest["quality"]["acceptance_rate"]`` is the share of prompts kept.

    Example::

        teach("default", "factory-tickets", "dev.jsonl", "teacher.jsonl", TeachConfig(samples=2, limit=10))
    """
    from ..manifest import StageRun

    config = config or TeachConfig()
    options = options or TeacherOptions()
    judge_options = judge_options or dataclasses.replace(options, model_name=None)  # the judge may be elsewhere
    out = Path(out)
    if not out.parent.is_dir():
        raise InvalidInputError(f"the output's parent folder {out.parent} does not exist")
    spec = task_for(task, teacher, config.prompt)
    records = read_task_data(prompts, spec)[: config.limit]  # a bad file fails before any model loads
    settings = _settings(teacher, spec, config, options, judge_options)
    key = {k: settings[k] for k in RESUME_KEYS}
    partial = progress_path(out)
    if overwrite:
        partial.unlink(missing_ok=True)
    done = read_finished(out, key, overwrite)
    if partial.exists():
        done.update(read_progress(partial, key))
    done = {i: r for i, r in done.items() if i < len(records)}  # a smaller --limit leaves the rest out
    for i, r in done.items():
        if r.input != records[i].input:
            raise InvalidInputError(f"{prompts}: the prompts changed since the earlier run (prompt {i + 1} differs); "
                                    "pass --overwrite to start over")
    todo = [(i, r) for i, r in enumerate(records) if i not in done]
    resumed = len(records) - len(todo)
    start = time.perf_counter()
    run = StageRun(STAGE, STAGE_VERSION, out, source=teacher, info={}, settings={**settings, "resume_key": key},
                   single_file=True)
    sampler = None
    if todo:
        sampler, run.info = _generate(spec, teacher, todo, done, config, options, judge_options, key, partial,
                                      progress, resumed, len(records))
    else:
        run.info = {"teacher": settings["teacher"]}
    run.lap("generate")
    gen_s = run.seconds["generate"]
    with run:
        staged = run.temp("out")
        results = [done[i] for i in range(len(records))]
        with staged.open("w", encoding="utf-8") as fh:
            for r in results:
                fh.write(json.dumps(r.line(), ensure_ascii=False) + "\n")
        generated = sampler.generated if sampler else 0
        n_acc = sum(r.accepted for r in results)
        quality = {"prompts": len(results), "accepted": n_acc, "acceptance_rate": n_acc / len(results),
                   "mean_score": sum(r.score for r in results) / len(results),
                   "sample_acceptance_rate": _sample_rate(results, config),
                   "samples_per_s": round(generated / gen_s, 3) if generated else None}
        details = {"prompts_file": str(Path(prompts).resolve()), "labelled": sum(r.label is not None for r in results),
                   "resumed": resumed, "samples_generated": generated,
                   "judge_unparseable": sampler.judge_unparseable if sampler else 0}
        if config.judge is None and any(r.label is None for r in results):
            run.note("no judge: unlabelled prompts were accepted on schema validity alone")
        if config.judge is not None and all(r.label is not None for r in results):
            run.note("every prompt has a label: the task metric scored the answers, the judge was not asked")
        manifest = run.install(staged, quality=quality, details=details)
    partial.unlink(missing_ok=True)
    return TeachReport(out, manifest.to_dict(), resumed, generated, time.perf_counter() - start)


def _sample_rate(results: list[PromptResult], config: TeachConfig) -> float:
    """The share of all samples that were fully right (labelled) or accepted-grade (judged)."""
    total = sum(len(r.scores) for r in results)
    good = sum(s >= 1.0 if r.judge is None else s >= (config.judge_threshold - 1) / 4
               for r in results for s in r.scores)
    return good / total if total else 0.0


def _generate(task: Task, teacher_spec: str, todo: list[tuple[int, TaskRecord]], done: dict[int, PromptResult],
              config: TeachConfig, options: TeacherOptions, judge_options: TeacherOptions, key: dict[str, Any],
              partial: Path, progress: Progress | None, resumed: int, total: int) -> tuple[_Sampler, dict[str, Any]]:
    """Run the prompts still to do on ``concurrency`` workers; each result goes to the progress file."""
    workers = min(config.concurrency, len(todo))
    teacher = open_teacher(teacher_spec, options, workers)
    judge_model = None
    try:
        _check_lengths(task, teacher, todo, config.max_new_tokens)
        if config.judge is not None and any(r.label is None for _, r in todo):  # labels need no judge
            judge_model = open_teacher(config.judge, judge_options, workers)
        judge = Judge(judge_model, config.judge_threshold) if judge_model else None
        sampler = _Sampler(task, teacher, judge, config)
        info = {**teacher.describe(), **({"judge": judge.describe()} if judge else {})}
        sink = ProgressFile(partial, key, fresh=not partial.exists())
        lock = threading.Lock()
        count = [resumed]

        def one(i: int, r: TaskRecord) -> None:
            result = sampler.run(i, r)
            sink.add(result)
            with lock:
                done[i] = result
                count[0] += 1
                if progress:
                    progress(count[0], total)

        if progress:
            progress(resumed, total)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="supertiny-teach")
        try:
            futures: list[Future[None]] = [pool.submit(one, i, r) for i, r in todo]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in finished if f.exception() is not None), None)
            if failed is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # prompts already running still finish and are saved
                raise failed.exception()  # type: ignore[misc]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            sink.close()
        return sampler, info
    finally:
        teacher.close()
        if judge_model is not None:
            judge_model.close()


__all__ = ["PROGRESS_SUFFIX", "RESUME_KEYS", "STAGE", "PromptResult", "TeachConfig", "TeachReport", "progress_path",
           "sample_seed", "teach"]
