"""The quantize stage: a model in, a plain Hugging Face checkpoint of its quantized weights out.

``quantize(model, out, QuantizeConfig(scheme=W4A16(...)))`` loads the model, takes
calibration windows (calibration text, or a task's chat-templated records), applies the
scheme with :func:`~supertiny.compress.quantize.quantize_`, and writes through
:class:`~supertiny.manifest.StageRun`:

* ``OUT/`` — config, tokenizer and ``model.safetensors`` holding the **dequantized**
  weights (float32, exactly ``(code - zero) * scale``), so transformers, ``supertiny
  eval`` and every exporter load it unchanged;
* ``OUT/quantization/codes.safetensors`` — the integer/FP8 codes, scales and zero points
  (format in :mod:`.qstore`), which the exporters carry instead of re-quantizing (:mod:`supertiny.export.carry`);
* ``OUT/supertiny.json`` — scheme, method, kernel (``simulated``), bits per weight, the
  size-equivalent bytes, per-layer rows, and under ``quality`` the quantized model
  (activation quantization included) against the unquantized one on held-out tokens:
  perplexity of both, KL and top-1 agreement.

Held-out tokens: ``eval_text`` when given; otherwise the calibration text's tokens after
the calibration ones, or with task calibration the bundled corpus.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..manifest import Manifest, StageRun
from ..outdir import check_output_dir
from .data import MIN_WINDOW, calibration_text, read_text, spans, token_windows
from .quantize import Scheme, quantize_, save_codes, scheme_dict

STAGE, STAGE_VERSION = "quantize", 1
TASK_MAX_LENGTH = 4096  # task records are cut into windows, so only absurdly long ones are skipped


@dataclass(frozen=True)
class QuantizeConfig:
    """What to quantize with and on what to calibrate and measure.

    Attributes:
        scheme: a :class:`~supertiny.compress.quantize.W4A16`, ``W8A8`` or ``FP8`` config.
        calib: calibration text (``.txt``, or ``.jsonl`` with ``text`` or ``prompt``/``response``);
            default the bundled corpus.
        task, data: calibrate on a task's chat prompts and answers instead (``data``: task
            records with ``label`` or teacher data with ``response``).
        calib_tokens: calibration tokens (calibrated methods only; RTN reads none).
        eval_tokens: held-out tokens the report compares the quantized and unquantized models on.
        eval_text: a text file to take the held-out tokens from (see the module doc).
        task_eval: with ``task``, labelled records on which the quantized and unquantized models are both
            scored with the task metric (greedy replies, torch, weights as written: activation
            quantization is not applied to replies); ``task_limit`` caps the records.
        window: tokens per forward pass.
    """

    scheme: Scheme
    calib: str | None = None
    task: str | None = None
    data: str | None = None
    calib_tokens: int = 2048
    eval_tokens: int = 2048
    eval_text: str | None = None
    task_eval: str | None = None
    task_limit: int | None = None
    window: int = 512
    overwrite: bool = False

    def __post_init__(self) -> None:
        if (self.task is None) != (self.data is None):
            raise InvalidInputError("--task and --data go together: a task and its records to calibrate on")
        if self.task_eval is not None and self.task is None:
            raise InvalidInputError("--task-eval scores a task: give --task (and --data) too")
        if self.task_limit is not None and self.task_limit < 1:
            raise InvalidInputError(f"task_limit must be at least 1, got {self.task_limit}")
        if self.task is not None and self.calib is not None:
            raise InvalidInputError("give --calib (text) or --task/--data (task records), not both")
        if min(self.calib_tokens, self.eval_tokens, self.window) < MIN_WINDOW:
            raise InvalidInputError(f"calibration/evaluation tokens and the window must be at least {MIN_WINDOW}")

    def settings(self) -> dict[str, Any]:
        """The manifest's ``settings``: the scheme as a dict, then the rest."""
        d = asdict(self)
        d["scheme"] = scheme_dict(self.scheme)
        return d


def _task_ids(config: QuantizeConfig, tokenizer: Any, model: str | os.PathLike[str]
              ) -> tuple[list[int], dict[str, Any]]:
    """Calibration token stream from task records (chat prompt + answer each, end to end), with the prompt the
    model was trained with (a fine-tuned model's brief prompt, from its manifest)."""
    from ..tasks import task_for
    from .distill import load_examples

    task = task_for(config.task, model)  # type: ignore[arg-type]
    examples, counts = load_examples(config.data, task, tokenizer, TASK_MAX_LENGTH)  # type: ignore[arg-type]
    ids: list[int] = []
    used = 0
    for ex in examples:
        if len(ids) >= config.calib_tokens:
            break
        ids += list(ex.ids)
        used += 1
    return ids[:config.calib_tokens], {"task": task.name, "prompt": task.prompt, "data": config.data, "records": used,
                                       "records_in_file": counts["records"]}


