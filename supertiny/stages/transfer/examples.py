"""Training examples from a data file: the task's chat prompt, then the answer, as token ids.

Data is JSON Lines in either form (errors name ``FILE:LINE``):

* teacher data from ``supertiny teach``: ``{"input": ..., "response": str | null, ...}``;
  lines whose ``response`` is null (nothing accepted) are skipped and counted;
* task data: ``{"input": ..., "label": {...}}``; the target is ``task.format_answer(label)``
  (how the default teacher is first fine-tuned into the domain teacher).

Each example is the task's chat prompt (``task.messages(input)`` with the generation
prompt) followed by the answer and the end-of-turn token; the loss is on the answer
(and, with ``distill --input-kd``, the teacher's distribution on the input's tokens too:
``Example.input_start`` is where they begin). An example longer than ``max_length`` is
**skipped and counted** (the manifest names the first one): cutting the prompt would drop
the instruction and cutting the answer would teach broken JSON. Distillation trains on
them; quantization calibrates on them. Imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from supertiny.errors import InvalidInputError
from supertiny.evaluate import common_prefix
from supertiny.readers import read_jsonl


@dataclass(frozen=True)
class Example:
    """One training sequence: prompt ids then answer ids; ``where`` is the data file's ``FILE:LINE``.
    ``input_start``: the first id of the record's input (ids before it are the prompt every record shares: the
    system prompt and the user turn's opening); None: the prompt's end."""

    ids: tuple[int, ...]
    prompt_len: int
    where: str = ""
    input_start: int | None = None

    def rows_from(self, inputs: bool) -> int:
        """The first id whose distribution a KD cache keeps: the input's first (``inputs``) or the answer's."""
        return self.prompt_len if not inputs or self.input_start is None else self.input_start

    @property
    def answer_len(self) -> int:
        return len(self.ids) - self.prompt_len


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any, Any]:
    """Token sequences as one left-padded batch: ``input_ids`` (``pad_id`` before each sequence), the attention
    mask and each sequence's own ``position_ids`` (0 at its first token), all ``[len(seqs), longest]`` long tensors;
    every row then gives the unpadded sequence's logits (to float rounding)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
        mask[b, width - len(s):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


def check_chat_template(tokenizer: Any) -> None:
    """Raise InvalidInputError unless ``tokenizer`` has a chat template (examples are chat examples)."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInputError("the student's tokenizer has no chat template; distill trains chat examples")


def chat_pair(record: Any, task: Any, tokenizer: Any) -> tuple[str, str | None]:
    """A record's chat prompt (the task's messages, generation prompt added) and its answer text: teacher data's
    response (None when nothing was accepted) or the formatted label.

    Raises:
        InvalidInputError: an invalid label, or neither ``response`` nor ``label`` (``FILE:LINE: ...``).
    """
    prompt = tokenizer.apply_chat_template(task.messages(record.field("input", str)), add_generation_prompt=True,
                                           tokenize=False)
    if "response" in record.data:
        return prompt, record.field("response", str, required=False)
    if "label" in record.data:
        label, problems = task.check_label(record.data["label"])
        if problems:
            raise record.error(problems[0])
        return prompt, task.format_answer(label)
    raise record.error("needs \"response\" (teacher data from `supertiny teach`) or \"label\" (task data)")


def load_examples(path: str | os.PathLike[str], task: Any, tokenizer: Any, max_length: int
                  ) -> tuple[list[Any], dict[str, Any]]:
    """Tokenized chat examples from teacher data or task data (see the module docstring).

    Returns:
        ``(examples, counts)`` with counts ``{"records", "no_response", "too_long", "first_too_long"}``.

    Raises:
        InvalidInputError: empty file, bad JSON, a line with neither ``response`` nor ``label``,
            an invalid label (``FILE:LINE: ...``), or no example left to train on.
    """
    check_chat_template(tokenizer)
    eos = tokenizer.eos_token_id
    records = read_jsonl(path)
    # the prompt of an empty input: the ids every record's prompt shares before its input
    shared = tokenizer(tokenizer.apply_chat_template(task.messages(""), add_generation_prompt=True, tokenize=False),
                       add_special_tokens=False)["input_ids"]
    examples, counts = [], {"records": len(records), "no_response": 0, "too_long": 0, "first_too_long": None}
    for r in records:
        prompt, answer = chat_pair(r, task, tokenizer)
        if answer is None:
            counts["no_response"] += 1
            continue
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if len(p_ids) + len(a_ids) > max_length:
            counts["too_long"] += 1
            counts["first_too_long"] = counts["first_too_long"] or f"{r.where} ({len(p_ids) + len(a_ids)} tokens)"
            continue
        examples.append(Example(tuple(p_ids + a_ids), len(p_ids), r.where, common_prefix(p_ids, shared)))
    if not examples:
        why = (f"all {counts['too_long']} are longer than --max-length {max_length} "
               f"(first: {counts['first_too_long']})" if counts["too_long"] else "none has a response")
        raise InvalidInputError(f"{path}: no example to train on: {why}")
    return examples, counts
