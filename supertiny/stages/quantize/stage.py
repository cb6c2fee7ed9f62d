"""The quantize stage: a model in, a plain Hugging Face checkpoint of its quantized weights out.

``quantize(model, out, QuantizeConfig(scheme="w4a16", method="gptq"))`` loads the model, takes
calibration windows (calibration text, or a task's chat-templated records), applies the
scheme with :func:`~supertiny.stages.quantize.apply.quantize_`, and writes through
:class:`~supertiny.manifest.StageRun`:

* ``OUT/`` — config, tokenizer and ``model.safetensors`` holding the **dequantized**
  weights (float32, exactly ``(code - zero) * scale``), so transformers, ``supertiny
  eval`` and every exporter load it unchanged;
* ``OUT/quantization/codes.safetensors`` — the integer/FP8 codes, scales and zero points
  (format in :mod:`.codes`), which the exporters carry instead of re-quantizing
  (:mod:`supertiny.stages.export.carry`);
* ``OUT/supertiny.json`` — scheme, method, kernel (``simulated``), bits per weight, the
  size-equivalent bytes, per-layer rows, and under ``quality`` the quantized model
  (activation quantization included) against the unquantized one on held-out tokens:
  perplexity of both, KL and top-1 agreement.

The scheme's own options (group, method, symmetric, granularity, head, head_bits, max_mb) are
settings here, ``None`` leaving the scheme's default (:mod:`.schemes`, the one place they live).
Held-out tokens: ``eval_text`` when given; otherwise the calibration text's tokens after the
calibration ones, or with task calibration the bundled corpus.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import MISSING, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from supertiny import evaluate as ev
from supertiny.errors import InvalidInputError
from supertiny.manifest import Manifest
from supertiny.models import load_model
from supertiny.outdir import check_output_dir
from supertiny.readers import MIN_WINDOW, calibration_text, read_text, spans, token_windows
from supertiny.settings import POS_INT, POSITIVE, Settings, at_least, setting
from supertiny.stages.eval import EvalConfig, evaluate_task_model
from supertiny.stages.quantize.schemes import (
    FP8_GRANULARITIES,
    HEAD_BITS,
    QUANT_GROUPS,
    QUANT_METHODS,
    QUANT_SCHEMES,
    W4A16,
    Scheme,
    scheme_dict,
    scheme_from_name,
)
from supertiny.stages.registry import Input, Log, Progress, get, stage
from supertiny.stages.runs import model_run, settings
from supertiny.stages.transfer.examples import load_examples
from supertiny.tasks import task_for

STAGE, STAGE_VERSION = "quantize", 1
TASK_MAX_LENGTH = 4096  # task records are cut into windows, so only absurdly long ones are skipped
SCHEME_OPTIONS = ("group", "method", "symmetric", "granularity", "head", "head_bits", "max_mb", "damp", "awq_grid")


def _w4a16(name: str) -> str:
    return f" [default: {W4A16.__dataclass_fields__[name].default}]"


@dataclass(frozen=True)
class QuantizeConfig(Settings):
    """A scheme and its options (``None``: the scheme's default), and how much to calibrate and measure on."""

    scheme: str = setting(MISSING, "w4a16: int4 group-wise weights; w8a8: int8 weights and dynamic per-token "
                          "activations; fp8: FP8 E4M3 weights and activations.", choices=QUANT_SCHEMES,
                          example="w8a8")
    group: int | None = setting(None, "w4a16: input columns per scale" + _w4a16("group"), choices=QUANT_GROUPS)
    method: str | None = setting(None, "w4a16: rtn (round to nearest), gptq or awq (calibrated)" + _w4a16("method"),
                                 choices=QUANT_METHODS, example="gptq")
    symmetric: bool | None = setting(None, "w4a16: zero point fixed at 8, or one per group [default: asymmetric].",
                                     off="--asymmetric", example=True)
    granularity: str | None = setting(None, "fp8: one scale per tensor, or per output channel (weights) and token "
                                      "(activations) [default: tensor].", choices=FP8_GRANULARITIES, example="channel")
    head: bool | None = setting(None, "Quantize the output layer (and a tied embedding), or leave it in float "
                                "[default: quantized].", flag="--quantize-head", off="--float-head", example=False)
    head_bits: int | None = setting(None, "w4a16: the output layer (and a tied embedding) in int4 like the rest, or "
                                    "in group-wise int8 (llama.cpp's Q8_0 at group 32)" + _w4a16("head_bits"),
                                    choices=HEAD_BITS, example=8)
    max_mb: float | None = setting(None, "w4a16: a size budget (MB, size-equivalent); the set of decoder layers and "
                                   "output layer whose 8-bit versions save the most calibration KL within it is "
                                   "stored in int8.", check=POSITIVE, example=40.0)
    damp: float | None = setting(None, "w4a16 gptq: damping, a fraction of the mean Hessian diagonal.",
                                 role="internal", example=0.02)
    awq_grid: int | None = setting(None, "w4a16 awq: exponents tried.", role="internal", example=10)
    calib_tokens: int = setting(2048, "Calibration tokens (gptq/awq).", check=at_least(MIN_WINDOW))
    eval_tokens: int = setting(2048, "Held-out tokens on which the quantized model is compared with the original.",
                               check=at_least(MIN_WINDOW))
    task_limit: int | None = setting(None, "With --task-eval: score only the first N records.", check=POS_INT)
    window: int = setting(512, "Tokens per forward pass.", check=at_least(MIN_WINDOW), role="internal")
    overwrite: bool = setting(False, "Replace OUT_DIR if it is not empty.", off="", role="run")

    def problems(self) -> list[str]:
        try:
            self.scheme_config  # noqa: B018 - the scheme's own checks (an option it does not take, a bad pair)
        except InvalidInputError as exc:
            return [str(exc)]
        return []

    @cached_property
    def scheme_config(self) -> Scheme:
        """The scheme object (:mod:`.schemes`) these settings make."""
        return scheme_from_name(self.scheme, **{k: getattr(self, k) for k in SCHEME_OPTIONS})

    @classmethod
    def for_scheme(cls, scheme: Scheme, **settings: Any) -> QuantizeConfig:
        """The config of a scheme object (its options as settings) with the other ``settings``."""
        options = {k: v for k, v in dataclasses.asdict(scheme).items() if k in SCHEME_OPTIONS}
        return cls(scheme=scheme.name, **options, **settings)

    @property
    def calibrated(self) -> bool:
        """Whether the scheme reads calibration windows (gptq, awq, or a size budget)."""
        s = self.scheme_config
        return getattr(s, "method", "rtn") != "rtn" or bool(getattr(s, "max_mb", None))


MODEL = Input("model", "A Hugging Face directory, a .gguf file or 'default'.", kind="model", argument=True)
INPUTS = (
    MODEL,
    Input("calib", "Calibration text: .txt, or .jsonl with text or prompt/response (default: the bundled corpus).",
          required=False),
    Input("task", "Calibrate on a task's chat prompts instead: a shipped task's name (factory-tickets) or a task "
          ".toml file; needs --data.", kind="task", required=False),
    Input("data", "With --task: task records (input, label) or teacher data (input, response).", required=False),
    Input("task_eval", "With --task: labelled records on which the quantized and the unquantized model are both "
          "scored.", required=False),
    Input("eval_text", "Take the held-out tokens from this text (default: the calibration text after the "
          "calibration tokens; the bundled corpus with --task).", required=False),
)


def check_inputs(inputs: dict[str, str | None], config: QuantizeConfig) -> None:
    """The inputs that go together, checked before anything loads."""
    task, data = inputs["task"], inputs["data"]
    if (task is None) != (data is None):
        raise InvalidInputError("--task and --data go together: a task and its records to calibrate on")
    if inputs["task_eval"] is not None and task is None:
        raise InvalidInputError("--task-eval scores a task: give --task (and --data) too")
    if task is not None and inputs["calib"] is not None:
        raise InvalidInputError("give --calib (text) or --task/--data (task records), not both")


@stage(STAGE, version=STAGE_VERSION, config=QuantizeConfig, inputs=INPUTS, output="dir", command=("quantize",))
def run(inputs: dict[str, str | None], out: Path, config: QuantizeConfig, log: Log, progress: Progress | None
        ) -> Manifest:
    """Quantize ``inputs["model"]`` into the Hugging Face directory ``out`` (see the module docstring)."""
    # torch: heavy, and only a quantizing process needs it
    from supertiny.stages.quantize.apply import quantize_, save_codes

    check_inputs(inputs, config)
    check_output_dir(out, config.overwrite)
    scheme = config.scheme_config
    run = model_run(STAGE, STAGE_VERSION, out, inputs["model"], _settings(config, inputs))
    text = None if inputs["task"] is not None else calibration_text(inputs["calib"])
    held_text = read_text(inputs["eval_text"]) if inputs["eval_text"] is not None else None
    lm = load_model(inputs["model"])
    run.lap("load")
    calib_ids, held, held_from, calibration = _tokens(lm, inputs, config, text, held_text)
    windows = token_windows(calib_ids, config.window) if config.calibrated else None
    if config.calibrated and not windows:
        raise InvalidInputError(f"the calibration data gave {len(calib_ids)} tokens: too few to calibrate on")
    calibration["tokens"] = sum(map(len, windows)) if windows else 0
    if not config.calibrated:
        run.note("round to nearest: no calibration data read")
    if scheme.name != "w4a16":
        run.note(f"quality includes {scheme.name} activation quantization (simulated); the checkpoint holds the "
                 "dequantized weights only, so `supertiny eval` on it measures weight quantization alone")
    reference = copy.deepcopy(lm.model) if held else None
    log(f"quantizing to {scheme.name} ({getattr(scheme, 'method', 'rtn')})"
        + (f" on {calibration['tokens']} calibration tokens" if config.calibrated else ""))
    with run.step("quantize"):
        result = quantize_(lm.model, scheme, windows, progress=progress)
    for n in result.notes:
        run.note(n)
    with run:
        log(f"writing {out} (dequantized weights) and its codes")
        with run.step("write"):
            lm.model.save_pretrained(run.dir, safe_serialization=True)
            lm.tokenizer.save_pretrained(run.dir)
            save_codes(result, run.dir)
        quality = _compare(run, reference, lm.model, held, held_from, config, scheme, log, progress)
        for h in result.hooks:
            h.remove()
        if inputs["task_eval"] is not None:
            log(f"scoring the task on {inputs['task_eval']}, quantized and unquantized")
            with run.step("task"):
                quality["task"] = _task_scores(inputs, run.dir, config, calibration["prompt"])
        return run.install(quality=quality, details={**result.details(), "calibration": calibration})


def _settings(config: QuantizeConfig, inputs: dict[str, str | None]) -> dict[str, Any]:
    """The manifest's ``settings``: the scheme as a dict, then the rest."""
    rest = settings(config, **{k: v for k, v in inputs.items() if k != "model"})
    return {"scheme": scheme_dict(config.scheme_config),
            **{k: v for k, v in rest.items() if k != "scheme" and k not in SCHEME_OPTIONS}}


def _tokens(lm: Any, inputs: dict[str, str | None], config: QuantizeConfig, text: str | None,
            held_text: str | None) -> tuple[list[int], list[int], str | None, dict[str, Any]]:
    """``(calibration ids, held-out ids, where the held-out ids come from, the calibration record)``."""

    if inputs["task"] is not None:
        calib_ids, calibration = _task_ids(inputs, config, lm.tokenizer)
        held = ev.tokenize_text(lm.tokenizer, held_text or read_text(ev.default_corpus_path()))[:config.eval_tokens]
        return calib_ids, held, inputs["eval_text"] or "bundled corpus", calibration
    assert text is not None
    calib_ids, after = spans(ev.tokenize_text(lm.tokenizer, text), config.calib_tokens, config.eval_tokens)
    calibration = {"text": inputs["calib"] or "bundled corpus"}
    if held_text is not None:
        return calib_ids, ev.tokenize_text(lm.tokenizer, held_text)[:config.eval_tokens], inputs["eval_text"], \
            calibration
    return calib_ids, after, f"{inputs['calib'] or 'bundled corpus'} after the calibration tokens", calibration


def _compare(run: Any, reference: Any, model: Any, held: list[int], held_from: str | None, config: QuantizeConfig,
             scheme: Scheme, log: Log, progress: Progress | None) -> dict[str, Any]:
    """The quantized model against the unquantized one on the held-out tokens."""

    if not held or reference is None:
        return {"skipped": "no held-out tokens left after the calibration tokens"}
    log(f"comparing quantized and unquantized models on {len(held)} held-out tokens ({held_from})")
    window = min(config.window, len(held))
    with run.step("evaluate"):
        a = ev.agreement(ev.torch_logits(reference), ev.torch_logits(model), held, window=window,
                         stride=max(1, window // 2), progress=progress)
    return {"tokens": len(held), "text": held_from, "activations_quantized": scheme.name != "w4a16",
            "reference_perplexity": a.teacher.perplexity, "perplexity": a.student.perplexity,
            "perplexity_ratio": a.student.perplexity / a.teacher.perplexity,
            "kl_mean": a.kl_mean, "kl_p95": a.kl_p95, "top1_agreement": a.top1_agreement}


def _task_ids(inputs: dict[str, str | None], config: QuantizeConfig, tokenizer: Any
              ) -> tuple[list[int], dict[str, Any]]:
    """Calibration token stream from task records (chat prompt + answer each, end to end), with the prompt the
    model was trained with (a fine-tuned model's brief prompt, from its manifest)."""

    assert inputs["task"] is not None and inputs["data"] is not None
    task = task_for(inputs["task"], inputs["model"])
    examples, counts = load_examples(inputs["data"], task, tokenizer, TASK_MAX_LENGTH)
    ids: list[int] = []
    used = 0
    for ex in examples:
        if len(ids) >= config.calib_tokens:
            break
        ids += list(ex.ids)
        used += 1
    return ids[:config.calib_tokens], {"task": task.name, "prompt": task.prompt, "data": inputs["data"],
                                       "records": used, "records_in_file": counts["records"]}


def _task_scores(inputs: dict[str, str | None], written: Path, config: QuantizeConfig, prompt: str) -> dict[str, Any]:
    """Task score of the written (quantized) checkpoint and of the source, on the same records and prompt."""

    task, data = inputs["task"], inputs["task_eval"]
    assert task is not None and data is not None
    scores, n = {}, 0
    eval_config = EvalConfig(limit=config.task_limit, prompt=prompt)
    for name, path in (("reference", inputs["model"]), ("quantized", written)):
        r = evaluate_task_model(str(path), task, data, eval_config)
        scores[name], n = r.evaluation.score.task_score, r.evaluation.score.n
    return {"data": data, "records": n, "prompt": prompt, "reference_score": scores["reference"],
            "score": scores["quantized"],
            "score_ratio": scores["quantized"] / scores["reference"] if scores["reference"] else None}


def quantize(model: str | os.PathLike[str], out: str | os.PathLike[str], config: QuantizeConfig,
             log: Log | None = None, progress: Progress | None = None, **inputs: str | os.PathLike[str] | None
             ) -> Manifest:
    """Quantize MODEL into the Hugging Face directory OUT (see the module docstring).

    Args:
        model: a Hugging Face directory, a ``.gguf`` file or ``"default"``.
        out: the directory to create; config: :class:`QuantizeConfig`.
        log: receives one line per phase; progress: (done, total) within the phase (Linears quantized,
            then held-out windows scored).
        inputs: ``calib``, ``task`` + ``data``, ``task_eval``, ``eval_text`` (see the stage's inputs).

    Returns:
        The :class:`~supertiny.manifest.Manifest` as written.
    """
    return get(STAGE).call({"model": model, **inputs}, out, config, log, progress)
