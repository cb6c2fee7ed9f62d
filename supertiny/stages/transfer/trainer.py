"""The Trainer core of ``distill`` (the RL stage's Trainer builds on it): the batches, a Trainer, callbacks.

Built on transformers' :class:`~transformers.Trainer`, so one command runs on one CPU,
one GPU, or data-parallel under ``torchrun``/``accelerate launch`` (gloo on CPU), and
checkpoints (safetensors weights, optimizer, scheduler, RNG states, data position)
resume exactly. What is ours:

* :class:`ExampleDataset` + :class:`Collator`: chat examples (:mod:`.examples`) padded
  on the **left**, so every answer ends at the last column and the model computes logits
  only for the answer span (``logits_to_keep``): the ~700-token task prompt costs its
  forward/backward pass but not its 49k-wide vocabulary projection. ``position_ids``
  count real tokens, so padding changes nothing.
* :class:`DistillTrainer`: ``compute_loss`` = :func:`supertiny.stages.transfer.losses.mixed_loss`
  on the answer tokens (the prompt is masked), with the cached teacher top-k; with ``input_kd`` plus
  that weight times the KD loss on the input's tokens (the logits kept then start at the input); with
  ``hidden_kd`` plus that weight times :func:`hidden_state_loss` against a :class:`HiddenTeacher`.
* Callbacks: :class:`MetricsCallback` (JSON Lines: step, loss, lr, tokens/s, evals),
  :class:`ProgressCallback` (the CLI's bar), :class:`EvalCallback` (a function of the
  model every N steps and at the end, main process only). The run around it (setup,
  resume, install, the metrics plot) is :mod:`.training`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from supertiny.stages.transfer.examples import Example, left_pad
from supertiny.stages.transfer.kdcache import TopKCache
from supertiny.stages.transfer.losses import mixed_loss, topk_kd_loss
from supertiny.stages.transfer.training import read_metrics, train_loss


class ExampleDataset(torch.utils.data.Dataset):
    """Examples as dataset items (``{"index": i}``): the collator looks up ids and cached rows."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"index": i}


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Example indices in an order whose every ``batch`` consecutive ones have about the same length.

    Less padding: a left-padded batch costs its longest example's length for every row. Each epoch
    shuffles (seeded by ``seed`` + epoch, so a resumed run sees the same order), cuts the shuffle
    into groups of ``group`` batches, sorts each group by length and cuts it into batches, then
    shuffles the batches; a last short batch stays last, so batch boundaries line up with the
    DataLoader's. Which examples share a step is local (``group`` batches), the order of steps random.
    """

    def __init__(self, lengths: Sequence[int], batch: int, seed: int, group: int = 16):
        self.lengths, self.batch, self.seed, self.group, self.epoch = list(lengths), batch, seed, group, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch * self.group
        batches = []
        for a in range(0, len(perm), size):
            chunk = sorted(perm[a:a + size], key=lambda i: -self.lengths[i])
            batches += [chunk[b:b + self.batch] for b in range(0, len(chunk), self.batch)]
        short = [batches.pop()] if batches and len(batches[-1]) < self.batch else []
        order = torch.randperm(len(batches), generator=g).tolist()
        return iter([i for b in [*(batches[o] for o in order), *short] for i in b])


class Collator:
    """Left-padded batch: ``input_ids``, ``attention_mask``, ``position_ids``, answer ``labels``
    (``[B, A]``, -100 where a shorter answer has no token), ``logits_to_keep`` (A + 1) and,
    with a cache, the teacher rows ``kd_values``/``kd_indices`` ``[answer tokens, k]`` in
    batch-major order (the order of ``labels != -100``).

    ``inputs``: the cache also holds each example's rows from its input's first token
    (:meth:`.examples.Example.rows_from`); they come as ``kd_input_values``/``kd_input_indices``
    ``[input tokens, k]`` with ``kd_input_mask`` ``[B, R]`` (True at their positions, batch-major),
    and ``logits_to_keep`` is R + 1, R the longest input and answer (labels are its last A columns).

    ``hidden``: ``hidden_mask`` ``[B, T]``, True from each example's input's first token to its end (the tokens whose
    hidden states :func:`hidden_state_loss` compares)."""

    def __init__(self, examples: Sequence[Example], pad_id: int, cache: TopKCache | None = None,
                 inputs: bool = False, hidden: bool = False):
        if inputs and cache is None:
            raise ValueError("input rows come from a KD cache")
        self.examples, self.pad_id, self.cache, self.inputs = list(examples), pad_id, cache, inputs
        self.hidden = hidden

    def __call__(self, items: list[dict[str, int]]) -> dict[str, Any]:
        rows = [self.examples[it["index"]] for it in items]
        ids, mask, positions = left_pad([e.ids for e in rows], self.pad_id)
        span = max(e.answer_len for e in rows)
        labels = torch.full((len(rows), span), -100, dtype=torch.long)
        for b, e in enumerate(rows):
            labels[b, span - e.answer_len:] = torch.tensor(e.ids[e.prompt_len:])
        batch = {"input_ids": ids, "attention_mask": mask,
                 "position_ids": positions, "labels": labels, "logits_to_keep": span + 1}
        if self.hidden:
            hidden_mask = torch.zeros(ids.shape, dtype=torch.bool)
            for b, e in enumerate(rows):  # left-padded: the example's ids end at the last column
                hidden_mask[b, ids.shape[1] - len(e.ids) + e.rows_from(True):] = True
            batch["hidden_mask"] = hidden_mask
        if self.cache is None:
            return batch
        parts = [self.cache.rows(it["index"]) for it in items]
        if self.inputs:
            # each example's rows: its input's tokens, then its answer's; split them at the prompt's end
            cut = [e.prompt_len - e.rows_from(True) for e in rows]  # input rows an example
            width = max(c + e.answer_len for c, e in zip(cut, rows, strict=True))
            in_mask = torch.zeros((len(rows), width), dtype=torch.bool)
            for b, (c, e) in enumerate(zip(cut, rows, strict=True)):
                in_mask[b, width - e.answer_len - c:width - e.answer_len] = True
            batch["kd_input_values"] = torch.from_numpy(_cat([p[0][:c] for p, c in zip(parts, cut, strict=True)]))
            batch["kd_input_indices"] = torch.from_numpy(_cat([p[1][:c] for p, c in zip(parts, cut, strict=True)]))
            batch["kd_input_mask"] = in_mask
            batch["logits_to_keep"] = width + 1
            parts = [(p[0][c:], p[1][c:]) for p, c in zip(parts, cut, strict=True)]
        batch["kd_values"] = torch.from_numpy(_cat([p[0] for p in parts]))
        batch["kd_indices"] = torch.from_numpy(_cat([p[1] for p in parts]))
        return batch


def _cat(arrays: list[Any]) -> Any:
    return np.ascontiguousarray(np.concatenate(arrays))


def kept_logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """The model's logits at the batch's last ``logits_to_keep - 1`` positions, each predicting the next id:
    ``[B, logits_to_keep - 1, V]``."""
    return _forward(model, batch, False).logits[:, :-1]


def _forward(model: Any, batch: dict[str, Any], hidden: bool, keep: int | None = None) -> Any:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"], logits_to_keep=keep or batch["logits_to_keep"], use_cache=False,
                 output_hidden_states=hidden)


class HiddenTeacher:
    """The teacher whose hidden states a student learns (``distill --hidden-kd``), run on every batch without
    gradients: ``layer_map[j]`` is the teacher layer whose output the student's layer ``j`` stands for (a
    depth-pruned student: the layers it kept); ``bf16``: the teacher runs in bfloat16 autocast."""

    def __init__(self, model: Any, layer_map: Sequence[int], bf16: bool = False):
        self.model, self.layer_map, self.bf16 = model, list(layer_map), bf16

    def states(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        device = batch["input_ids"].device
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return _forward(self.model, batch, True, keep=1).hidden_states


def hidden_state_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], layer_map: Sequence[int],
                      mask: torch.Tensor) -> torch.Tensor:
    """The student's hidden states against the teacher's at the layers they stand for: the mean, over the student's
    layers and the ``mask``'s tokens, of ``|h_s - h_t|^2 / |h_t|^2`` (a relative squared error per token, so that
    the few huge-norm tokens of a transformer's residual stream do not outweigh the rest).

    ``student``/``teacher``: the models' ``hidden_states`` (transformers' layout: the embedding output, then every
    layer's output, the last one after the final norm); student layer ``j``'s output is compared with teacher layer
    ``layer_map[j]``'s, and the final normed states with each other."""
    n_s, n_t = len(student) - 1, len(teacher) - 1
    pairs = [(j + 1, layer_map[j] + 1) for j in range(n_s - 1)] + [(n_s, n_t)]
    losses = []
    for js, jt in pairs:
        hs, ht = student[js][mask].float(), teacher[jt][mask].float()
        losses.append(((hs - ht).pow(2).sum(-1) / ht.pow(2).sum(-1).clamp_min(1e-6)).mean())
    return torch.stack(losses).mean()


