"""Export a Hugging Face causal LM (or a GGUF teacher) to a GGUF file for llama.cpp.

Tensors stream from the source to the file one at a time (peak memory stays near
the largest tensor, not the model), through gguf-py's writer and tensor-name table.
Quantization is llama.cpp's own (``llama_model_quantize``). The file is then run in
llama.cpp against the PyTorch model (:mod:`supertiny.export.parity`), and only a file
that passes is moved into place, with its manifest next to it as ``OUT.supertiny.json``
(:mod:`supertiny.manifest`).

Example::

    from supertiny.export.gguf import GGUFExportConfig, export_gguf
    manifest = export_gguf("default", "smollm2-q4km.gguf", GGUFExportConfig(quant="Q4_K_M"))
    manifest.quality["kl_mean"]
"""

from __future__ import annotations

import ctypes
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..archs import ArchSpec, arch_for_model_type, shape, tensor_name_map
from ..errors import InvalidInputError, SupertinyError, UnsupportedArchitectureError
from ..gguf_file import GGUFFile
from ..manifest import Manifest, StageRun, manifest_path
from ..models import LoadedModel, describe, load_model, resolve
from . import GGUF_DTYPES, GGUF_QUANT_TYPES
from .carry import Carried, gguf_carried_blocks, load_carried
from .gguf_vocab import vocab_from_tokenizer, write_vocab
from .parity import ExportVerificationError, check_export, describe_failure

DTYPES, QUANT_TYPES = GGUF_DTYPES, GGUF_QUANT_TYPES  # the tables live in the package, free of numpy
K_QUANT_BLOCK = 256  # K-quants pack rows in super-blocks of 256 weights
STAGE, STAGE_VERSION = "export-gguf", 1
CARRY = "CARRY"  # quant: write a quantized checkpoint's own codes as llama.cpp blocks (.carry)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GGUFExportConfig:
    """Settings of one GGUF export; unknown values fail with the list of known ones.

    Attributes:
        dtype: float type of the written file (``f32``, ``f16``, ``bf16``); 1-D tensors
            (norms, biases) stay f32 as llama.cpp expects.
        quant: a llama.cpp quantization type applied after writing (``Q4_K_M``...), or ``carry``: the
            codes a ``supertiny quantize`` checkpoint stores, written as Q4_0/Q4_1/Q8_0 blocks
            (:mod:`.carry`). Default (None): ``carry`` for such a checkpoint, else none.
        verify: run the parity check (skipping it is recorded in the report).
        verify_tokens: tokens of evaluation text scored by the check.
        text: evaluation text file (default: the bundled corpus).
        threads: llama.cpp threads for quantization and the check.
        pre: force ``tokenizer.ggml.pre`` instead of matching the tokenizer's regexes.
        imatrix_tokens: with ``quant``, weigh the quantization by an importance matrix
            collected on this many tokens of ``text`` (taken after the tokens the
            parity check scores, so the check does not grade on its own calibration
            data); 0 turns it off.
    """

    dtype: str = "f16"
    quant: str | None = None
    verify: bool = True
    verify_tokens: int = 512
    text: str | None = None
    threads: int | None = None
    pre: str | None = None
    imatrix_tokens: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InvalidInputError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.quant is not None and self.quant.upper() not in (*QUANT_TYPES, CARRY):
            raise InvalidInputError(f"unknown quantization {self.quant!r}; choose one of {', '.join(QUANT_TYPES)}, "
                                    "or carry (a quantized checkpoint's own codes)")
        if self.verify_tokens < 16:
            raise InvalidInputError(f"verify_tokens must be at least 16, got {self.verify_tokens}")
        if self.imatrix_tokens < 0 or (self.imatrix_tokens and (self.quant or CARRY).upper() == CARRY):
            raise InvalidInputError("an importance matrix (imatrix_tokens > 0) needs a quantization type "
                                    "(one of llama.cpp's)")


