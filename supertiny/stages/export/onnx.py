"""Export a causal LM to ONNX with its KV cache, quantize it, check it against PyTorch.

The graph comes from optimum's exporter (task ``text-generation-with-past``), so
optimum's ``ORTModelForCausalLM`` loads the result as well as supertiny's own engine
(:mod:`supertiny.runtime.engines.onnxrt`). Quantization is onnxruntime's own:

* ``int4``: 4-bit weight-only ``MatMulNBits`` (the W4A16 scheme) in blocks of 16-256
  weights, the embedding table as 4-bit ``GatherBlockQuantized``;
* ``int8``: the same operator with 8-bit weights (weight-only, blockwise);
* ``int8-dynamic``: ``quantize_dynamic`` (int8 weights *and* activations, per tensor).

``format="genai"`` builds the graph with onnxruntime-genai's model builder instead
(pinned 0.15.2: the newer builder does not import with our transformers pin). Its graph
fuses attention (``GroupQueryAttention``), the norms and the residual adds, and updates
the KV cache in place; on the default teacher it decodes about 3x faster on CPU than
optimum's graph at the same int4 size (``benchmarks/onnx_export.py``). optimum's
``ORTModelForCausalLM`` cannot load it; supertiny's engine and onnxruntime-genai can.

With tied embeddings the output layer gets its own copy of the embedding before the
export; otherwise the exported graph reads the embedding through a transposed view
that no quantizer touches, and every decoded token reads it in float32.

The result is checked like the GGUF export (:mod:`supertiny.stages.export.parity`) plus a
KV-cache check, and only a directory that passed is moved to ``OUT_DIR``, with its
manifest ``supertiny.json`` (:mod:`supertiny.manifest`: files, hashes, settings,
parity) inside.

Example::

    from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx
    manifest = export_onnx("default", "smollm2-int4", OnnxExportConfig(quant="int4"))
    manifest.quality["kl_mean"]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from supertiny import schema
from supertiny.errors import InvalidInputError
from supertiny.evaluate import tokenize_text
from supertiny.manifest import Manifest
from supertiny.models import load_model, resolve
from supertiny.outdir import check_output_dir
from supertiny.readers import default_corpus_path, read_text
from supertiny.runtime.engines.onnxrt import OnnxEngine, load_tokenizer, stop_ids
from supertiny.settings import POS_INT, Settings, at_least, setting
from supertiny.stages.export import onnx_graph as graph
from supertiny.stages.export.parity import ExportVerificationError, check_export, describe_failure
from supertiny.stages.registry import Input, Log, Progress, get, stage
from supertiny.stages.runs import model_run, settings

QUANTS = ("none", "int8", "int8-dynamic", "int4", "carry")  # carry: a quantized checkpoint's own codes
FORMATS = ("optimum", "genai")
BLOCK_SIZES = (16, 32, 64, 128, 256)
# MatMulNBits accuracy levels: the type activations are computed in (0: the kernel
# picks, 1: float32, 2: float16, 3: bfloat16, 4: int8, blockwise).
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
STAGE, STAGE_VERSION = "export-onnx", 1
# An unquantized float32 export computes what PyTorch computes up to summation order.
FP32_LOGITS_ATOL = 1e-3
KV_CHECK_STEPS = 16


@dataclass(frozen=True)
class OnnxExportConfig(Settings):
    """Settings of one ONNX export (the text of the parity check is an input of the stage)."""

    quant: str | None = setting(None, "int4/int8: weight-only MatMulNBits (W4A16/W8A16) by onnxruntime's round to "
                                "nearest; int8-dynamic: int8 weights and activations (quantize_dynamic); carry: the "
                                "codes a `supertiny quantize` checkpoint stores [default: carry for such a "
                                "checkpoint, else none].", choices=QUANTS, unknown="quantization", example="int4")
    format: str = setting("optimum", "optimum: optimum's graph (ORTModelForCausalLM loads it); genai: "
                          "onnxruntime-genai's fused graph, ~3x faster decoding on CPU (needs supertiny[genai]).",
                          choices=FORMATS, unknown="ONNX format")
    block_size: int = setting(32, "Weights per quantization block (int4/int8).", check=schema.expect(
        lambda v: v in BLOCK_SIZES and type(v) is int, f"a block size of {', '.join(map(str, BLOCK_SIZES))}"),
        example=64)
    accuracy_level: int = setting(4, "MatMulNBits compute type: 4 int8 activations (fast on CPU), 1 float32, 0 the "
                                  "kernel's choice.", check=schema.expect(
                                      lambda v: v in ACCURACY_LEVELS and type(v) is int,
                                      f"an accuracy level of {', '.join(map(str, ACCURACY_LEVELS))}"), example=1)
    symmetric: bool | None = setting(None, "Blocks without / with zero points [default: asymmetric for optimum (closer "
                                     "to float on the default teacher), symmetric for genai (its builder shares a "
                                     "4-bit table between a tied embedding and the output layer only then)].",
                                     off="--asymmetric", example=True)
    quantize_embeddings: bool = setting(True, "With int4 (optimum format): store the embedding table in 4 bits too.",
                                        flag="--quantize-embeddings", off="--keep-float-embeddings")
    fp16: bool = setting(False, "Float16 weights and KV cache (GPUs; usually slower on CPUs).", off="")
    opset: int | None = setting(None, "ONNX opset (default: optimum's).", check=POS_INT, example=17)
    verify: bool = setting(True, "Check the export against PyTorch (a skip is recorded in the manifest).")
    verify_tokens: int = setting(512, "Tokens of text the parity check scores.", check=at_least(16))
    threads: int | None = setting(None, "onnxruntime threads for the check (default: all cores).", check=POS_INT)
    overwrite: bool = setting(False, "Replace OUT_DIR if it is not empty (only once the new export passed).", off="",
                              role="run")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.symmetric is None:  # resolved here so that the manifest records what was used
            object.__setattr__(self, "symmetric", self.format == "genai")

    def problems(self) -> list[str]:
        if self.fp16 and self.quant == "int8-dynamic":
            return ["--fp16 does not combine with int8-dynamic (its activations are int8 already)"]
        if self.quant == "carry" and (self.format == "genai" or self.fp16):
            return ["carried codes export into the optimum float32 graph: drop --format genai/--fp16, or give "
                    "--quant int4/int8/none to quantize the dequantized weights again"]
        if self.format != "genai":
            return []
        if self.quant == "int8-dynamic":
            return ["the genai format quantizes with none, int4 or int8 (weight-only), not int8-dynamic"]
        if self.fp16:
            # builder 0.15.2's float16 CPU graph fails in onnxruntime 1.32 (a shape
            # error in an inserted Cast); its int4/int8 CPU graphs compute in float32
            return ["--fp16 applies to --format optimum only"]
        if self.opset is not None:
            return ["the genai format picks its own opset; drop --opset"]
        if not self.quantize_embeddings:
            # its int4 graph gathers embeddings from the 4-bit output layer when they are tied
            return ["--keep-float-embeddings applies to --format optimum only"]
        return []


MODEL = Input("model", "A Hugging Face directory, a .gguf file or 'default'.", kind="model", argument=True)
TEXT = Input("text", "Text for the parity check (default: the bundled corpus).", required=False)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix in (".onnx", ".gguf"):
        raise InvalidInputError(f"the output is a directory; got a file name {out}")
    check_output_dir(out, overwrite)



def _verify(stage: Path, lm: Any, text: str, config: OnnxExportConfig, strict: bool) -> dict[str, Any]:
    engine = OnnxEngine(stage, threads=config.threads)
    tokenizer = load_tokenizer(stage)
    stop = stop_ids(tokenizer, stage)
    report = check_export(
        lm.model, lm.tokenizer, engine.logits, lambda s: list(tokenizer(s)["input_ids"]),
        lambda ids, n: engine.generate(ids, n, stop_ids=stop), text, tokens=config.verify_tokens,
        strict=strict, atol=FP32_LOGITS_ATOL if strict else None,
    )
    # The KV cache: a prefill then one token at a time must give the logits of one full pass.
    ids = tokenize_text(lm.tokenizer, text)[: min(config.verify_tokens, 64 + KV_CHECK_STEPS)]
    prefill = len(ids) - KV_CHECK_STEPS
    full, stepped = engine.logits(ids)[prefill:], engine.logits_stepwise(ids, prefill)[prefill:]
    cache = {
        "steps": KV_CHECK_STEPS,
        "max_abs_diff_vs_full_pass": float(np.abs(full - stepped).max()),
        "top1_equal": float((full.argmax(-1) == stepped.argmax(-1)).mean()),
    }
    report["kv_cache"] = cache
    if strict and cache["max_abs_diff_vs_full_pass"] > FP32_LOGITS_ATOL:
        report["passed"] = False
    return report


@stage(STAGE, version=STAGE_VERSION, config=OnnxExportConfig, inputs=(MODEL, TEXT), output="dir",
       command=("export", "onnx"))
def run(inputs: dict[str, str | None], out: Path, config: OnnxExportConfig, log: Log, progress: Progress | None
        ) -> Manifest:
    """Export ``inputs["model"]`` to the verified ONNX directory ``out`` (see the module docstring)."""
    # onnx, optimum and onnxruntime (and torch for the export): heavy, an exporting process's only
    from supertiny.stages.export.carry import carry_into_onnx, load_carried

    model = inputs["model"]
    assert model is not None
    _check_out(out, config.overwrite)
    onnx, onnx_export_from_model = graph.onnx_modules()
    carried = load_carried(resolve(model)[1])
    config = replace(config, quant=config.quant or ("carry" if carried else "none"))
    if config.quant == "carry" and carried is None:
        raise InvalidInputError(f"{model} stores no quantization codes to carry (make it with `supertiny quantize`)")
    text = read_text(inputs["text"] or default_corpus_path()) if config.verify else ""
    run = model_run(STAGE, STAGE_VERSION, out, model, settings(config, text=inputs["text"]))
    if carried is not None and config.quant != "carry":
        run.note(f"the checkpoint's {carried.scheme['name']} codes are not carried: quant {config.quant}")
    lm = load_model(model)
    run.lap("load")
    if config.format == "optimum" and config.quant != "none" and graph.untie_output_layer(lm):
        run.note("tied embeddings: the output layer got its own copy so that it is quantized too")
    with run:
        stage_dir = run.dir
        with run.step("export"):
            if config.format == "genai":
                log(f"building the graph with onnxruntime-genai's model builder ({config.quant})")
                graph.build_genai(lm, stage_dir, config)
            else:
                log("exporting the graph with optimum (text-generation-with-past)")
                with graph.quiet():
                    onnx_export_from_model(lm.model, stage_dir, task="text-generation-with-past",
                                           do_validation=False, opset=config.opset)
            # optimum copies tokenizer files from the model's original folder, which a GGUF
            # source does not have: save the tokenizer supertiny loaded (and checks) instead,
            # for both formats, so they carry the same files.
            lm.tokenizer.save_pretrained(stage_dir)
        model_file = stage_dir / "model.onnx"
        carry_report = _weights(run, onnx, model_file, config, carried, carry_into_onnx, log)
        summary = graph.graph_summary(model_file)
        if summary["weight_matmuls_float"] and config.quant != "none":
            run.note(f"{summary['weight_matmuls_float']} matrix products kept float weights")
        parity: dict[str, Any] = {"skipped": "verification turned off (--no-verify)"}
        if config.verify:
            strict = config.quant == "none" and not config.fp16
            log(f"checking the export against PyTorch on {config.verify_tokens} tokens")
            with run.step("verify"):
                parity = _verify(stage_dir, lm, text, config, strict)
            if not parity["passed"]:
                why = describe_failure(parity)
                cache_diff = parity["kv_cache"]["max_abs_diff_vs_full_pass"]
                if parity["tokenization_equal"] and cache_diff > FP32_LOGITS_ATOL:
                    why += f"; cached decoding differs from a full pass by {cache_diff:.2e}"
                raise ExportVerificationError(f"the ONNX export does not match the source: {why}")
        details = {"model_file": model_file.name, **summary, **({"carried": carry_report} if carry_report else {})}
        manifest = run.install(quality=parity, details=details)
    log(f"wrote {out} ({manifest.bytes:,} bytes)")
    return manifest


def _weights(run: Any, onnx: Any, model_file: Path, config: OnnxExportConfig, carried: Any, carry_into_onnx: Any,
             log: Log) -> dict[str, Any] | None:
    """float16, the carried codes or onnxruntime's quantization, as asked (the genai builder did its own)."""
    if config.format == "optimum" and config.fp16:
        log("converting to float16")
        with run.step("fp16"), graph.quiet():
            graph.to_fp16(onnx, model_file)
    if config.quant == "carry":
        log(f"carrying the checkpoint's {carried.scheme['name']} codes into MatMulNBits")
        with run.step("carry"):
            proto = graph.load(onnx, model_file)
            report = {**carried.summary(), **carry_into_onnx(proto, carried, config.accuracy_level)}
            graph.save(onnx, proto, model_file)
        return report
    if config.format == "optimum" and config.quant != "none":
        log(f"quantizing to {config.quant} with onnxruntime")
        with run.step("quantize"), graph.quiet():
            graph.quantize(onnx, model_file, config)
    return None


def export_onnx(model: str | os.PathLike[str], out: str | os.PathLike[str], config: OnnxExportConfig | None = None,
                log: Log | None = None, text: str | os.PathLike[str] | None = None) -> Manifest:
    """Export MODEL to a verified ONNX directory.

    Args:
        model: a Hugging Face directory, a ``.gguf`` file or ``"default"``.
        out: the directory to create (``model.onnx``, ``config.json``, tokenizer files,
            ``generation_config.json``, the manifest ``supertiny.json``; and
            ``genai_config.json`` for the genai format).
        config: :class:`OnnxExportConfig`; log: receives one line per phase.
        text: the parity check's text file (default: the bundled corpus).

    Returns:
        The :class:`~supertiny.manifest.Manifest` (``quality``: the parity and KV-cache
        checks; ``details``: the model file, opset, operators and weight bytes).

    Raises:
        UserError: bad input (path, options, unsupported architecture).
        ExportVerificationError: the export does not match the source model.
    """
    return get(STAGE).call({"model": model, "text": text}, out, config or OnnxExportConfig(), log)
