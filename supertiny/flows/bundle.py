"""The deployment bundle: the artifact, its tokenizer, the manifest chain, a README and a plot.

A bundle is a directory artifact (stage ``bundle``) written by :func:`build_bundle` at the
end of ``supertiny run``::

    bundle/
      model.gguf (+ model.gguf.supertiny.json)   the primary artifact and its export manifest
      onnx/                                       an ONNX export, when the recipe asks for one
      tokenizer/                                  the student's Hugging Face tokenizer files
      recipe.toml  target.toml                    what was run, and the budget it was checked against
      chain.json                                  every stage's manifest, teacher first
      README.md  summary.png                      for the device side
      supertiny.json                              sha256 of every file; quality, task score, budget check

``supertiny verify BUNDLE`` re-hashes it and re-runs the budget check on the machine it runs
on (:func:`check_budget`); ``serve``, ``eval`` and ``bench`` accept the folder and use the
primary artifact (:func:`supertiny.models.resolve` follows ``details["primary"]``).

matplotlib (the ``plot`` extra) is imported only to draw ``summary.png``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from supertiny.backends import threads_for
from supertiny.errors import RecipeError
from supertiny.manifest import (
    BUNDLE_STAGE,
    BUNDLE_TASK_FILE,
    Manifest,
    StageRun,
    bundle_primary,
    hash_path,
    manifest_path,
    read_manifest,
)
from supertiny.models import resolve
from supertiny.runtime.bench.measure import BenchConfig, bench
from supertiny.runtime.bench.report import save_figure
from supertiny.targets import load_target
from supertiny.tasks import RECORD_KEY, load_task, recorded_prompt

STAGE, VERSION = BUNDLE_STAGE, 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def to_toml(doc: dict[str, Any]) -> str:
    """A recipe dict (scalars, lists and one level of tables) as TOML text.

    >>> print(to_toml({"name": "x", "task": {"name": "t", "limit": 2}}), end="")
    name = "x"
    <BLANKLINE>
    [task]
    name = "t"
    limit = 2
    """
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]", *(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items())]
    return "\n".join(lines) + "\n"


def _report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _chain(stages: list[Any], teacher: str) -> list[dict[str, Any]]:
    """Every stage's manifest in run order with its command, the teacher first."""
    t = resolve(teacher)[1]
    chain: list[dict[str, Any]] = [{"stage": "teacher", "path": str(t), "sha256": hash_path(t)}]
    for s in stages:
        m = read_manifest(s.out)
        chain.append({"stage": s.name, "command": s.shown(), "manifest": m.to_dict() if m else None})
    return chain


