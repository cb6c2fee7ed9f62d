"""The augment stage: a task data file with label-preserving variants of its records
(:mod:`supertiny.tasks.augment`), written as task data (``{"input", "label"?}`` a line: the
original records first, in file order, then the variants, record by record).

Its manifest counts the variants, those dropped and each operation applied. In a recipe,
``[augment]`` makes the train split that the prototype learns and the teacher answers (``prototype = false``:
the teacher answers it, the prototype learns the split as written).

Example::

    augment_to("factory-tickets", "train.jsonl", "train-aug.jsonl", AugmentConfig(copies=2))
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny import schema
from supertiny.manifest import Manifest, StageRun
from supertiny.outdir import check_output_file
from supertiny.settings import NON_NEG_INT, POS_INT, Settings, setting
from supertiny.stages.registry import Input, Log, Progress, get, stage
from supertiny.stages.runs import settings
from supertiny.tasks import load_task, read_task_data
from supertiny.tasks.augment import DEFAULT_OPERATIONS, OPERATIONS, augment

STAGE, STAGE_VERSION = "augment", 1


def _operations(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _check_operations(v: Any) -> tuple[str, ...]:
    ops = tuple(v) if isinstance(v, (list, tuple)) else None
    if not ops or not all(isinstance(o, str) and o in OPERATIONS for o in ops) or len(set(ops)) != len(ops):
        raise schema.Bad(f"expected a non-empty list of {', '.join(OPERATIONS)} without repeats, got "
                         f"{schema.show(v)}")
    return ops


@dataclass(frozen=True)
class AugmentConfig(Settings):
    """Settings of the augment stage."""

    copies: int = setting(1, "Variants written per record (besides the record itself).", check=POS_INT)
    operations: tuple[str, ...] = setting(DEFAULT_OPERATIONS, "What a variant may change: "
                                          f"{', '.join(OPERATIONS)} (comma-separated; reorder is not a default: "
                                          "where sentence order carries meaning it changes the label).",
                                          parse=_operations, check=_check_operations, example=("spans", "case"))
    typo_rate: float = setting(0.05, "Share of the words a typo changes (at least one, when typos apply).",
                               check=schema.expect(lambda v: schema.is_number(v) and 0 <= v <= 0.5,
                                                   "a number from 0 to 0.5"))
    seed: int = setting(0, "Seed of the choices (each record's variants are seeded by it, the record and the "
                        "copy).", check=NON_NEG_INT)


INPUTS = (Input("data", "Task data: JSON Lines, {\"input\": ..., \"label\": {...}} a line (label optional).",
                argument=True),
          Input("task", "A shipped task's name (factory-tickets) or a task .toml file.", kind="task"))


@stage(STAGE, version=STAGE_VERSION, config=AugmentConfig, inputs=INPUTS, output="file", command=("augment",),
       out_option="--out")
def run(inputs: dict[str, str | None], out: Path, config: AugmentConfig, log: Log, progress: Progress | None
        ) -> Manifest:
    """Write ``inputs["data"]`` and ``config.copies`` variants of each record into ``out``."""
    assert inputs["task"] is not None and inputs["data"] is not None
    check_output_file(out)
    task = load_task(inputs["task"])
    records = read_task_data(inputs["data"], task)  # a bad line fails before anything is written
    variants, counts = augment(task, records, config.copies, config.seed, config.operations, config.typo_rate)
    log(f"{len(variants)} variants of {len(records)} records")
    with StageRun(STAGE, STAGE_VERSION, out, source=inputs["data"], info={"records": len(records)},
                  settings=settings(config, task=inputs["task"]), single_file=True) as run_:
        staged = run_.temp("out")
        with staged.open("w", encoding="utf-8") as fh:
            for text, label in [*((r.input, r.label) for r in records), *((v.input, v.label) for v in variants)]:
                fh.write(json.dumps({"input": text, **({"label": label} if label is not None else {})},
                                    ensure_ascii=False) + "\n")
        if counts["dropped"]:
            run_.note("dropped: " + ", ".join(f"{n} {why}" for why, n in sorted(counts["dropped"].items())))
        if "spans" in config.operations and not any(f.source == "input" and f.pattern for f in task.fields):
            run_.note("spans: the task has no extractive field with a pattern; no span was rewritten")
        return run_.install(staged, quality={"records": len(records), "written": len(records) + len(variants),
                                             **counts}, details={"task": task.name})


def augment_to(task: str, data: str | os.PathLike[str], out: str | os.PathLike[str],
               config: AugmentConfig | None = None, log: Log | None = None) -> Manifest:
    """Run the stage: ``data`` and its variants into ``out``."""
    return get(STAGE).call({"task": task, "data": data}, out, config or AugmentConfig(), log)


__all__ = ["AugmentConfig", "augment_to"]