def _numpy_f32(t: Any) -> np.ndarray:
    return t.detach().to("cpu").float().numpy()


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout (two halves per head) -> llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


class _Source:
    """Tensors of the source model, by name, read one at a time.

    Safetensors are read with plain file reads at the offsets in their header, not
    through a memory map: mapped pages count toward the process's RSS as they are
    touched, which made a streamed export look as large as the whole checkpoint.
    No torch model checks these weights, so names and shapes are checked against the
    config up front and each tensor for NaN/Inf as it streams.
    """

    def __init__(self, kind: str, path: Path, lm: LoadedModel | None):
        self.kind, self.path = kind, path
        self._index: dict[str, tuple[Path, int, dict[str, Any]]] = {}
        if kind == "hf":
            from ..checkpoint import check_hf_dir, safetensors_files, safetensors_header

            check_hf_dir(path)
            for f in safetensors_files(path):
                header, base = safetensors_header(f)
                for name, meta in header.items():
                    if name != "__metadata__":
                        if meta["dtype"] not in _SAFETENSORS_DTYPES:
                            raise UnsupportedArchitectureError(
                                f"tensor {name} in {f.name} has dtype {meta['dtype']}; supported: "
                                + ", ".join(_SAFETENSORS_DTYPES)
                            )
                        self._index[name] = (f, base, meta)
        else:
            assert lm is not None
            self._state = lm.model.state_dict()

    def names(self) -> list[str]:
        return list(self._index) if self.kind == "hf" else list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        if self.kind == "hf":
            return tuple(self._index[name][2]["shape"])
        return tuple(self._state[name].shape)

    def get(self, name: str) -> np.ndarray:
        if self.kind != "hf":
            return _numpy_f32(self._state[name])
        f, base, meta = self._index[name]
        start, end = meta["data_offsets"]
        with open(f, "rb") as fh:
            fh.seek(base + start)
            raw = np.frombuffer(fh.read(end - start), dtype=_SAFETENSORS_DTYPES[meta["dtype"]])
        if meta["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        from ..checkpoint import check_finite_array

        check_finite_array(name, raw, str(f))
        return raw.reshape(meta["shape"]).astype(np.float32, copy=False)


def _plan(source: _Source, cfg: Any, spec: ArchSpec, dtype: str) -> list[tuple[str, str, tuple[int, ...], str]]:
    """(hf name, gguf name, shape, gguf type) for every tensor to write, in order."""
    names = tensor_name_map(spec, cfg.num_hidden_layers)
    plan, unknown = [], []
    for hf_name in source.names():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp from rope.freq_base
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: llama.cpp reuses token_embd
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            unknown.append(hf_name)
            continue
        shape = source.shape(hf_name)
        kind = "F32" if len(shape) == 1 else dtype.upper()
        plan.append((hf_name, gguf_name, shape, kind))
    if unknown:
        raise UnsupportedArchitectureError(
            f"{len(unknown)} tensor(s) have no GGUF name for {spec.model_type}: {', '.join(unknown[:5])}"
        )
    return plan


def _add_hparams(w: Any, cfg: Any, name: str, dtype: str, notes: list[str], file_type: str | None = None) -> None:
    import gguf

    s = shape(cfg)
    heads, head_dim = s.heads, s.head_dim
    w.add_name(name)
    w.add_type("model")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", 10000.0)))
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{file_type}") if file_type else
                    {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype])
    scaling = getattr(cfg, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(scaling["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    elif kind != "default":
        raise UnsupportedArchitectureError(f"rope scaling {kind!r} is not supported by the GGUF exporter yet")
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and window < cfg.max_position_embeddings:
        notes.append(f"sliding window {window} is not represented: llama.cpp attends over the full context")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write(path: Path, source: _Source, cfg: Any, spec: ArchSpec, tokenizer: Any, config: GGUFExportConfig,
           notes: list[str], progress: Progress | None, carried: Carried | None = None) -> int:
    """Stream the source into a GGUF file (unquantized, or the carried codes as llama.cpp blocks); returns the
    tensor count."""
    import gguf

    plan = _plan(source, cfg, spec, config.dtype)
    blocks: dict[str, tuple[np.ndarray, str]] = {}
    if carried is not None:
        blocks, note = gguf_carried_blocks(carried, [p[0] for p in plan])
        notes.append(note)
        plan = [(h, g, s, blocks[h][1] if h in blocks else k) for h, g, s, k in plan]
    w = gguf.GGUFWriter(str(path), spec.gguf_arch)
    kinds = Counter(k for *_, k in plan if k in ("Q4_0", "Q4_1", "Q8_0"))
    _add_hparams(w, cfg, source.path.stem if source.kind == "gguf" else source.path.name, config.dtype, notes,
                 kinds.most_common(1)[0][0] if kinds else None)
    write_vocab(w, vocab_from_tokenizer(tokenizer, cfg.vocab_size, pre=config.pre))
    np_types = {"F32": np.float32, "F16": np.float16}
    for hf_name, gguf_name, tshape, kind in plan:
        n = int(np.prod(tshape))
        if hf_name in blocks:
            data = blocks[hf_name][0]
            w.add_tensor_info(gguf_name, (*tshape[:-1], data.shape[1]), np.dtype(np.uint8), data.nbytes,
                              raw_dtype=getattr(gguf.GGMLQuantizationType, kind))
        elif kind == "BF16":
            w.add_tensor_info(gguf_name, (*tshape[:-1], tshape[-1] * 2), np.dtype(np.uint8), n * 2,
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor_info(gguf_name, tshape, np.dtype(np_types[kind]), n * np.dtype(np_types[kind]).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    dims = shape(cfg)
    heads, kv_heads = dims.heads, dims.kv_heads
    for i, (hf_name, _, _, kind) in enumerate(plan):
        data = blocks[hf_name][0] if hf_name in blocks else source.get(hf_name)
        if spec.permute_qk_for_gguf and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_qk(data, heads)
        elif spec.permute_qk_for_gguf and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_qk(data, kv_heads)
        if kind == "BF16":
            data = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)
        elif hf_name not in blocks:
            data = data.astype(np_types[kind], copy=False)
        w.write_tensor_data(np.ascontiguousarray(data))
        if progress:
            progress(i + 1, len(plan))
    w.close()
    return len(plan)


def _quantize(src: Path, dst: Path, quant: str, threads: int | None,
              imatrix: dict[str, np.ndarray] | None = None) -> list[str]:
    """Quantize with llama.cpp; returns what llama.cpp printed (one line per fallback etc.)."""
    from ..runtime.llamacpp import _llama_cpp, captured_llama_log
    from .imatrix import ImatrixArray

    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = threads or os.cpu_count() or 1
    if imatrix:
        keep = ImatrixArray(imatrix, llama_cpp.llama_model_imatrix_data)
        params.imatrix = keep.pointer(ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    with captured_llama_log() as native_log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        lines = native_log()
    if rc != 0 or not dst.is_file():
        last = lines[-1] if lines else "no message"
        raise SupertinyError(f"llama.cpp failed to quantize to {quant} (return code {rc}): {last}")
    return lines


def quant_summary(path: Path, quant: str | None) -> dict[str, Any]:
    """Tensor types in a GGUF file and, for K-quants, which tensors fell back and why."""
    gf = GGUFFile(path)
    types = Counter(t.tensor_type.name for t in gf.tensors)
    params = gf.n_parameters()
    summary: dict[str, Any] = {"tensor_types": dict(types.most_common()),
                               "bits_per_weight": round(gf.size * 8 / params, 3)}
    if quant and "_K" in quant:
        fell_back = [
            {"tensor": t.name, "type": t.tensor_type.name, "row_width": int(t.shape[0])}
            for t in gf.tensors
            if len(t.shape) > 1 and not t.tensor_type.name.endswith("_K")
            and t.tensor_type.name not in ("F32", "F16", "BF16")
        ]
        quantizable = sum(1 for t in gf.tensors if len(t.shape) > 1)
        summary["k_quant_fallbacks"] = {
            "count": len(fell_back),
            "of_matrices": quantizable,
            "types": dict(Counter(f["type"] for f in fell_back)),
            "row_widths": sorted({f["row_width"] for f in fell_back}),
            "reason": f"K-quants need row widths divisible by {K_QUANT_BLOCK}",
            "tensors": fell_back,
        }
    return summary


def _check_out(out: Path) -> None:
    if out.suffix != ".gguf":
        raise InvalidInputError(f"the output must end in .gguf, got {out}")
    if out.is_dir():
        raise InvalidInputError(f"the output {out} is a directory")
    if not out.parent.is_dir():
        raise InvalidInputError(f"the output folder {out.parent} does not exist")


def export_gguf(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: GGUFExportConfig | None = None,
    log: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Export MODEL to a verified GGUF file.

    Args:
        model: a Hugging Face directory, a ``.gguf`` file or ``"default"``.
        out: the ``.gguf`` file to write (replaced only once the new one passed).
        config: :class:`GGUFExportConfig`.
        log: receives one line per stage.
        progress: called with (tensors written, tensors in all).

    Returns:
        The :class:`~supertiny.manifest.Manifest`, also written to ``OUT.supertiny.json``:
        ``quality`` is the parity check, ``details`` the tensor count and types, bits
        per weight and K-quant fallbacks.

    Raises:
        UserError: bad input (path, options, unsupported architecture or tokenizer).
        ExportVerificationError: the written file does not match the source model.
    """
    config = config or GGUFExportConfig()
    quant = config.quant.upper() if config.quant else None
    out = Path(out)
    _check_out(out)
    say = log or (lambda _msg: None)
    kind, src = resolve(model)
    source_info = describe(model).to_dict()  # also rejects unsupported architectures, before any slow work
    carried = load_carried(src) if kind == "hf" else None
    quant = quant or (CARRY if carried else None)
    if quant == CARRY and carried is None:
        raise InvalidInputError(f"{model} stores no quantization codes to carry (make it with `supertiny quantize`)")
    text = None
    if config.verify or config.imatrix_tokens:  # read the text first, so a wrong path fails fast
        from ..evaluate import default_corpus_path, read_text

        text = read_text(config.text or default_corpus_path())
    run = StageRun(STAGE, STAGE_VERSION, out, source=model, info=source_info,
                   settings={**asdict(config), "quant": quant}, single_file=True)
    notes = run.notes
    if carried is not None and quant != CARRY:
        notes.append(f"the checkpoint's {carried.scheme['name']} codes are not carried: llama.cpp quantizes "
                     f"its dequantized weights to {quant or config.dtype}")
    # A GGUF source is read through the dequantized torch model; a HF directory streams
    # from its safetensors, and its torch model is loaded only to verify, after writing.
    lm = load_model(model) if kind == "gguf" else None
    if lm is not None:
        cfg, tokenizer = lm.model.config, lm.tokenizer
    else:
        from transformers import AutoConfig, AutoTokenizer

        cfg = AutoConfig.from_pretrained(str(src), trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
    spec = arch_for_model_type(cfg.model_type)
    dims = shape(cfg)
    if not spec.permute_qk_for_gguf and dims.head_dim * dims.heads != dims.hidden:
        # llama.cpp's QWEN2 graph sizes q/o as hidden x hidden; a pruned student whose
        # heads x head_dim differs runs in its LLAMA graph instead, which reads the head
        # size from the file and takes optional q/k/v biases (rotary pairs permuted).
        notes.append(f"heads x head_dim != hidden size: written as llama.cpp's llama graph "
                     f"(its {spec.gguf_arch} graph assumes they are equal)")
        spec = replace(spec, gguf_arch="llama", permute_qk_for_gguf=True)
    run.lap("load")

    with run:
        raw = run.temp("raw")
        quantized = run.temp("quant")
        requantize = quant not in (None, CARRY)
        final = quantized if requantize else raw
        say(f"writing {config.dtype} GGUF ({spec.gguf_arch} graph)")
        with run.step("write"):
            n_tensors = _write(raw, _Source(kind, src, lm), cfg, spec, tokenizer, config, notes, progress,
                               carried if quant == CARRY else None)
        imatrix = None
        if requantize and config.imatrix_tokens:
            say(f"collecting an importance matrix on {config.imatrix_tokens} tokens")
            with run.step("imatrix"):
                lm = lm or load_model(model)
                imatrix, calibration = _imatrix(lm, spec, text, config)
            notes.append(calibration)
        if requantize:
            assert quant is not None
            say(f"quantizing to {quant} with llama.cpp")
            with run.step("quantize"):
                native_log = _quantize(raw, quantized, quant, config.threads, imatrix)
            if imatrix:  # llama.cpp says how many entries it took; record it rather than assume
                used = [ln.strip() for ln in native_log if "importance matrix" in ln]
                notes.append("llama.cpp: " + (used[0] if used else "did not report using the importance matrix"))
            raw.unlink()
        summary = quant_summary(final, quant)
        fallbacks = summary.get("k_quant_fallbacks")
        if fallbacks and fallbacks["count"]:
            notes.append(
                f"{fallbacks['count']} of {fallbacks['of_matrices']} matrices fell back from {quant} to "
                f"{', '.join(f'{k} x{v}' for k, v in fallbacks['types'].items())}: row widths "
                f"{fallbacks['row_widths']} are not multiples of {K_QUANT_BLOCK}"
            )
        parity: dict[str, Any] = {"skipped": "verification turned off (--no-verify)"}
        if config.verify:
            say(f"checking the export against PyTorch on {config.verify_tokens} tokens")
            with run.step("verify"):
                parity = _verify(final, lm or load_model(model), text, config,
                                 strict=quant is None and config.dtype != "bf16")
            if not parity["passed"]:
                raise ExportVerificationError(f"the GGUF export does not match the source: {describe_failure(parity)}")
        manifest = run.install(final, quality=parity, details={"tensors": n_tensors, **summary})
    say(f"wrote {out} ({manifest.bytes:,} bytes) and {manifest_path(out).name}")
    return manifest


def _imatrix(lm: LoadedModel, spec: ArchSpec, text: str | None, config: GGUFExportConfig
             ) -> tuple[dict[str, np.ndarray], str]:
    from ..compress.data import spans
    from ..evaluate import tokenize_text
    from .imatrix import collect_imatrix

    assert text is not None
    ids = tokenize_text(lm.tokenizer, text)
    skip = config.verify_tokens if config.verify else 0
    _, calib = spans(ids, skip, config.imatrix_tokens)
    if len(calib) < 64:
        raise InvalidInputError(
            f"the text has {len(ids)} tokens; the importance matrix needs at least 64 after the "
            f"{skip} the parity check scores"
        )
    data = collect_imatrix(lm.model, spec, calib)
    return data, (f"importance matrix from {len(calib)} tokens (text tokens {skip}..{skip + len(calib)}) "
                  f"over {len(data)} matrices")


def _verify(path: Path, lm: LoadedModel, text: str | None, config: GGUFExportConfig,
            strict: bool) -> dict[str, Any]:
    from ..runtime.llamacpp import LlamaCppEngine

    assert text is not None
    engine = LlamaCppEngine(path, n_ctx=max(config.verify_tokens, 128), n_threads=config.threads,
                            logits_all=True)
    return check_export(
        lm.model, lm.tokenizer, engine.logits, lambda s: engine.tokenize(s, add_special=True),
        engine.generate, text, tokens=config.verify_tokens, strict=strict,
    )
