"""Export a Hugging Face causal LM (or a GGUF teacher) to a GGUF file for llama.cpp.

Tensors stream from the source to the file one at a time (peak memory stays near
the largest tensor, not the model), through gguf-py's writer and tensor-name table.
Quantization is llama.cpp's own (``llama_model_quantize``). The file is then run in
llama.cpp against the PyTorch model (:mod:`supertiny.stages.export.parity`), and only a file
that passes is moved into place, with its manifest next to it as ``OUT.supertiny.json``
(:mod:`supertiny.manifest`).

Example::

    from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf
    manifest = export_gguf("default", "smollm2-q4km.gguf", GGUFExportConfig(quant="Q4_K_M"))
    manifest.quality["kl_mean"]
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from supertiny import schema
from supertiny.archs import arch_for_model_type, shape
from supertiny.errors import InvalidInputError
from supertiny.evaluate import tokenize_text
from supertiny.gguf_file import GGUFFile
from supertiny.manifest import Manifest, manifest_path
from supertiny.models import describe, load_model, resolve
from supertiny.outdir import check_output_file
from supertiny.readers import default_corpus_path, read_text, spans
from supertiny.runtime.engines.llamacpp import LlamaCppEngine
from supertiny.settings import POS_INT, Settings, at_least, setting
from supertiny.stages.export.imatrix import collect_imatrix
from supertiny.stages.export.parity import ExportVerificationError, check_export, describe_failure
from supertiny.stages.registry import Input, Log, Progress, get, stage
from supertiny.stages.runs import model_run, settings

# Float types written, then llama.cpp quantization types that need no importance matrix (the IQ1/IQ2 ones do).
DTYPES = ("f32", "f16", "bf16")
QUANT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
               "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "IQ4_NL", "IQ4_XS")
K_QUANT_BLOCK = 256  # K-quants pack rows in super-blocks of 256 weights
STAGE, STAGE_VERSION = "export-gguf", 1
CARRY = "CARRY"  # quant: write a quantized checkpoint's own codes as llama.cpp blocks (.carry)


def _quant(value: Any) -> Any:
    """A llama.cpp quantization type (any case) or carry."""
    if isinstance(value, str) and value.upper() in (*QUANT_TYPES, CARRY):
        return value
    raise schema.Bad(f"unknown quantization {schema.show(value)}; choose one of {', '.join(QUANT_TYPES)}, or carry "
                     "(a quantized checkpoint's own codes)")


@dataclass(frozen=True)
class GGUFExportConfig(Settings):
    """Settings of one GGUF export (the text of the parity check is an input of the stage)."""

    dtype: str = setting("f16", "Float type written before any quantization; 1-D tensors (norms, biases) stay f32 "
                         "as llama.cpp expects.", choices=DTYPES, unknown="dtype")
    quant: str | None = setting(None, f"llama.cpp quantization: {', '.join(QUANT_TYPES)}; or carry: the codes a "
                                "`supertiny quantize` checkpoint stores, written as Q4_0/Q4_1/Q8_0 blocks [default: "
                                "carry for such a checkpoint, else none].", check=_quant, metavar="TYPE",
                                example="Q4_0")
    verify: bool = setting(True, "Check the export against PyTorch (a skip is recorded in the report).")
    verify_tokens: int = setting(512, "Tokens of text the parity check scores.", check=at_least(16))
    threads: int | None = setting(None, "llama.cpp threads for quantization and the check (default: all cores).",
                                  check=POS_INT)
    pre: str | None = setting(None, "Force tokenizer.ggml.pre instead of matching the tokenizer's regexes.",
                              example="smollm")
    imatrix_tokens: int = setting(0, "With --quant: calibrate an importance matrix on this many tokens of --text, "
                                  "taken after the tokens the parity check scores (0: off).", check=at_least(0),
                                  example=64)

    def problems(self) -> list[str]:
        if self.imatrix_tokens and (self.quant or CARRY).upper() == CARRY:
            return ["an importance matrix (imatrix_tokens > 0) needs a quantization type (one of llama.cpp's)"]
        return []


MODEL = Input("model", "A Hugging Face directory, a .gguf file or 'default'.", kind="model", argument=True)
TEXT = Input("text", "Text for the parity check and the importance matrix (default: the bundled corpus).",
             required=False)


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
    check_output_file(out)


@stage(STAGE, version=STAGE_VERSION, config=GGUFExportConfig, inputs=(MODEL, TEXT), output="file",
       command=("export", "gguf"))
def run(inputs: dict[str, str | None], out: Path, config: GGUFExportConfig, log: Log, progress: Progress | None
        ) -> Manifest:
    """Export ``inputs["model"]`` to the verified GGUF file ``out`` (see the module docstring)."""
    # numpy, gguf-py, transformers and llama.cpp: heavy, loaded by an exporting process only
    from supertiny.stages.export.carry import load_carried
    from supertiny.stages.export.gguf_writer import Source, quantize, write

    model = inputs["model"]
    assert model is not None
    _check_out(out)
    kind, src = resolve(model)
    info = describe(model).to_dict()  # also rejects unsupported architectures, before any slow work
    carried = load_carried(src) if kind == "hf" else None
    quant = (config.quant.upper() if config.quant else None) or (CARRY if carried else None)
    if quant == CARRY and carried is None:
        raise InvalidInputError(f"{model} stores no quantization codes to carry (make it with `supertiny quantize`)")
    text = _text(inputs["text"]) if config.verify or config.imatrix_tokens else None  # a wrong path fails fast
    run = model_run(STAGE, STAGE_VERSION, out, model, {**settings(config, text=inputs["text"]), "quant": quant},
                    single_file=True, info=info)
    if carried is not None and quant != CARRY:
        run.note(f"the checkpoint's {carried.scheme['name']} codes are not carried: llama.cpp quantizes "
                 f"its dequantized weights to {quant or config.dtype}")
    # A GGUF source is read through the dequantized torch model; a HF directory streams
    # from its safetensors, and its torch model is loaded only to verify, after writing.
    lm = load_model(model) if kind == "gguf" else None
    cfg, tokenizer, spec = _architecture(lm, src, run.notes)
    run.lap("load")
    with run:
        raw, quantized = run.temp("raw"), run.temp("quant")
        requantize = quant not in (None, CARRY)
        final = quantized if requantize else raw
        log(f"writing {config.dtype} GGUF ({spec.gguf_arch} graph)")
        with run.step("write"):
            n_tensors = write(raw, Source(kind, src, lm), cfg, spec, tokenizer, config.dtype, config.pre, run.notes,
                              progress, carried if quant == CARRY else None)
        imatrix = None
        if requantize and config.imatrix_tokens:
            log(f"collecting an importance matrix on {config.imatrix_tokens} tokens")
            with run.step("imatrix"):
                lm = lm or load_model(model)
                imatrix, calibration = _imatrix(lm, spec, text, config)
            run.note(calibration)
        if requantize:
            assert quant is not None
            log(f"quantizing to {quant} with llama.cpp")
            with run.step("quantize"):
                native_log = quantize(raw, quantized, quant, config.threads, imatrix)
            if imatrix:  # llama.cpp says how many entries it took; record it rather than assume
                used = [ln.strip() for ln in native_log if "importance matrix" in ln]
                run.note("llama.cpp: " + (used[0] if used else "did not report using the importance matrix"))
            raw.unlink()
        summary = quant_summary(final, quant)
        _note_fallbacks(run, summary, quant)
        parity: dict[str, Any] = {"skipped": "verification turned off (--no-verify)"}
        if config.verify:
            log(f"checking the export against PyTorch on {config.verify_tokens} tokens")
            with run.step("verify"):
                parity = _verify(final, lm or load_model(model), text, config,
                                 strict=quant is None and config.dtype != "bf16")
            if not parity["passed"]:
                raise ExportVerificationError(f"the GGUF export does not match the source: {describe_failure(parity)}")
        manifest = run.install(final, quality=parity, details={"tensors": n_tensors, **summary})
    log(f"wrote {out} ({manifest.bytes:,} bytes) and {manifest_path(out).name}")
    return manifest


def _text(path: str | None) -> str:
    return read_text(path or default_corpus_path())


def _architecture(lm: Any, src: Path, notes: list[str]) -> tuple[Any, Any, Any]:
    """The source's config, tokenizer and architecture row (the graph llama.cpp will run)."""

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
    return cfg, tokenizer, spec