def _task_scores(model: str | os.PathLike[str], written: Path, config: QuantizeConfig, prompt: str
                 ) -> dict[str, Any]:
    """Task score of the written (quantized) checkpoint and of the source, on the same records and prompt."""
    from ..eval_run import evaluate_task_model

    assert config.task is not None and config.task_eval is not None
    scores = {}
    for name, path in (("reference", model), ("quantized", written)):
        r = evaluate_task_model(path, config.task, config.task_eval, limit=config.task_limit, prompt=prompt)
        scores[name] = r.evaluation.score.task_score
        n = r.evaluation.score.n
    return {"data": config.task_eval, "records": n, "prompt": prompt, "reference_score": scores["reference"],
            "score": scores["quantized"],
            "score_ratio": scores["quantized"] / scores["reference"] if scores["reference"] else None}


def quantize(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: QuantizeConfig,
    log: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Quantize MODEL into the Hugging Face directory OUT (see the module doc).

    Args:
        model: a Hugging Face directory, a ``.gguf`` file or ``"default"``.
        out: the directory to create.
        config: :class:`QuantizeConfig`.
        log: receives one line per phase; progress: (done, total) within the phase (Linears quantized,
            then held-out windows scored).

    Returns:
        The :class:`~supertiny.manifest.Manifest` as written.
    """
    from .. import evaluate as ev
    from ..models import describe, load_model

    out = Path(out).expanduser()
    check_output_dir(out, config.overwrite)
    say = log or (lambda _m: None)
    scheme = config.scheme
    calibrated = getattr(scheme, "method", "rtn") != "rtn" or bool(getattr(scheme, "max_mb", None))
    source = describe(model).to_dict()
    text = None if config.task is not None else calibration_text(config.calib)
    held_text = read_text(config.eval_text) if config.eval_text is not None else None
    run = StageRun(STAGE, STAGE_VERSION, out, source=model, info=source, settings=config.settings())
    lm = load_model(model)
    run.lap("load")
    calibration: dict[str, Any]
    if config.task is not None:
        calib_ids, calibration = _task_ids(config, lm.tokenizer, model)
        held = ev.tokenize_text(lm.tokenizer, held_text or read_text(ev.default_corpus_path()))[:config.eval_tokens]
        held_from = config.eval_text or "bundled corpus"
    else:
        assert text is not None
        ids = ev.tokenize_text(lm.tokenizer, text)
        calib_ids, after = spans(ids, config.calib_tokens, config.eval_tokens)
        calibration = {"text": config.calib or "bundled corpus"}
        if held_text is not None:
            held = ev.tokenize_text(lm.tokenizer, held_text)[:config.eval_tokens]
            held_from = config.eval_text
        else:
            held, held_from = after, f"{config.calib or 'bundled corpus'} after the calibration tokens"
    windows = token_windows(calib_ids, config.window) if calibrated else None
    if calibrated and not windows:
        raise InvalidInputError(f"the calibration data gave {len(calib_ids)} tokens: too few to calibrate on")
    calibration["tokens"] = sum(map(len, windows)) if windows else 0
    if not calibrated:
        run.note("round to nearest: no calibration data read")
    if scheme.name != "w4a16":
        run.note(f"quality includes {scheme.name} activation quantization (simulated); the checkpoint holds the "
                 "dequantized weights only, so `supertiny eval` on it measures weight quantization alone")
    reference = copy.deepcopy(lm.model) if held else None
    say(f"quantizing to {scheme.name} ({getattr(scheme, 'method', 'rtn')})"
        + (f" on {calibration['tokens']} calibration tokens" if calibrated else ""))
    with run.step("quantize"):
        result = quantize_(lm.model, scheme, windows, progress=progress)
    for n in result.notes:
        run.note(n)
    with run:
        stage = run.dir
        say(f"writing {out} (dequantized weights) and its codes")
        with run.step("write"):
            lm.model.save_pretrained(stage, safe_serialization=True)
            lm.tokenizer.save_pretrained(stage)
            save_codes(result, stage)
        quality: dict[str, Any] = {"skipped": "no held-out tokens left after the calibration tokens"}
        if held and reference is not None:
            say(f"comparing quantized and unquantized models on {len(held)} held-out tokens ({held_from})")
            window = min(config.window, len(held))
            with run.step("evaluate"):
                a = ev.agreement(ev.torch_logits(reference), ev.torch_logits(lm.model), held, window=window,
                                 stride=max(1, window // 2), progress=progress)
            quality = {"tokens": len(held), "text": held_from,
                       "activations_quantized": scheme.name != "w4a16",
                       "reference_perplexity": a.teacher.perplexity, "perplexity": a.student.perplexity,
                       "perplexity_ratio": a.student.perplexity / a.teacher.perplexity,
                       "kl_mean": a.kl_mean, "kl_p95": a.kl_p95, "top1_agreement": a.top1_agreement}
        for h in result.hooks:
            h.remove()
        if config.task_eval is not None:
            say(f"scoring the task on {config.task_eval}, quantized and unquantized")
            with run.step("task"):
                quality["task"] = _task_scores(model, stage, config, calibration["prompt"])
        details = {**result.details(), "calibration": calibration}
        return run.install(quality=quality, details=details)
