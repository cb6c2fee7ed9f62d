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
  (1.0) accepts;
- **without a label, with** ``vote`` (self-consistency): all K samples are made, and the answer is
  each field's majority among the schema-valid ones; the prompt's score is the smallest majority
  share (of K: an invalid sample counts against every field), accepted at ``vote`` or above (and
  by the judge, if one is given, which grades only that answer). The line has ``"agreement"``,
  each field's share.

The best accepted answer (highest score, the earliest sample on a tie) is kept, written
canonically with ``task.format_answer``. A labelled prompt with no accepted answer keeps its
gold answer instead (``fill_from_labels``, the default; ``"from": "label"`` in its line), so that
distillation learns from every label, the teacher's distribution taken on the gold answer:
rejection sampling only decides for unlabelled prompts. The output is JSON Lines, one line per
prompt in file order, the contract ``supertiny distill`` reads::

    {"input": str, "response": str | null, "accepted": bool, "score": float, "samples": K,
     "scores": [float, ...], "from": "label" (only when the response is the gold answer),
     "label": {...} (only if the prompt had one),
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
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny import schema
from supertiny.errors import InvalidInputError
from supertiny.manifest import Manifest, StageRun
from supertiny.models import resolve
from supertiny.outdir import check_output_file
from supertiny.runtime.engines.sampling import Sampling
from supertiny.settings import NON_NEG, NON_NEG_INT, POS_INT, UNIT, identity, setting
from supertiny.stages.registry import Input, Log, Progress, stage
from supertiny.stages.transfer.judge import Judge, Judgement
from supertiny.stages.transfer.teach_records import (
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
from supertiny.stages.transfer.teachers import PromptError, Teacher, TeacherOptions, is_url, open_teacher
from supertiny.stages.transfer.training import prompt_setting
from supertiny.tasks import (
    Task,
    TaskRecord,
    field_matches,
    read_task_data,
    recorded_prompt,
    task_for,
    task_json_schema,
)
from supertiny.tasks.prompts import RECORD_KEY


@dataclass(frozen=True)
class TeachConfig(TeacherOptions):
    """Settings of :func:`teach`: how to reach the teacher (:class:`.teachers.TeacherOptions`, first), then these."""

    samples: int = setting(4, "Answers asked per prompt (K).", check=POS_INT, short="-k")
    temperature: float = setting(0.7, "Sampling temperature (samples after the first).", check=NON_NEG)
    top_p: float = setting(0.95, "Nucleus sampling mass.", check=UNIT, example=0.9)
    max_new_tokens: int = setting(128, "Reply length limit (a cut-off answer is JSON-invalid).", check=POS_INT)
    seed: int = setting(0, "Base seed of the per-sample seeds.", check=NON_NEG_INT)
    greedy_first: bool = setting(True, "Sample 0 is the greedy answer (the teacher's best guess is always among the "
                                 "candidates).")
    stop_when_perfect: bool = setting(False, "Stop a prompt's samples at the first perfect answer (all fields right, "
                                      "or the judge's top grade): the same answer kept, fewer samples made.", off="")
    judge_threshold: float = setting(4.0, "Lowest judge grade (1-5) that accepts.", check=schema.expect(
        lambda v: schema.is_number(v) and 1 <= v <= 5, "a grade in 1-5"))
    judge_model_name: str | None = setting(None, "Judge server: the model field.")
    concurrency: int = setting(1, "Prompts in flight: local engines (one per worker) or requests to a server.",
                               check=POS_INT, short="-n")
    limit: int | None = setting(None, "Use only the first N prompts.", check=POS_INT)
    prompt: str = prompt_setting("the one TEACHER was trained with (its manifest), else full")
    constrained: bool = setting(False, "Hold every answer to the task's JSON schema (constrained decoding; a "
                                "server gets it as response_format), its extractive fields to the prompt's own "
                                "spans [default: free].", flag="--constrained", off="--free", example=True)
    fill_from_labels: bool = setting(True, "A labelled prompt whose samples were all wrong keeps its gold answer "
                                     "(written canonically, \"from\": \"label\" in its line): distillation learns "
                                     "from every label, with the teacher's distribution on it. --reject-wrong: keep "
                                     "only the teacher's accepted answers, as for unlabelled prompts.",
                                     off="--reject-wrong", example=False)
    vote: float | None = setting(None, "Self-consistency for unlabelled prompts: keep each field's majority over the "
                                 "K samples, accepted when every field's majority holds at least this share of them "
                                 "(e.g. 0.75 with -k 4); a judge, if given, grades that answer too.", check=UNIT,
                                 example=0.75)
    overwrite: bool = setting(False, "Replace the output and drop an unfinished run's progress.", off="", role="run")

    def problems(self) -> list[str]:
        try:
            Sampling(temperature=self.temperature, top_p=self.top_p)  # the same checks as everywhere
        except InvalidInputError as exc:
            return [str(exc)]
        return []


@dataclass(frozen=True)
class TeachReport:
    """What :func:`teach` did: the manifest written, and this run's own figures."""

    out: Path
    manifest: dict[str, Any]
    resumed: int  # prompts taken from an earlier run
    generated: int  # samples asked of the teacher in this run
    seconds: float
    written: Manifest | None = None  # the manifest as an object (``manifest`` is its JSON form)

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
        held = {"schema": task_json_schema(task, record.input)} if self.config.constrained else {}
        scores: list[float] = []
        judged: list[dict[str, Any] | None] = []
        grades: dict[str, Judgement] = {}  # a repeated answer is graded once
        best: tuple[float, str] | None = None
        if record.label is None and self.config.vote is not None:
            return self._vote(index, record, messages, held)
        for k in range(self.config.samples):
            parsed = task.parse(self._complete(index, k, record, messages, held))
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

    def _complete(self, index: int, k: int, record: TaskRecord, messages: list[dict[str, str]],
                  held: dict[str, Any]) -> str:
        try:
            text = self.teacher.complete(messages, self.sampling(index, k), self.config.max_new_tokens,
                                         until_json=True, **held)
        except PromptError as exc:
            raise PromptError(f"{record.source}:{record.line}: {exc}") from None
        with self._lock:
            self.generated += 1
        return text

    def _vote(self, index: int, record: TaskRecord, messages: list[dict[str, str]],
              held: dict[str, Any]) -> PromptResult:
        """Self-consistency: all K samples, each field's majority among the schema-valid ones (a tie goes to the
        earlier sample, the greedy one first); accepted when every field's majority is at least ``vote`` of K
        (an invalid sample counts against every field) and the judge, if any, accepts the majority answer."""
        task, k_all = self.task, self.config.samples
        valid = []
        scores: list[float] = []
        for k in range(k_all):
            parsed = task.parse(self._complete(index, k, record, messages, held))
            scores.append(1.0 if parsed.schema_valid else 0.0)
            if parsed.schema_valid:
                valid.append(parsed.values)
        if not valid:
            return PromptResult(index, record.input, None, False, 0.0, scores, agreement={})
        values, agreement = {}, {}
        for name in valid[0]:
            # most_common keeps the first-seen value among equal counts: a tie goes to the earlier sample
            winner, top = Counter(json.dumps(v.get(name), sort_keys=True) for v in valid).most_common(1)[0]
            values[name] = json.loads(winner)
            agreement[name] = top / k_all
        answer = task.format_answer(values)
        score = min(agreement.values())
        accepted = score >= self.config.vote
        judged = None
        if accepted and self.judge is not None:
            try:
                judgement = self.judge.grade(task, record.input, answer)
            except PromptError as exc:
                raise PromptError(f"{record.source}:{record.line}: judge: {exc}") from None
            if judgement.score is None:
                with self._lock:
                    self.judge_unparseable += 1
            accepted, judged = self.judge.accepts(judgement), [judgement.to_dict()]
        return PromptResult(index, record.input, answer if accepted else None, accepted, score, scores,
                            judge=judged, agreement=agreement)


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


def _settings(teacher: str, task: Task, config: TeachConfig, judge: str | None) -> dict[str, Any]:
    def spec(s: str | None) -> str | None:
        return s if s is None or is_url(s) or s == "default" else str(Path(s).resolve())

    task_sha = hashlib.sha256(json.dumps({**task.to_dict(), "source": ""}, sort_keys=True).encode()).hexdigest()
    return {**identity(config), "teacher": spec(teacher), "task": task.name, "task_sha256": task_sha,
            "prompt": task.prompt, "judge": spec(judge)}


TEACHER = Input("teacher", "A model (HF dir, .gguf, ONNX export or 'default') or an OpenAI-compatible URL such as "
                "http://host:8080/v1.", kind="model-or-url", argument=True)
INPUTS = (TEACHER,
          Input("task", "A shipped task's name (factory-tickets) or a task .toml file.", kind="task"),
          Input("prompts", "Task data: JSON Lines, {\"input\": ..., \"label\": {...}} a line (label optional)."),
          Input("judge", "A model or OpenAI-compatible URL that grades unlabelled answers 1-5 (default: schema "
                "validity alone accepts them).", kind="model-or-url", required=False))


@stage(STAGE, version=STAGE_VERSION, config=TeachConfig, inputs=INPUTS, output="file", command=("teach",),
       out_option="--out")
def run(inputs: dict[str, str | None], out: Path, config: TeachConfig, log: Log, progress: Progress | None
        ) -> Manifest:
    """Teacher data for ``inputs["prompts"]`` into ``out`` (see the module docstring)."""
    teacher, task, prompts = inputs["teacher"], inputs["task"], inputs["prompts"]
    assert teacher is not None and task is not None and prompts is not None
    report = teach(teacher, task, prompts, out, config, inputs["judge"], progress=progress)
    assert report.written is not None
    return report.written


def teach(teacher: str, task: str | os.PathLike[str], prompts: str | os.PathLike[str], out: str | os.PathLike[str],
          config: TeachConfig | None = None, judge: str | None = None, overwrite: bool = False,
          progress: Progress | None = None) -> TeachReport:
    """Generate teacher data for ``prompts`` by rejection sampling; see the module docstring.

    Args:
        teacher: a local artifact (``.gguf``, ONNX export, HF directory, ``default``) or a server URL.
        task: a shipped task's name or a task ``.toml`` file.
        prompts: task data (``{"input", "label"?}`` a line).
        out: the output ``.jsonl`` (its manifest goes beside it).
        config: :class:`TeachConfig` (how to reach the teacher included; the judge is reached the same way, with
            its own ``judge_model_name``).
        judge: a model or server URL grading unlabelled answers (None: schema validity only).
        overwrite: replace an existing output and drop an unfinished run's progress.
        progress: called with (prompts done, prompts in all).

    Returns:
        :class:`TeachReport`; ``manifest["quality"]["acceptance_rate"]`` is the share of prompts kept.

    Example::

        teach("default", "factory-tickets", "dev.jsonl", "teacher.jsonl", TeachConfig(samples=2, limit=10))
    """
    config = config or TeachConfig()
    overwrite = overwrite or config.overwrite
    out = Path(out)
    check_output_file(out)
    spec = task_for(task, teacher, config.prompt)
    records = read_task_data(prompts, spec)[: config.limit]  # a bad file fails before any model loads
    settings = _settings(teacher, spec, config, judge)
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
    source = _source(teacher)
    record = recorded_prompt(source)  # a fine-tuned teacher's prompt travels with its data, as with any artifact
    run = StageRun(STAGE, STAGE_VERSION, out, source=source, info={}, settings={**settings, "resume_key": key},
                   single_file=True, carried={RECORD_KEY: record} if record else None)
    sampler = None
    if todo:
        sampler, run.info = _generate(spec, teacher, judge, todo, done, config, key, partial, progress, resumed,
                                      len(records))
    else:
        run.info = {"teacher": settings["teacher"]}
    run.lap("generate")
    results = [done[i] for i in range(len(records))]
    if config.fill_from_labels:  # applied on install: resumed progress and outputs hold the teacher's own results
        results = [r.filled(None if r.label is None else spec.format_answer(r.label)) for r in results]
    with run:
        manifest = _install(run, results, config, judge, sampler, resumed, prompts)
    partial.unlink(missing_ok=True)
    return TeachReport(out, manifest.to_dict(), resumed, sampler.generated if sampler else 0,
                       time.perf_counter() - start, manifest)


def _source(teacher: str) -> str:
    """What the manifest names as the source: a server URL as it is, a model resolved to its file or folder."""
    if is_url(teacher):
        return teacher

    return str(resolve(teacher)[1])


def _install(run: StageRun, results: list[PromptResult], config: TeachConfig, judge: str | None,
             sampler: _Sampler | None, resumed: int, prompts: str | os.PathLike[str]) -> Manifest:
    """Write the output lines (file order), the quality figures and the notes; install both files."""
    staged = run.temp("out")
    with staged.open("w", encoding="utf-8") as fh:
        for r in results:
            fh.write(json.dumps(r.line(), ensure_ascii=False) + "\n")
    generated = sampler.generated if sampler else 0
    n_acc = sum(r.accepted for r in results)
    gen_s = run.seconds["generate"]
    filled = sum(r.gold is not None for r in results)
    quality = {"prompts": len(results), "accepted": n_acc, "acceptance_rate": n_acc / len(results),
               "from_labels": filled, "training_examples": n_acc + filled,
               "mean_score": sum(r.score for r in results) / len(results),
               "sample_acceptance_rate": _sample_rate(results, config),
               "samples_per_s": round(generated / gen_s, 3) if generated else None}
    details = {"prompts_file": str(Path(prompts).resolve()), "labelled": sum(r.label is not None for r in results),
               "resumed": resumed, "samples_generated": generated,
               "judge_unparseable": sampler.judge_unparseable if sampler else 0}
    voted = [r for r in results if r.agreement is not None]
    if voted:
        quality["voted"] = len(voted)
        quality["vote_accepted"] = sum(r.accepted for r in voted)
        run.note(f"self-consistency: {quality['vote_accepted']} of {len(voted)} unlabelled prompts had every "
                 f"field's majority in >= {config.vote:g} of the {config.samples} samples")
    if filled:
        run.note(f"{filled} labelled prompts the teacher got wrong keep their gold answer (\"from\": \"label\")")
    if judge is None and any(r.label is None and r.agreement is None for r in results):
        run.note("no judge: unlabelled prompts were accepted on schema validity alone")
    if judge is not None and all(r.label is not None for r in results):
        run.note("every prompt has a label: the task metric scored the answers, the judge was not asked")
    return run.install(staged, quality=quality, details=details)


def _sample_rate(results: list[PromptResult], config: TeachConfig) -> float:
    """The share of all samples that were fully right (labelled) or accepted-grade (judged)."""
    total = sum(len(r.scores) for r in results)
    good = sum(s >= 1.0 if r.judge is None else s >= (config.judge_threshold - 1) / 4
               for r in results for s in r.scores)
    return good / total if total else 0.0


def _generate(task: Task, teacher_spec: str, judge_spec: str | None, todo: list[tuple[int, TaskRecord]],
              done: dict[int, PromptResult], config: TeachConfig, key: dict[str, Any], partial: Path,
              progress: Progress | None, resumed: int, total: int) -> tuple[_Sampler, dict[str, Any]]:
    """Run the prompts still to do on ``concurrency`` workers; each result goes to the progress file."""
    workers = min(config.concurrency, len(todo))
    options = config.reach()
    teacher = open_teacher(teacher_spec, options, workers)
    judge_model = None
    try:
        _check_lengths(task, teacher, todo, config.max_new_tokens)
        if judge_spec is not None and any(r.label is None for _, r in todo):  # labels need no judge
            # the judge is reached as the teacher is, with its own model name (it may be another server)
            judge_options = dataclasses.replace(options, model_name=config.judge_model_name, batched=False)
            judge_model = open_teacher(judge_spec, judge_options, workers)
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
