"""Writing a GGUF file: a model's tensors streamed one at a time through gguf-py, its hyperparameters
and tokenizer as GGUF metadata, and llama.cpp's own quantizer.

Tensors stream from the source to the file one at a time (peak memory stays near the largest
tensor, not the model), through gguf-py's writer and the architecture's tensor-name table
(:mod:`supertiny.archs`); llama.cpp's rotary q/k permutation is applied on the way. The
stage around it (config, parity check, manifest) is :mod:`.gguf`.

gguf-py is imported inside the functions that write (numpy is already loaded by the CLI).
"""

from __future__ import annotations

import ctypes
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from supertiny.archs import ArchSpec, shape, tensor_name_map
from supertiny.backends import threads_for
from supertiny.checkpoint import check_finite_array, check_hf_dir, safetensors_files, safetensors_header
from supertiny.errors import SupertinyError, UnsupportedArchitectureError
from supertiny.models import LoadedModel
from supertiny.runtime.engines.llamacpp import captured_llama_log, llama_cpp_module
from supertiny.stages.export.carry import Carried, gguf_carried_blocks
from supertiny.stages.export.gguf_vocab import vocab_from_tokenizer, write_vocab
from supertiny.stages.export.imatrix import ImatrixArray

Progress = Callable[[int, int], None]


def _numpy_f32(t: Any) -> np.ndarray:
    return t.detach().to("cpu").float().numpy()


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout (two halves per head) -> llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


class Source:
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

        check_finite_array(name, raw, str(f))
        return raw.reshape(meta["shape"]).astype(np.float32, copy=False)


def _plan(source: Source, cfg: Any, spec: ArchSpec, dtype: str) -> list[tuple[str, str, tuple[int, ...], str]]:
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


def add_hparams(w: Any, cfg: Any, name: str, dtype: str, notes: list[str], file_type: str | None = None) -> None:
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


def write(path: Path, source: Source, cfg: Any, spec: ArchSpec, tokenizer: Any, dtype: str, pre: str | None,
          notes: list[str], progress: Progress | None, carried: Carried | None = None) -> int:
    """Stream the source into a GGUF file (unquantized, or the carried codes as llama.cpp blocks); returns the
    tensor count."""
    import gguf

    plan = _plan(source, cfg, spec, dtype)
    blocks: dict[str, tuple[np.ndarray, str]] = {}
    if carried is not None:
        blocks, note = gguf_carried_blocks(carried, [p[0] for p in plan])
        notes.append(note)
        plan = [(h, g, s, blocks[h][1] if h in blocks else k) for h, g, s, k in plan]
    w = gguf.GGUFWriter(str(path), spec.gguf_arch)
    kinds = Counter(k for *_, k in plan if k in ("Q4_0", "Q4_1", "Q8_0"))
    add_hparams(w, cfg, source.path.stem if source.kind == "gguf" else source.path.name, dtype, notes,
                 kinds.most_common(1)[0][0] if kinds else None)
    write_vocab(w, vocab_from_tokenizer(tokenizer, cfg.vocab_size, pre=pre))
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


def quantize(src: Path, dst: Path, quant: str, threads: int | None,
              imatrix: dict[str, np.ndarray] | None = None) -> list[str]:
    """Quantize with llama.cpp; returns what llama.cpp printed (one line per fallback etc.)."""
    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = threads_for(threads)
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