def _quality(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    t, s = teacher["task_score"], student["task_score"]
    return {"task_score": s, "teacher_task_score": t, "score_ratio": s / t if t else None,
            "fields": student.get("fields"), "teacher_fields": teacher.get("fields"),
            "records": student.get("n"), "prompt": student.get("prompt"),
            "seconds": {"teacher": teacher.get("seconds"), "student": student.get("seconds")}}


def build_bundle(recipe: Any, stages: list[Any], layout: Any, out: Path) -> Manifest:
    """Assemble the bundle from a finished run (see the module docstring) and install it atomically."""
    by_name = {s.name: s for s in stages}
    teacher_eval, student_eval = (_report(by_name[k].out) for k in ("eval-teacher", "eval-student"))
    bench = _report(by_name["bench"].out)
    result = bench["results"][0]
    target = load_target(recipe.target)
    primary = layout.primary
    settings = recipe.to_dict()
    record = recorded_prompt(primary)  # the task prompt the student expects travels with the bundle
    with StageRun(STAGE, VERSION, out, source=primary, info={"format": next(iter(layout.exports))},
                  settings=settings, carried={RECORD_KEY: record} if record else None) as run:
        d = run.dir
        d.mkdir(parents=True)
        names: dict[str, str] = {}
        with run.step("copy"):
            for fmt, path in layout.exports.items():
                if fmt == "gguf":
                    shutil.copy2(path, d / "model.gguf")
                    shutil.copy2(manifest_path(path), d / "model.gguf.supertiny.json")
                    names[fmt] = "model.gguf"
                else:
                    shutil.copytree(path, d / "onnx")
                    names[fmt] = "onnx"
            tok = Path(layout.final_model)
            (d / "tokenizer").mkdir()
            for f in TOKENIZER_FILES:
                if (tok / f).is_file():
                    shutil.copy2(tok / f, d / "tokenizer" / f)
            (d / "recipe.toml").write_text(to_toml(settings), encoding="utf-8")
            shutil.copy2(target.source, d / "target.toml")
            shutil.copy2(load_task(recipe.task["name"]).source, d / BUNDLE_TASK_FILE)  # serve/eval read it
            chain = _chain(stages, recipe.teacher)
            (d / "chain.json").write_text(json.dumps(chain, indent=2) + "\n", encoding="utf-8")
            (d / "bench.json").write_text(json.dumps(bench, indent=2) + "\n", encoding="utf-8")
        quality = _quality(teacher_eval, student_eval)
        holdout = {name: _quality(*(_report(by_name[f"eval-{who}-{name}"].out) for who in ("teacher", "student")))
                   for name in recipe.holdout()}
        if holdout:  # text no generator wrote, scored as the test split is
            quality["holdout"] = {k: {kk: vv for kk, vv in v.items() if kk not in ("prompt", "seconds")}
                                  for k, v in holdout.items()}
        budget = {"target": target.name, "passed": result.get("passed"), "verdicts": result.get("verdicts", []),
                  "machine": result.get("machine"), "threads": result.get("threads")}
        sizes = {fmt: _size(d / name) for fmt, name in names.items()}
        details = {"primary": names[next(iter(layout.exports))], "artifacts": names, "bytes": sizes,
                   "teacher": chain[0], "domain_teacher": layout.domain_teacher,
                   "teacher_scored_on": layout.teacher_for_eval, "task": recipe.task["name"],
                   "task_file": BUNDLE_TASK_FILE,
                   "budget": budget, "recipe": recipe.name}
        with run.step("readme"):
            (d / "README.md").write_text(readme(recipe, details, quality, target), encoding="utf-8")
            plot_summary(details, quality, result, target, d / "summary.png")
        return run.install(quality=quality, details=details)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def readme(recipe: Any, details: dict[str, Any], quality: dict[str, Any], target: Any) -> str:
    """The bundle's README: what it is, how to check and run it on the device, what was measured."""
    b = details["budget"]
    rows = "\n".join(f"| {v['label']} | {_fmt(v.get('measured'))} {v['unit']} | {_op(v)} {_fmt(v['limit'])} "
                     f"{v['unit']} | {v['status']} |" for v in b["verdicts"])
    sets = {"test split": quality, **quality.get("holdout", {})}
    head = " | ".join(f"{name}: bundle | teacher" for name in sets)
    fields = ["task", *(quality.get("fields") or {})]
    field_rows = "\n".join(f"| {f} | " + " | ".join(f"{_fmt(_score(q, f))} | {_fmt(_score(q, f, 'teacher_'))}"
                                                   for q in sets.values()) + " |" for f in fields)
    counts = ", ".join(f"{name} {q.get('records')}" for name, q in sets.items())
    return f"""# {recipe.name}: deployment bundle

{recipe.description}

Primary artifact: `{details['primary']}` ({details['bytes'][next(iter(details['artifacts']))] / 1e6:.1f} MB), for the
target `{target.name}` ({target.description}). Made by `supertiny run` from the teacher
`{details['teacher']['path']}` (sha256 {str(details['teacher']['sha256'])[:16]}...); every stage's manifest is in
`chain.json`, the recipe in `recipe.toml`, the budget in `target.toml`.

## On the device

```bash
supertiny verify .            # re-hash every file, then re-run the budget check on this machine
supertiny serve . --port 8000 # OpenAI-compatible API, and the task: POST /v1/task {{"input": "..."}}
supertiny eval . --task task.toml --data test.jsonl   # task score on your own labelled data
```

`task.toml` is the task `{details['task']}` (its prompt, output schema and metric). The server answers
`POST /v1/task` with `{{"input": "<text>"}}` by the task's validated JSON object (`answer`), decoded held
to the task's schema; `/v1/chat/completions` takes OpenAI's `response_format` (`json_object`,
`json_schema`).

## Measured when it was built

Task `{details['task']}`: score **{_fmt(quality['task_score'])}** vs the domain teacher's
{_fmt(quality['teacher_task_score'])} ({_fmt(100 * (quality['score_ratio'] or 0))}%), on the recipe's test split.
{_holdout_line(quality)}
| field | {head} |
|---|{'---|---|' * len(sets)}
{field_rows}

Records: {counts}.

Budget check (`{target.name}`, on the build machine, {b.get('threads')} threads):
**{'PASS' if b['passed'] else 'FAIL'}**

| budget | measured | limit | |
|---|---|---|---|
{rows}
"""


def _score(quality: dict[str, Any], field: str, who: str = "") -> Any:
    """A set's task score (``field`` "task") or one field's, of the bundle or (``who`` "teacher_") the teacher."""
    return quality.get(f"{who}task_score") if field == "task" else (quality.get(f"{who}fields") or {}).get(field)


def _holdout_line(quality: dict[str, Any]) -> str:
    """One sentence per hold-out set (text no generator wrote), or nothing without one."""
    return "".join(f"On the hold-out set `{name}`: **{_fmt(q['task_score'])}** vs "
                   f"{_fmt(q['teacher_task_score'])} ({_fmt(100 * (q['score_ratio'] or 0))}%).\n"
                   for name, q in quality.get("holdout", {}).items())


def _op(verdict: dict[str, Any]) -> str:
    return "<=" if verdict["direction"] == "max" else ">="


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:,.0f}"
    return str(v)


