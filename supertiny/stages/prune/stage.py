"""The prune stage: a teacher in, a plain Hugging Face student cut down in depth and/or width out.

``prune(model, out, PruneConfig(layers=16))`` scores every layer, head, MLP and hidden channel on
calibration text (:mod:`.importance`), keeps the best (:func:`.plan.plan`), cuts the model
exactly (:func:`.plan.prune_`), writes the student (safetensors, config, tokenizer), reloads
it with transformers and compares it with the teacher on the held-out tokens after the
calibration ones. Its manifest says what was removed and why (``details``: pruned, scores,
parameters, calibration) and how close the student stays (``quality``).

Example::

    from supertiny.stages.prune import PruneConfig, prune
    manifest = prune("default", "student/", PruneConfig(drop_layers=0.5))
    manifest.details["parameters"], manifest.quality["kl_mean"]
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny import evaluate as ev
from supertiny import schema
from supertiny.archs import shape
from supertiny.errors import InvalidInputError
from supertiny.manifest import Manifest
from supertiny.models import load_model
from supertiny.outdir import check_output_dir
from supertiny.readers import MIN_WINDOW, calibration_text, spans, token_windows
from supertiny.settings import POS_INT, Settings, at_least, setting
from supertiny.stages.registry import Input, Log, Progress, get, stage
from supertiny.stages.runs import model_run, settings

STAGE, STAGE_VERSION = "prune", 1
LAYER_METRICS = ("block-influence", "loss")  # how depth pruning ranks layers
WIDTHS = ("heads", "kv_heads", "mlp", "hidden")


def _width(text: str) -> float:
    """A width as typed: a whole count (768) or a fraction to keep (0.5)."""
    try:
        return float(text)
    except ValueError:
        raise InvalidInputError(f"a width is a count (768) or a fraction to keep (0.5), got {text!r}") from None


def _width_setting(default: Any, help: str) -> Any:
    return setting(default, help, parse=_width, show=lambda v: f"{v:g}", metavar="N|F", check=schema.expect(
        lambda v: schema.is_number(v) and (0 < v < 1 or (v >= 1 and v == int(v))),
        "a count (a whole number) or a fraction below 1 to keep"))


@dataclass(frozen=True)
class PruneConfig(Settings):
    """What to cut. Width targets are a count (``>= 1``) or a fraction of the original width to keep
    (``< 1``); ``None`` leaves that dimension alone."""

    layers: int | None = setting(None, "Decoder layers to keep (depth pruning).", check=POS_INT)
    drop_layers: float | None = setting(None, "Fraction of decoder layers to drop, e.g. 0.5.", check=schema.expect(
        lambda v: schema.is_number(v) and 0 < v < 1, "a fraction between 0 and 1"), example=0.5)
    layer_metric: str = setting("block-influence", "How layers are ranked: 1 - cos(in, out), or the loss increase "
                                "when skipped (one pass per layer).", choices=LAYER_METRICS, unknown="layer metric")
    heads: float | None = _width_setting(None, "Query heads to keep per layer (count, or fraction); a multiple of "
                                         "the KV heads kept.")
    kv_heads: float | None = _width_setting(None, "KV groups to keep per layer (count or fraction).")
    mlp: float | None = _width_setting(None, "MLP channels to keep per layer (count, or fraction like 0.5).")
    hidden: float | None = _width_setting(None, "Hidden (embedding) channels to keep (count or fraction).")
    round_to: int = setting(1, "Round MLP/hidden widths down to a multiple: 32/64 for int4 blocks, 256 for "
                            "llama.cpp K-quants.", check=POS_INT)
    calib_tokens: int = setting(2048, "Calibration tokens scored.", check=at_least(MIN_WINDOW))
    eval_tokens: int = setting(2048, "Held-out tokens (after the calibration ones) on which student and teacher "
                               "are compared.", check=at_least(MIN_WINDOW))
    window: int = setting(512, "Tokens per forward pass.", check=at_least(MIN_WINDOW), role="internal")
    overwrite: bool = setting(False, "Replace OUT_DIR if it is not empty.", off="", role="run")

    def problems(self) -> list[str]:
        if self.layers is not None and self.drop_layers is not None:
            return ["give --layers (layers to keep) or --drop-layers (fraction to drop), not both"]
        if self.layers is None and self.drop_layers is None and all(getattr(self, w) is None for w in WIDTHS):
            return ["nothing to prune: give --layers/--drop-layers and/or --heads, --kv-heads, --mlp, --hidden"]
        return []


MODEL = Input("model", "The teacher: a Hugging Face directory, a .gguf file or 'default'.", kind="model",
              argument=True)
CALIB = Input("calib", "Calibration text: .txt, or .jsonl with text or prompt/response (default: the bundled "
              "corpus).", required=False)


@stage(STAGE, version=STAGE_VERSION, config=PruneConfig, inputs=(MODEL, CALIB), output="dir", command=("prune",))
def run(inputs: dict[str, str | None], out: Path, config: PruneConfig, log: Log, progress: Progress | None
        ) -> Manifest:
    """Prune ``inputs["model"]`` into the Hugging Face directory ``out`` (see the module docstring)."""
    # torch and transformers: heavy, and only a pruning process needs them
    from transformers import AutoModelForCausalLM

    from supertiny.stages.prune.importance import collect
    from supertiny.stages.prune.plan import plan, prune_, summary, targets

    model = inputs["model"]
    check_output_dir(out, config.overwrite)
    text = calibration_text(inputs["calib"])
    run = model_run(STAGE, STAGE_VERSION, out, model, settings(config, calib=inputs["calib"]))
    lm = load_model(model)
    run.lap("load")
    ids = ev.tokenize_text(lm.tokenizer, text)
    if len(ids) < 64:
        raise InvalidInputError(f"the calibration text has {len(ids)} tokens; give at least 64")
    calib, held_out = spans(ids, config.calib_tokens, config.eval_tokens)
    targets(lm.model.config, config)  # an impossible request fails now, not after calibration
    before, params_before = _dimensions(lm.model.config), lm.model.num_parameters()
    windows = token_windows(calib, config.window)
    log(f"scoring units on {len(calib)} calibration tokens ({len(windows)} windows"
        f"{', plus one pass per layer for the loss metric' if config.layer_metric == 'loss' else ''})")
    with run.step("importance"):
        imp = collect(lm.model, windows, layer_loss=config.layer_metric == "loss", progress=progress)
    kept = plan(lm.model, imp, config)
    teacher_fn = ev.torch_logits(copy.deepcopy(lm.model)) if held_out else None
    prune_(lm.model, kept)
    pruned = summary(lm.model, kept, imp, config, before)
    with run:
        log(f"writing the student ({lm.model.num_parameters():,} parameters) and reloading it with transformers")
        lm.model.save_pretrained(run.dir, safe_serialization=True)
        lm.tokenizer.save_pretrained(run.dir)
        student = AutoModelForCausalLM.from_pretrained(str(run.dir), use_safetensors=True,
                                                       trust_remote_code=False).eval()
        quality: dict[str, Any] = {"skipped": "no text left after the calibration tokens"}
        if teacher_fn is not None:
            log(f"comparing student and teacher on {len(held_out)} held-out tokens")
            with run.step("evaluate"):
                window = min(config.window, len(held_out))
                a = ev.agreement(teacher_fn, ev.torch_logits(student), held_out, window=window,
                                 stride=max(1, window // 2))
            quality = {"tokens": len(held_out), "teacher_perplexity": a.teacher.perplexity,
                       "student_perplexity": a.student.perplexity, "kl_mean": a.kl_mean,
                       "top1_agreement": a.top1_agreement}
        details = {
            "calibration": {"text": inputs["calib"] or "bundled corpus", "tokens": imp.tokens,
                            "loss": round(imp.loss, 6)},
            "pruned": pruned,
            "scores": {"block_influence": _rounded(imp.block_influence), "loss_increase": _rounded(imp.loss_increase)},
            "parameters": {"before": params_before, "after": student.num_parameters(),
                           "kept": round(student.num_parameters() / params_before, 4)},
        }
        return run.install(quality=quality, details=details)


def _dimensions(cfg: Any) -> dict[str, int]:
    s = shape(cfg)
    return {"layers": s.layers, "heads": s.heads, "kv_heads": s.kv_heads, "mlp": s.intermediate, "hidden": s.hidden}


def _rounded(scores: Any) -> list[float] | None:
    return None if scores is None else [round(float(x), 6) for x in scores]


def prune(model: str | os.PathLike[str], out: str | os.PathLike[str], config: PruneConfig,
          log: Log | None = None, progress: Progress | None = None, calib: str | os.PathLike[str] | None = None
          ) -> Manifest:
    """Prune MODEL into a plain Hugging Face directory OUT (safetensors, config, tokenizer).

    Args:
        model: a Hugging Face directory, a ``.gguf`` file or ``"default"``.
        out: the directory to create (its manifest ``supertiny.json``: see the module docstring).
        config: :class:`PruneConfig`.
        log: receives one line per phase; progress: (done, total) of calibration passes.
        calib: calibration text (``.txt``, or ``.jsonl`` with ``text`` or ``prompt``/``response`` fields);
            default the bundled corpus.

    Returns:
        The :class:`~supertiny.manifest.Manifest`.
    """
    return get(STAGE).call({"model": model, "calib": calib}, out, config, log, progress)
