"""LLM-as-a-judge: a rubric prompt, a robust parser of the grade, and the judge that runs them.

For prompts without a label, ``supertiny teach`` asks a model (any :mod:`.teachers` backend)
to grade each schema-valid candidate answer from 1 to 5 with the rubric of
:func:`judge_messages`. Judges do not always answer as asked, so :func:`parse_judgement`
looks for the grade in this order:

1. a JSON object anywhere in the text (fenced or not) with a ``score`` (or ``rating``/``grade``)
   key: a number, or a string such as ``"4"`` or ``"4/5"``;
2. the last ``Score: 4``, ``score = 4.5``, ``Rating: 4/5`` in the text (the verdict usually
   comes after the reasoning);
3. the last ``4/5`` or ``4 out of 5``;
4. a reply that is only a number (``4``, ``**4**``).

A grade outside 1-5, or no grade at all, is a :class:`Judgement` with ``score`` None and the
reason in ``error``: the sample counts as rejected and the error is recorded.

>>> parse_judgement('```json\\n{"score": 4, "reason": "severity should be high"}\\n```').score
4.0
>>> parse_judgement("The category is right.\\nScore: 3/5").score
3.0
>>> parse_judgement("I cannot grade this.").error
'no score in the reply'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from supertiny.errors import InvalidInputError
from supertiny.runtime.engines.sampling import Sampling
from supertiny.stages.transfer.teachers import Message, Teacher
from supertiny.tasks import Task

SCALE = (1.0, 5.0)
JUDGE_MAX_TOKENS = 160
_DECODER = json.JSONDecoder()
_KEYS = ("score", "rating", "grade")
_NUMBER = r"(\d+(?:\.\d+)?)"
_LABELLED = re.compile(rf"\b(?:score|rating|grade)\b\W{{0,3}}(?:is|of)?\s*[:=]?\s*\**\s*{_NUMBER}"
                       r"(?:\s*(?:/|out of)\s*5(?:\.0)?\b)?", re.IGNORECASE)
_OUT_OF = re.compile(rf"{_NUMBER}\s*(?:/|out of)\s*5(?:\.0)?\b", re.IGNORECASE)
_BARE = re.compile(rf"^[\W_]*{_NUMBER}[\W_]*$")

RUBRIC = """\
You grade answers that another model gave to a structured-output task. This is the task it was given:

<task>
{task}
</task>

{input_name}:
<input>
{input}
</input>

The answer to grade:
<answer>
{answer}
</answer>

Check every field of the answer against the task's definitions and the {input_lower}. Grade it:
5 = every field is right; 4 = right, but one field is debatable; 3 = one field is wrong;
2 = several fields are wrong; 1 = unusable or wrong throughout.
Reply with one JSON object and nothing else: {{"score": <1-5>, "reason": "<one short sentence>"}}"""


@dataclass(frozen=True)
class Judgement:
    """A judge's grade: ``score`` in 1-5, or None with ``error`` saying why it is unusable."""

    score: float | None
    reason: str = ""
    error: str | None = None

    @property
    def normalized(self) -> float:
        """The grade mapped to [0, 1] (1 -> 0, 5 -> 1); an unusable grade is 0."""
        if self.score is None:
            return 0.0
        return (self.score - SCALE[0]) / (SCALE[1] - SCALE[0])

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "reason": self.reason, **({"error": self.error} if self.error else {})}


def _in_scale(value: float) -> Judgement | None:
    if not SCALE[0] <= value <= SCALE[1]:
        return Judgement(None, error=f"score {value:g} is outside {SCALE[0]:g}-{SCALE[1]:g}")
    return None


def _number(value: Any) -> float | None:
    """A JSON grade as a number: 4, 4.5, "4", "4/5"; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(rf"\s*{_NUMBER}\s*(?:(?:/|out of)\s*5(?:\.0)?)?\s*", value, re.IGNORECASE)
        if m:
            return float(m.group(1))
    return None


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every complete JSON object in ``text`` (not nested in another found one), in order."""
    found, start = [], text.find("{")
    while start != -1:
        try:
            obj, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            obj, end = None, start + 1
        if isinstance(obj, dict):
            found.append(obj)
        else:
            end = start + 1
        start = text.find("{", end)
    return found


def parse_judgement(text: str | None) -> Judgement:
    """The grade in a judge's reply (see the module docstring for what is understood).

    >>> parse_judgement('{"score": "4/5", "reason": "ok"}').to_dict()
    {'score': 4.0, 'reason': 'ok'}
    >>> parse_judgement('{"score": 9}').error
    'score 9 is outside 1-5'
    """
    if not text or not text.strip():
        return Judgement(None, error="empty reply")
    for obj in _json_objects(text):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        key = next((k for k in _KEYS if k in lowered), None)
        if key is None:
            continue
        value = _number(lowered[key])
        if value is None:
            return Judgement(None, error=f"{key} {json.dumps(lowered[key])[:40]} is not a number")
        reason = lowered.get("reason", lowered.get("explanation", ""))
        return _in_scale(value) or Judgement(value, reason if isinstance(reason, str) else json.dumps(reason))
    reason = " ".join(text.split())[:200]
    for pattern in (_LABELLED, _OUT_OF):
        matches = pattern.findall(text)
        if matches:
            value = float(matches[-1])
            return _in_scale(value) or Judgement(value, reason)
    m = _BARE.match(text.strip())
    if m:
        value = float(m.group(1))
        return _in_scale(value) or Judgement(value, "")
    return Judgement(None, error="no score in the reply")


def judge_messages(task: Task, input_text: str, answer: str) -> list[Message]:
    """The rubric prompt: the task's instruction and schema, the input, the candidate answer."""
    content = RUBRIC.format(task=task.with_prompt("full").system_prompt(),  # the judge needs every definition
                            input_name=task.input[:1].upper() + task.input[1:], input_lower=task.input,
                            input=input_text, answer=answer)
    return [{"role": "user", "content": content}]


class Judge:
    """Grades candidate answers with a model (greedy, so the same answer gets the same grade).

    Args:
        model: a :class:`~.teachers.Teacher` (a local artifact or a server).
        threshold: the lowest grade (1-5) that accepts an answer.
        max_tokens: reply length limit for the judge.
    """

    def __init__(self, model: Teacher, threshold: float = 4.0, max_tokens: int = JUDGE_MAX_TOKENS):
        if not SCALE[0] <= threshold <= SCALE[1]:
            raise InvalidInputError(f"the judge threshold is a grade in 1-5, got {threshold:g}")
        self.model, self.threshold, self.max_tokens = model, threshold, max_tokens

    def grade(self, task: Task, input_text: str, answer: str) -> Judgement:
        """Ask the model to grade ``answer`` and parse its reply."""
        reply = self.model.complete(judge_messages(task, input_text, answer), Sampling(), self.max_tokens)
        return parse_judgement(reply)

    def accepts(self, judgement: Judgement) -> bool:
        return judgement.score is not None and judgement.score >= self.threshold

    def describe(self) -> dict[str, Any]:
        return {**self.model.describe(), "threshold": self.threshold, "max_tokens": self.max_tokens}