def answer_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer's rows of :func:`kept_logits` ``[answer tokens, V]`` and its ids ``[answer tokens]`` (the labels
    ``[B, A]`` are the last A positions)."""
    keep = labels != -100
    return logits[:, logits.shape[1] - labels.shape[1]:][keep], labels[keep]


def answer_logits(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits ``[answer tokens, V]`` and the answer token ids ``[answer tokens]`` of a batch."""
    return answer_rows(kept_logits(model, batch), batch["labels"])


def batch_loss(model: Any, batch: dict[str, Any], loss: str, alpha: float, temperature: float, beta: float,
               input_kd: float = 0.0, hidden: HiddenTeacher | None = None, hidden_kd: float = 0.0
               ) -> tuple[torch.Tensor, dict[str, float], int]:
    """The distill stage's loss on one :class:`Collator` batch (its ``kd_*`` and ``hidden_mask`` entries are popped):
    :func:`mixed_loss` on the answer tokens, plus ``input_kd`` times the KD loss on the input's tokens when the
    batch carries them, plus ``hidden_kd`` times :func:`hidden_state_loss` against ``hidden`` (the teacher run on the
    batch). Returns the loss, its parts as floats (``ce``, ``kd``, ``kd_input``, ``kd_hidden``) and the number of
    answer tokens."""
    values, indices = batch.pop("kd_values", None), batch.pop("kd_indices", None)
    in_values, in_indices = batch.pop("kd_input_values", None), batch.pop("kd_input_indices", None)
    in_mask, hidden_mask = batch.pop("kd_input_mask", None), batch.pop("hidden_mask", None)
    out = _forward(model, batch, hidden is not None)
    kept = out.logits[:, :-1]
    logits, labels = answer_rows(kept, batch["labels"])
    total, parts = mixed_loss(logits, labels, values, indices, loss, alpha, temperature, beta)
    if in_mask is not None:
        kd_in = topk_kd_loss(kept[in_mask], in_values, in_indices, loss, temperature, beta).mean()
        total = total + input_kd * kd_in
        parts["kd_input"] = float(kd_in.detach())
    if hidden is not None:
        if hidden_mask is None:
            raise ValueError("hidden-state KD needs the batch's hidden_mask (Collator(hidden=True))")
        kd_h = hidden_state_loss(out.hidden_states, hidden.states(batch), hidden.layer_map, hidden_mask)
        total = total + hidden_kd * kd_h
        parts["kd_hidden"] = float(kd_h.detach())
    return total, parts, int(labels.numel())


