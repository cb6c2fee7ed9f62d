"""The ONNX graph of an export: optimum's or onnxruntime-genai's builder, float16, onnxruntime's quantizers,
and what the graph holds.

The stage around it (config, parity and KV-cache checks, manifest) is :mod:`.onnx`; this
module imports onnx, optimum and onnxruntime only inside its functions (an extra:
``supertiny[onnx]``, ``supertiny[genai]`` for the genai builder).
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from supertiny.archs import shape
from supertiny.errors import MissingExtraError, UnsupportedArchitectureError
from supertiny.models import LoadedModel

GENAI_BUILDER = "onnxruntime_genai.models.builder"  # run as a module in a child process


def genai_builder_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(GENAI_BUILDER) is not None
    except ImportError:  # the parent package is missing
        return False


def build_genai(lm: LoadedModel, stage: Path, config: Any) -> None:
    """Build onnxruntime-genai's graph of ``lm`` into ``stage``.

    The builder reads a Hugging Face folder, so the loaded model (whatever its source:
    GGUF, a pruned student) is saved as safetensors next to the stage first; it never
    sees the user's folder, so no remote code or pickle from it can run. The builder
    runs in a child process: it prints progress freely and a crash in it leaves this
    process intact.
    """
    if not genai_builder_available():
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


def onnx_modules() -> tuple[Any, Any]:
    try:
        import onnx
        from optimum.exporters.onnx import onnx_export_from_model
    except ImportError:
        raise MissingExtraError("ONNX export needs onnx, onnxruntime and optimum: pip install 'supertiny[onnx]'") \
            from None
    return onnx, onnx_export_from_model


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep the tracer warnings and INFO logs of torch.onnx/optimum/onnxruntime off the terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


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


def load(onnx: Any, path: Path) -> Any:
    return onnx.load(str(path), load_external_data=True)


def save(onnx: Any, proto: Any, path: Path) -> None:
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


def external_data_files(model_file: Path) -> list[Path]:
    return sorted(p for p in model_file.parent.iterdir() if p.name.startswith(model_file.name) and p != model_file)


def to_fp16(onnx: Any, model_file: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(load(onnx, model_file), keep_io_types=False, disable_shape_infer=True)
    save(onnx, proto, model_file)


def quantize(onnx: Any, model_file: Path, config: Any) -> None:
    if config.quant == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        data = external_data_files(model_file)
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
    quantizer = MatMulNBitsQuantizer(load(onnx, model_file), accuracy_level=config.accuracy_level,
                                     algo_config=algo)
    quantizer.process()
    save(onnx, quantizer.model.model, model_file)


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