def plot_summary(details: dict[str, Any], quality: dict[str, Any], result: dict[str, Any], target: Any,
                 out: Path) -> None:
    """Two panels: each budget's measured value as a share of its limit, and task score per field vs the teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_b, ax_q) = plt.subplots(1, 2, figsize=(11, 4))
    verdicts = [v for v in details["budget"]["verdicts"] if v.get("measured") is not None]
    share = [(v["measured"] / v["limit"]) if _op(v) == "<=" else (v["limit"] / max(v["measured"], 1e-9))
             for v in verdicts]
    ax_b.barh([v["key"] for v in verdicts], share, color=["tab:green" if v["passed"] else "tab:red"
                                                             for v in verdicts])
    ax_b.axvline(1.0, color="k", linestyle="--", linewidth=1)
    ax_b.set_xlabel("share of the budget used (< 1 passes)")
    ax_b.set_title(f"{target.name} budget on the build machine")
    fields = ["task", *(quality.get("fields") or {})]
    sets = {"test": quality, **quality.get("holdout", {})}
    bars = [(f"{name}: {label}", q, who) for name, q in sets.items()
            for label, who in (("teacher", "teacher_"), ("bundle", ""))]
    width = 0.8 / len(bars)
    for i, (label, q, who) in enumerate(bars):
        ax_q.bar([x - 0.4 + (i + 0.5) * width for x in range(len(fields))],
                 [_score(q, f, who) or 0 for f in fields], width=width, label=label)
    ax_q.set_xticks(list(range(len(fields))), fields, fontsize=8)
    ax_q.set_ylim(0, 1.25)
    ax_q.set_title("task score: test split" + (" and hold-out sets" if len(sets) > 1 else ""))
    ax_q.legend(loc="upper center", ncol=min(len(bars), 4), fontsize=7)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)


def check_budget(bundle: Path, threads: int | None = None, quick: bool = False,
                 progress: Any = None) -> dict[str, Any]:
    """Benchmark the bundle's primary artifact on this machine against its ``target.toml``.

    ``threads``: engine threads (default: the target's, capped at this machine's cores); ``quick``: one
    measured run per prompt length instead of three.
    """
    primary = bundle_primary(Path(bundle))
    if primary is None:
        raise RecipeError(f"{bundle} is not a bundle (no supertiny.json with stage 'bundle')")
    target = load_target(Path(bundle) / "target.toml")
    n = threads or threads_for(target.runtime.threads, cap=True)
    b = target.budget  # only what the budgets need: their prompt length and concurrency
    config = BenchConfig(prompt_lengths=(b.prompt_tokens,), concurrency=(b.concurrency,), threads=n,
                         repeats=1 if quick else 3)
    return bench([str(primary)], config, target, progress)