class TrimmedTeacher(torch.nn.Module):
    """A teacher seen through a trimmed student's vocabulary (:func:`.training.teacher_view`): called like the
    model, with the student's ids; returns the teacher's output with logits ``[..., student vocabulary]``."""

    def __init__(self, model: Any, old_ids: Sequence[int]):
        super().__init__()
        self.model = model
        self.config = model.config
        self.register_buffer("old_ids", torch.tensor(list(old_ids), dtype=torch.long), persistent=False)

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        out = self.model(input_ids=self.old_ids[input_ids], **kwargs)
        out.logits = out.logits[..., self.old_ids]
        return out


class MeteredTrainer(Trainer):
    r"""A Trainer that adds its own figures to every loss log: a meter (``tokens``, ``answer_tokens``, ``n`` and what
    :meth:`_fields` adds) counted by ``compute_loss`` and turned into figures by :meth:`_figures`, with
    ``tokens_per_s``/``answer_tokens_per_s`` over the time since the last log less :meth:`pause`\ d seconds."""

    def _fields(self) -> dict[str, Any]:
        return {}

    def _reset(self) -> None:
        self._meter = {"tokens": 0, "answer_tokens": 0, **self._fields(), "n": 0, "t0": time.perf_counter(),
                       "paused": 0.0}

    def _figures(self, m: dict[str, Any], secs: float, rates: dict[str, float]) -> dict[str, float]:
        return rates

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation) out of the next tokens/s figure."""
        self._meter["paused"] += seconds

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        m = self._meter
        if "loss" in logs and m["n"]:
            secs = max(time.perf_counter() - m["t0"] - m["paused"], 1e-9)
            world = self.args.world_size
            # every process sees its own share of an equal split: scale by the world size
            rates = {"tokens_per_s": m["tokens"] * world / secs,
                     "answer_tokens_per_s": m["answer_tokens"] * world / secs}
            logs.update(self._figures(m, secs, rates))
            self._reset()
        super().log(logs, start_time)


class DistillTrainer(MeteredTrainer):
    """A Trainer whose loss is ``alpha*KD + (1-alpha)*CE`` on the answer tokens (``sft``: CE), plus
    ``input_kd * KD`` on the input's tokens when the batches carry them (:class:`Collator` ``inputs``).

    Args (besides Trainer's): loss, alpha, temperature, beta: see :func:`mixed_loss`; input_kd: the weight of the
    input's KD term; group_lengths: batches of examples of about one length (:class:`LengthGroupedBatches`)
    instead of a plain shuffle.
    """

    def __init__(self, *args: Any, loss: str = "sft", alpha: float = 0.5, temperature: float = 1.0,
                 beta: float = 0.5, input_kd: float = 0.0, group_lengths: bool = False,
                 hidden: HiddenTeacher | None = None, hidden_kd: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kd_loss, self.alpha, self.temperature, self.beta = loss, alpha, temperature, beta
        self.input_kd, self.hidden, self.hidden_kd = input_kd, hidden, hidden_kd
        self.group_lengths = group_lengths
        # Our loss is already a mean over answer tokens: let Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._reset()

    def _fields(self) -> dict[str, Any]:
        return {"ce": 0.0, "kd": 0.0, "kd_input": 0.0, "kd_hidden": 0.0}

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not (self.group_lengths and isinstance(dataset, ExampleDataset)):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthGroupedBatches([len(e.ids) for e in dataset.examples], self.args.train_batch_size, seed)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss, parts, answer_tokens = batch_loss(model, inputs, self.kd_loss, self.alpha, self.temperature, self.beta,
                                                self.input_kd, self.hidden, self.hidden_kd)
        m = self._meter
        m["tokens"] += int(inputs["attention_mask"].sum())
        m["answer_tokens"] += answer_tokens
        m["ce"] += parts["ce"]
        m["kd"] += parts.get("kd", 0.0)
        m["kd_input"] += parts.get("kd_input", 0.0)
        m["kd_hidden"] += parts.get("kd_hidden", 0.0)
        m["n"] += 1
        return (loss, None) if return_outputs else loss

    def _figures(self, m: dict[str, Any], secs: float, rates: dict[str, float]) -> dict[str, float]:
        figures = {"ce": m["ce"] / m["n"]}
        if self.kd_loss != "sft":
            figures["kd"] = m["kd"] / m["n"]
        if self.input_kd:
            figures["kd_input"] = m["kd_input"] / m["n"]
        if self.hidden is not None:
            figures["kd_hidden"] = m["kd_hidden"] / m["n"]
        return {**figures, **rates}


class MetricsCallback(TrainerCallback):
    """Appends one JSON line per log (``step``, ``loss``, ``lr``, ``tokens_per_s``...) and per evaluation."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, state: Any, record: dict[str, Any]) -> None:
        if state.is_world_process_zero:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **record}) + "\n")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        logs = dict(logs or {})
        if "learning_rate" in logs:
            logs["lr"] = logs.pop("learning_rate")
        if "train_loss" in logs:  # the Trainer's is wrong after a resume: the mean of the steps logged instead
            logs["train_loss"] = train_loss(read_metrics(self.path)) or logs["train_loss"]
        self.write(state, {k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()})


class ProgressCallback(TrainerCallback):
    """Calls ``progress(step, max_steps)`` after every optimizer step (main process only)."""

    def __init__(self, progress: Callable[[int, int], None]):
        self.progress = progress

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.is_world_process_zero:
            self.progress(state.global_step, state.max_steps)


class EvalCallback(TrainerCallback):
    """Runs ``evaluate(model) -> dict`` every ``every`` steps and when training ends (main process only),
    writes the figures to the metrics file, and keeps the last ones in :attr:`last`."""

    def __init__(self, evaluate: Callable[[Any], dict[str, Any]], every: int, metrics: MetricsCallback,
                 trainer: MeteredTrainer | None = None):
        self.evaluate, self.every, self.metrics, self.trainer = evaluate, every, metrics, trainer
        self.last: dict[str, Any] = {}
        self._done_at = -1

    def _run(self, state: Any, model: Any) -> None:
        if not state.is_world_process_zero or self._done_at == state.global_step:
            return
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            self.last = self.evaluate(model)
        finally:
            model.train(was_training)
        self._done_at = state.global_step
        self.metrics.write(state, {"eval": self.last})
        if self.trainer is not None:
            self.trainer.pause(time.perf_counter() - t0)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self._run(state, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        self._run(state, model)
