"""Export a causal LM to ONNX with its KV cache, quantize it, check it against PyTorch.

The graph comes from optimum's exporter (task ``text-generation-with-past``), so
optimum's ``ORTModelForCausalLM`` loads the result as well as supertiny's own engine
(:mod:`supertiny.runtime.onnxrt`). Quantization is onnxruntime's own:

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

The result is checked like the GGUF export (:mod:`supertiny.export.parity`) plus a
KV-cache check, and only a directory that passed is moved to ``OUT_DIR``, with its
manifest ``supertiny.json`` (:mod:`supertiny.manifest`: files, hashes, settings,
parity) inside.

Example::

    from supertiny.export.onnx import OnnxExportConfig, export_onnx
    manifest = export_onnx("default", "smollm2-int4", OnnxExportConfig(quant="int4"))
    manifest.quality["kl_mean"]
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..archs import shape
from ..errors import InvalidInputError, MissingExtraError, UnsupportedArchitectureError
from ..manifest import Manifest, StageRun
from ..models import LoadedModel, describe, load_model, resolve
from ..outdir import check_output_dir
from . import ONNX_ACCURACY_LEVELS, ONNX_BLOCK_SIZES, ONNX_FORMATS, ONNX_QUANTS
from .carry import carry_into_onnx, load_carried
from .parity import ExportVerificationError, check_export, describe_failure

# the tables live in the package, free of onnx
QUANTS, FORMATS, BLOCK_SIZES, ACCURACY_LEVELS = ONNX_QUANTS, ONNX_FORMATS, ONNX_BLOCK_SIZES, ONNX_ACCURACY_LEVELS
GENAI_BUILDER = "onnxruntime_genai.models.builder"
STAGE, STAGE_VERSION = "export-onnx", 1
# An unquantized float32 export computes what PyTorch computes up to summation order.
FP32_LOGITS_ATOL = 1e-3
KV_CHECK_STEPS = 16


@dataclass(frozen=True)
class OnnxExportConfig:
    """Settings of one ONNX export; bad values fail with the list of good ones.

    Attributes:
        quant: ``none``, ``int4``, ``int8`` (weight-only), ``int8-dynamic``, or ``carry``: the codes a
            ``supertiny quantize`` checkpoint stores, written as MatMulNBits/GatherBlockQuantized
            (:mod:`.carry`). Default (None): ``carry`` for such a checkpoint, else ``none``.
        format: ``optimum`` (optimum's graph, loads in ``ORTModelForCausalLM``) or
            ``genai`` (onnxruntime-genai's fused graph, the fastest on CPU).
        block_size: weights per quantization block (int4/int8).
        accuracy_level: MatMulNBits compute type (4: int8 activations, the fast CPU
            path; 1: float32).
        symmetric: symmetric 4/8-bit blocks (no zero point). Default per format:
            asymmetric for optimum (it measured closer to float on the default teacher),
            symmetric for genai (its builder shares a 4-bit table between a tied
            embedding and the output layer only then).
        quantize_embeddings: with int4 (optimum format), store the embedding table in 4 bits too.
        fp16: convert the float weights and the KV cache to float16 (GPUs; slower on
            most CPUs).
        opset: ONNX opset (default: optimum's choice).
        verify / verify_tokens / text / threads: the parity check.
        overwrite: replace an existing, non-empty ``OUT_DIR``.
    """

    quant: str | None = None
    format: str = "optimum"
    block_size: int = 32
    accuracy_level: int = 4
    symmetric: bool | None = None
    quantize_embeddings: bool = True
    fp16: bool = False
    opset: int | None = None
    verify: bool = True
    verify_tokens: int = 512
    text: str | None = None
    threads: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.quant is not None and self.quant not in QUANTS:
            raise InvalidInputError(f"unknown quantization {self.quant!r}; choose one of {', '.join(QUANTS)}")
        if self.block_size not in BLOCK_SIZES:
            raise InvalidInputError(f"block size must be one of {', '.join(map(str, BLOCK_SIZES))}, "
                                    f"got {self.block_size}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise InvalidInputError(f"accuracy level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}")
        if self.verify_tokens < 16:
            raise InvalidInputError(f"verify_tokens must be at least 16, got {self.verify_tokens}")
        if self.fp16 and self.quant == "int8-dynamic":
            raise InvalidInputError("--fp16 does not combine with int8-dynamic (its activations are int8 already)")
        if self.format not in FORMATS:
            raise InvalidInputError(f"unknown ONNX format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.symmetric is None:  # resolved here so that the manifest records what was used
            object.__setattr__(self, "symmetric", self.format == "genai")
        if self.quant == "carry" and (self.format == "genai" or self.fp16):
            raise InvalidInputError("carried codes export into the optimum float32 graph: drop --format genai/--fp16, "
                                    "or give --quant int4/int8/none to quantize the dequantized weights again")
        if self.format == "genai":
            if self.quant == "int8-dynamic":
                raise InvalidInputError("the genai format quantizes with none, int4 or int8 (weight-only), "
                                        "not int8-dynamic")
            if self.fp16:
                # builder 0.15.2's float16 CPU graph fails in onnxruntime 1.32 (a shape
                # error in an inserted Cast); its int4/int8 CPU graphs compute in float32
                raise InvalidInputError("--fp16 applies to --format optimum only")
            if self.opset is not None:
                raise InvalidInputError("the genai format picks its own opset; drop --opset")
            if not self.quantize_embeddings:
                # its int4 graph gathers embeddings from the 4-bit output layer when they are tied
                raise InvalidInputError("--keep-float-embeddings applies to --format optimum only")


def _genai_builder_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(GENAI_BUILDER) is not None
    except ImportError:  # the parent package is missing
        return False


def _build_genai(lm: LoadedModel, stage: Path, config: OnnxExportConfig) -> None:
    """Build onnxruntime-genai's graph of ``lm`` into ``stage``.

    The builder reads a Hugging Face folder, so the loaded model (whatever its source:
    GGUF, a pruned student) is saved as safetensors next to the stage first; it never
    sees the user's folder, so no remote code or pickle from it can run. The builder
    runs in a child process: it prints progress freely and a crash in it leaves this
    process intact.
    """
    if not _genai_builder_available():
        raise MissingExtraError("--format genai needs onnxruntime-genai's model builder: "
                                "pip install 'supertiny[genai]' (onnxruntime-genai==0.15.2)")
    cfg = lm.model.config
    head_dim = shape(cfg).head_dim
    if head_dim % 16:
        # onnxruntime's GroupQueryAttention kernel refuses other sizes at run time
        raise UnsupportedArchitectureError(
            f"the genai graph needs a head size that is a multiple of 16 (this model: {head_dim}); "
            "use --format optimum, or prune whole heads rather than head channels")
    src = stage.with_name(stage.name + "-hf")
    shutil.rmtree(src, ignore_errors=True)
    try:
        lm.model.save_pretrained(src, safe_serialization=True)
        lm.tokenizer.save_pretrained(src)
        precision = {"none": "fp32", "int4": "int4", "int8": "int8"}[config.quant]
        options = ["hf_token=false", "hf_remote=false"]
        if config.quant != "none":
            options += [f"block_size={config.block_size}", f"accuracy_level={config.accuracy_level}",
                        f"is_symmetric={str(config.symmetric).lower()}"]
            if config.quant != "int4" or not config.symmetric:
                # builder 0.15.2 shares one table between a tied embedding and the output
                # layer only for symmetric int4; otherwise its graph names a missing
                # tensor or mixes types, and onnxruntime rejects it
                options.append("shared_embeddings=false")
        cmd = [sys.executable, "-m", GENAI_BUILDER, "-m", str(src), "-i", str(src), "-o", str(stage),
               "-p", precision, "-e", "cpu", "-c", str(src / "cache"), "--extra_options", *options]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit code {proc.returncode}"
            raise UnsupportedArchitectureError(
                f"onnxruntime-genai's builder cannot build this model ({why}); use --format optimum")
        # The engine and `supertiny inspect` read the Hugging Face config next to the graph.
        for name in ("config.json", "generation_config.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, stage / name)
    finally:
        shutil.rmtree(src, ignore_errors=True)


def _onnx_modules() -> tuple[Any, Any]:
    try:
        import onnx
        from optimum.exporters.onnx import onnx_export_from_model
    except ImportError:
        raise MissingExtraError("ONNX export needs onnx, onnxruntime and optimum: pip install 'supertiny[onnx]'") \
            from None
    return onnx, onnx_export_from_model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the tracer warnings and INFO logs of torch.onnx/optimum/onnxruntime off the terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix in (".onnx", ".gguf"):
        raise InvalidInputError(f"the output is a directory; got a file name {out}")
    check_output_dir(out, overwrite)


def untie_output_layer(lm: LoadedModel) -> bool:
    """Give ``lm_head`` its own copy of tied embeddings (numerically the same model).

    Returns whether the weights were tied.
    """
    import torch

    model = lm.model
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight.data_ptr() != emb.weight.data_ptr():
        return False
    head.weight = torch.nn.Parameter(emb.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return True


def _load(onnx: Any, path: Path) -> Any:
    return onnx.load(str(path), load_external_data=True)


def _save(onnx: Any, proto: Any, path: Path) -> None:
    """Write ``proto`` to ``path`` (weights in ``path_data`` when over protobuf's 2 GB)."""
    for old in path.parent.glob(path.name + "*"):
        old.unlink()
    try:
        big = proto.ByteSize() > 1_800_000_000
    except ValueError:  # protobuf refuses to size messages over 2 GB
        big = True
    if big:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + "_data", size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))


def _external_data_files(model_file: Path) -> list[Path]:
    return sorted(p for p in model_file.parent.iterdir() if p.name.startswith(model_file.name) and p != model_file)


def _to_fp16(onnx: Any, model_file: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(_load(onnx, model_file), keep_io_types=False, disable_shape_infer=True)
    _save(onnx, proto, model_file)


def _quantize(onnx: Any, model_file: Path, config: OnnxExportConfig) -> None:
    if config.quant == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        data = _external_data_files(model_file)
        tmp = model_file.with_name("quantized.onnx")
        quantize_dynamic(model_file, tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         use_external_data_format=bool(data))
        for p in [model_file, *data]:
            p.unlink()
        for p in sorted(tmp.parent.glob("quantized.onnx*")):  # keep the names ORTModelForCausalLM expects
            os.replace(p, p.with_name(p.name.replace("quantized.onnx", model_file.name)))
        return
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    bits = 4 if config.quant == "int4" else 8
    ops = ("MatMul", "Gather") if bits == 4 and config.quantize_embeddings else ("MatMul",)
    algo = DefaultWeightOnlyQuantConfig(
        block_size=config.block_size, is_symmetric=config.symmetric, accuracy_level=config.accuracy_level,
        bits=bits, op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    quantizer = MatMulNBitsQuantizer(_load(onnx, model_file), accuracy_level=config.accuracy_level,
                                     algo_config=algo)
    quantizer.process()
    _save(onnx, quantizer.model.model, model_file)


_ONNX_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 10: 2, 11: 8, 16: 2, 21: 0.5, 22: 0.5}  # TensorProto types


def graph_summary(model_file: Path) -> dict[str, Any]:
    """Operators and weight bytes of an exported graph (weights not loaded).

    ``weight_matmuls_float`` counts matrix products whose weight is still a float
    initializer: after an int4/int8 export it must be 0 (the output layer included).
    """
    import onnx

    proto = onnx.load(str(model_file), load_external_data=False)
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    ops = Counter(n.op_type for n in g.node)
    float_matmuls = sum(1 for n in g.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1
                        and n.input[1] in inits and inits[n.input[1]].data_type in (1, 10, 16))
    by_type: Counter[str] = Counter()
    for t in g.initializer:
        name = onnx.TensorProto.DataType.Name(t.data_type).lower()
        by_type[name] += math.ceil(math.prod(t.dims) * _ONNX_ITEMSIZE.get(t.data_type, 4))
    interesting = ("MatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear", "Gather",
                   "GatherBlockQuantized", "DequantizeLinear", "GroupQueryAttention",
                   "SkipSimplifiedLayerNormalization")
    return {
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "operators": {k: ops[k] for k in interesting if ops[k]},
        "weight_matmuls_float": float_matmuls,
        "weight_bytes": dict(by_type.most_common()),
    }


def _verify(stage: Path, lm: LoadedModel, text: str, config: OnnxExportConfig, strict: bool) -> dict[str, Any]:
    import numpy as np

    from ..evaluate import tokenize_text
    from ..runtime.onnxrt import OnnxEngine, load_tokenizer, stop_ids

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


def export_onnx(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: OnnxExportConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Export MODEL to a verified ONNX directory.

    Args:
        model: a Hugging Face directory, a ``.gguf`` file or ``"default"``.
        out: the directory to create (``model.onnx``, ``config.json``, tokenizer files,
            ``generation_config.json``, the manifest ``supertiny.json``; and
            ``genai_config.json`` for the genai format).
        config: :class:`OnnxExportConfig`.
        log: receives one line per stage.

    Returns:
        The :class:`~supertiny.manifest.Manifest` (``quality``: the parity and KV-cache
        checks; ``details``: the model file, opset, operators and weight bytes).

    Raises:
        UserError: bad input (path, options, unsupported architecture).
        ExportVerificationError: the export does not match the source model.
    """
    config = config or OnnxExportConfig()
    out = Path(out).expanduser()
    _check_out(out, config.overwrite)
    say = log or (lambda _msg: None)
    onnx, onnx_export_from_model = _onnx_modules()
    source_info = describe(model).to_dict()  # rejects unsupported models before any slow work
    carried = load_carried(resolve(model)[1])
    config = replace(config, quant=config.quant or ("carry" if carried else "none"))
    if config.quant == "carry" and carried is None:
        raise InvalidInputError(f"{model} stores no quantization codes to carry (make it with `supertiny quantize`)")
    text = ""
    if config.verify:
        from ..evaluate import default_corpus_path, read_text

        text = read_text(config.text or default_corpus_path())
    run = StageRun(STAGE, STAGE_VERSION, out, source=model, info=source_info, settings=asdict(config))
    if carried is not None and config.quant != "carry":
        run.note(f"the checkpoint's {carried.scheme['name']} codes are not carried: quant {config.quant}")
    lm = load_model(model)
    run.lap("load")
    if config.format == "optimum" and config.quant != "none" and untie_output_layer(lm):
        run.note("tied embeddings: the output layer got its own copy so that it is quantized too")
    with run:
        stage = run.dir
        with run.step("export"):
            if config.format == "genai":
                say(f"building the graph with onnxruntime-genai's model builder ({config.quant})")
                _build_genai(lm, stage, config)
            else:
                say("exporting the graph with optimum (text-generation-with-past)")
                with _quiet():
                    onnx_export_from_model(lm.model, stage, task="text-generation-with-past",
                                           do_validation=False, opset=config.opset)
            # optimum copies tokenizer files from the model's original folder, which a GGUF
            # source does not have: save the tokenizer supertiny loaded (and checks) instead,
            # for both formats, so they carry the same files.
            lm.tokenizer.save_pretrained(stage)
        model_file = stage / "model.onnx"
        # The genai builder quantizes (or converts to float16) by itself.
        if config.format == "optimum" and config.fp16:
            say("converting to float16")
            with run.step("fp16"), _quiet():
                _to_fp16(onnx, model_file)
        carry_report = None
        if config.quant == "carry":
            assert carried is not None
            say(f"carrying the checkpoint's {carried.scheme['name']} codes into MatMulNBits")
            with run.step("carry"):
                proto = _load(onnx, model_file)
                carry_report = {**carried.summary(), **carry_into_onnx(proto, carried, config.accuracy_level)}
                _save(onnx, proto, model_file)
        elif config.format == "optimum" and config.quant != "none":
            say(f"quantizing to {config.quant} with onnxruntime")
            with run.step("quantize"), _quiet():
                _quantize(onnx, model_file, config)
        summary = graph_summary(model_file)
        if summary["weight_matmuls_float"] and config.quant != "none":
            run.note(f"{summary['weight_matmuls_float']} matrix products kept float weights")
        parity: dict[str, Any] = {"skipped": "verification turned off (--no-verify)"}
        if config.verify:
            strict = config.quant == "none" and not config.fp16
            say(f"checking the export against PyTorch on {config.verify_tokens} tokens")
            with run.step("verify"):
                parity = _verify(stage, lm, text, config, strict)
            if not parity["passed"]:
                why = describe_failure(parity)
                cache_diff = parity["kv_cache"]["max_abs_diff_vs_full_pass"]
                if parity["tokenization_equal"] and cache_diff > FP32_LOGITS_ATOL:
                    why += f"; cached decoding differs from a full pass by {cache_diff:.2e}"
                raise ExportVerificationError(f"the ONNX export does not match the source: {why}")
        details = {"model_file": model_file.name, **summary}
        if carry_report:
            details["carried"] = carry_report
        manifest = run.install(quality=parity, details=details)
    say(f"wrote {out} ({manifest.bytes:,} bytes)")
    return manifest
