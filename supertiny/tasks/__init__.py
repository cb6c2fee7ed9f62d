"""Structured-output tasks: a TOML schema, the chat prompt, a robust parser, the metric and data files.

A task turns a free-text input into a JSON object with named fields (``string``, ``bool``
or ``enum``). Shipped tasks sit next to this module (``factory-tickets``); users pass a
path to their own file. See :mod:`supertiny.tasks.spec` for the file format.

>>> task = load_task("factory-tickets")
>>> p = task.parse('Here you go: {"asset": "press-3", "category": "hydraulic", '
...                '"severity": "medium", "line_stopped": false}')
>>> p.schema_valid, p.answer["asset"]
(True, 'PRESS-3')
>>> score(task, ['{"asset": "PRESS-3"}'], [p.answer]).to_dict()["task_score"]
0.25
"""

from __future__ import annotations

from supertiny.tasks.fields import NORMALIZE, TYPES, OutputField, check_value
from supertiny.tasks.json_schema import task_json_schema
from supertiny.tasks.output import ParsedOutput, extract_json, parse_output
from supertiny.tasks.prompts import PROMPT_CHOICES, RECORD_KEY, prompt_record, recorded_prompt, task_for, trained_on
from supertiny.tasks.scoring import (
    MAX_ANSWER_TOKENS,
    Complete,
    Progress,
    TaskEvaluation,
    TaskRecord,
    TaskScore,
    engine_complete,
    evaluate_task,
    field_matches,
    read_task_data,
    score,
    score_parsed,
    task_data_problems,
)
from supertiny.tasks.spec import (
    PROMPTS,
    SCHEMA_VERSION,
    SHIPPED_DIR,
    Task,
    TaskExample,
    list_tasks,
    load_task,
    parse_task,
)

__all__ = [
    "MAX_ANSWER_TOKENS", "NORMALIZE", "PROMPTS", "PROMPT_CHOICES", "RECORD_KEY", "SCHEMA_VERSION", "SHIPPED_DIR",
    "TYPES", "Complete", "OutputField", "ParsedOutput", "Progress", "Task", "TaskEvaluation", "TaskExample",
    "TaskRecord", "TaskScore", "check_value", "engine_complete", "evaluate_task", "extract_json", "field_matches",
    "list_tasks", "load_task", "parse_output", "parse_task", "prompt_record", "read_task_data", "recorded_prompt",
    "score", "score_parsed", "task_data_problems", "task_for", "task_json_schema", "trained_on",
]