def _note_fallbacks(run: Any, summary: dict[str, Any], quant: str | None) -> None:
    fallbacks = summary.get("k_quant_fallbacks")
    if fallbacks and fallbacks["count"]:
        run.note(f"{fallbacks['count']} of {fallbacks['of_matrices']} matrices fell back from {quant} to "
                 f"{', '.join(f'{k} x{v}' for k, v in fallbacks['types'].items())}: row widths "
                 f"{fallbacks['row_widths']} are not multiples of {K_QUANT_BLOCK}")


def export_gguf(model: str | os.PathLike[str], out: str | os.PathLike[str], config: GGUFExportConfig | None = None,
                log: Log | None = None, progress: Progress | None = None,
                text: str | os.PathLike[str] | None = None) -> Manifest:
    """Export MODEL to a verified GGUF file.

    Args:
        model: a Hugging Face directory, a ``.gguf`` file or ``"default"``.
        out: the ``.gguf`` file to write (replaced only once the new one passed).
        config: :class:`GGUFExportConfig`.
        log: receives one line per phase; progress: called with (tensors written, tensors in all).
        text: the parity check's (and importance matrix's) text file (default: the bundled corpus).

    Returns:
        The :class:`~supertiny.manifest.Manifest`, also written to ``OUT.supertiny.json``:
        ``quality`` is the parity check, ``details`` the tensor count and types, bits
        per weight and K-quant fallbacks.

    Raises:
        UserError: bad input (path, options, unsupported architecture or tokenizer).
        ExportVerificationError: the written file does not match the source model.
    """
    return get(STAGE).call({"model": model, "text": text}, out, config or GGUFExportConfig(), log, progress)


def _imatrix(lm: Any, spec: Any, text: str | None, config: GGUFExportConfig) -> tuple[dict[str, Any], str]:
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


def _verify(path: Path, lm: Any, text: str | None, config: GGUFExportConfig,
            strict: bool) -> dict[str, Any]:

    assert text is not None
    engine = LlamaCppEngine(path, n_ctx=max(config.verify_tokens, 128), n_threads=config.threads,
                            logits_all=True)
    return check_export(
        lm.model, lm.tokenizer, engine.logits, lambda s: engine.tokenize(s, add_special=True),
        engine.generate, text, tokens=config.verify_tokens, strict=strict,
    )
