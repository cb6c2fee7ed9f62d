"""`supertiny export gguf` (F16) against llama.cpp's own converter, on the same weights.

llama.cpp's ``convert_hf_to_gguf.py`` reads a Hugging Face directory, so the default
teacher is first saved as one (``load_model("default")`` + ``save_pretrained``, float32).
Every command then runs in a fresh process, alternated ``--repeat`` times so machine
noise hits all of them, and the table shows the minimum wall time of each:

  - the converter: ``python CONVERTER HF_DIR --outtype f16``,
  - ``supertiny export gguf HF_DIR`` and ``supertiny export gguf default`` (the GGUF
    teacher itself), each without (``--no-verify``) and with the parity check.

The converter is not part of supertiny: pass the path of a llama.cpp checkout's
``convert_hf_to_gguf.py`` (its ``gguf-py`` must match the installed ``gguf`` or sit
next to it, as in a checkout).

Run:  .venv/bin/python benchmarks/gguf_export_vs_converter.py PATH/convert_hf_to_gguf.py [--repeat 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from _common import start, teacher_hf_copy


def timed_run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("converter", help="llama.cpp's convert_hf_to_gguf.py")
    ap.add_argument("--repeat", type=int, default=2, help="alternated runs per command (the minimum is shown)")
    args, work = start(ap, "supertiny-bench-", keep_help="folder to keep the HF copy and the artifacts in")
    hf_dir = teacher_hf_copy(work)
    cli = [sys.executable, "-m", "supertiny", "export", "gguf"]
    commands = {
        "llama.cpp convert_hf_to_gguf.py (HF copy)":
            [sys.executable, args.converter, str(hf_dir), "--outtype", "f16", "--outfile", str(work / "conv.gguf")],
        "supertiny export gguf HF copy --no-verify": [*cli, str(hf_dir), str(work / "hf.gguf"), "--no-verify"],
        "supertiny export gguf default --no-verify": [*cli, "default", str(work / "gg.gguf"), "--no-verify"],
        "supertiny export gguf HF copy (parity check)": [*cli, str(hf_dir), str(work / "hf-v.gguf")],
        "supertiny export gguf default (parity check)": [*cli, "default", str(work / "gg-v.gguf")],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(args.repeat):
        for name, cmd in commands.items():
            print(f"run {i + 1}/{args.repeat}: {name} ...", file=sys.stderr, flush=True)
            times[name].append(timed_run(cmd))
    base = min(next(iter(times.values())))
    width = max(map(len, times))
    print(f"\nF16 export of the default teacher, {os.cpu_count()} CPUs; wall seconds of a fresh process "
          f"(imports included), minimum of {args.repeat} alternated runs\n")
    print(f"{'command':<{width}} {'seconds':>8} {'x converter':>12}  runs")
    for name, ts in times.items():
        print(f"{name:<{width}} {min(ts):>8.1f} {min(ts) / base:>12.2f}  {', '.join(f'{t:.1f}' for t in ts)}")
    print(f"\nfiles in {work}")


if __name__ == "__main__":
    main()
