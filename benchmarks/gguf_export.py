"""GGUF export of the default teacher: time, peak memory, size, and quality per quantization.

One run, side by side:
  - exports (without the parity check, so timings are the export alone) from the
    GGUF teacher and from a float32 Hugging Face copy of it, each in a fresh process
    that reports its own peak RSS (VmHWM),
  - perplexity of each artifact in llama.cpp on the bundled text and its KL and
    top-1 agreement against the F16 export (the reference), same windows for all.

Run:  .venv/bin/python benchmarks/gguf_export.py [--tokens 2048] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from _common import start, teacher_hf_copy

IMATRIX = 4096  # calibration tokens for the +imx rows

EXPORT = """
import sys
from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf
src, out, dtype, quant, imatrix = sys.argv[1:6]
export_gguf(src, out, GGUFExportConfig(dtype=dtype, quant=quant or None, verify=False, imatrix_tokens=int(imatrix)))
# VmHWM is this process's own peak (ru_maxrss would include the parent's RSS at fork).
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])
"""


def run_child(args: list[str]) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of one export in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", EXPORT, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"export failed: {proc.stderr[-2000:]}")
    return seconds, int(proc.stdout.split()[-1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048, help="corpus tokens scored for quality")
    args, work = start(ap, "supertiny-bench-", keep_help="folder to keep the artifacts in")

    from supertiny import evaluate as ev
    from supertiny.gguf_file import GGUFFile
    from supertiny.gguf_tokenizer import tokenizer_from_gguf
    from supertiny.models import default_teacher_path
    from supertiny.runtime.engines.llamacpp import LlamaCppEngine

    hf_dir = teacher_hf_copy(work)
    hf_bytes = sum(f.stat().st_size for f in hf_dir.glob("*.safetensors"))
    teacher = default_teacher_path()

    # Importance matrices calibrate on the first IMATRIX tokens of the corpus; quality is
    # scored on its last --tokens tokens, so no artifact is graded on its calibration text.
    imx = str(IMATRIX)
    runs = [("default", "f16", "", "0"), ("default", "f16", "Q8_0", "0"), ("default", "f16", "Q4_K_M", "0"),
            ("default", "f16", "Q4_K_M", imx), ("default", "f16", "Q4_0", "0"), ("default", "f16", "Q4_0", imx),
            (str(hf_dir), "f16", "", "0"), (str(hf_dir), "f16", "Q4_K_M", "0")]
    rows = []
    for src, dtype, quant, imatrix in runs:
        label = f"{'gguf' if src == 'default' else 'hf'}->{quant or dtype.upper()}" + ("+imx" if imatrix != "0" else "")
        out = work / f"{label.replace('->', '-')}.gguf"
        print(f"exporting {label} ...", file=sys.stderr, flush=True)
        seconds, rss = run_child([src, str(out), dtype, quant, imatrix])
        rows.append({"label": label, "src": src, "path": out, "seconds": seconds, "rss": rss,
                     "bytes": out.stat().st_size, "bpw": out.stat().st_size * 8 / GGUFFile(out).n_parameters()})

    tokenizer, _ = tokenizer_from_gguf(GGUFFile(teacher))
    ids = ev.tokenize_text(tokenizer, ev.read_text(ev.default_corpus_path()))
    if len(ids) - args.tokens < IMATRIX:
        raise SystemExit(f"--tokens {args.tokens} would overlap the {IMATRIX} calibration tokens")
    ids = ids[-args.tokens:]
    reference = LlamaCppEngine(rows[0]["path"], n_ctx=512, logits_all=True)
    for row in rows:
        if row["src"] != "default":
            continue
        print(f"scoring {row['label']} ...", file=sys.stderr, flush=True)
        engine = LlamaCppEngine(row["path"], n_ctx=512, logits_all=True)
        a = ev.agreement(reference.logits, engine.logits, ids, window=512, stride=256)
        row.update(ppl=a.student.perplexity, kl=a.kl_mean, top1=a.top1_agreement)
        del engine

    print(f"\nDefault teacher ({teacher.name}, {teacher.stat().st_size / 1e6:.0f} MB; float32 HF copy "
          f"{hf_bytes / 1e6:.0f} MB), {os.cpu_count()} CPUs; quality on the last {len(ids)} corpus tokens vs the "
          f"F16 export; +imx: importance matrix from the first {IMATRIX} tokens\n")
    head = f"{'export':<18} {'seconds':>8} {'peak RSS MB':>12} {'RSS / HF ckpt':>14} {'size MB':>8} {'bits/w':>7} " \
           f"{'ppl':>8} {'KL vs F16':>10} {'top-1':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        quality = (f"{r['ppl']:>8.3f} {r['kl']:>10.4f} {r['top1']:>7.2%}" if "ppl" in r
                   else f"{'':>8} {'':>10} {'':>7}")
        print(f"{r['label']:<18} {r['seconds']:>8.1f} {r['rss'] / 1e6:>12.0f} {r['rss'] / hf_bytes:>14.2f} "
              f"{r['bytes'] / 1e6:>8.1f} {r['bpw']:>7.2f} {quality}")
    print(f"\nartifacts in {work}")


if __name__ == "__main__":
    main()
