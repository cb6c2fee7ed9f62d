"""Which x86 instruction sets llama.cpp is built for, and which this CPU has.

The setup builds llama.cpp from source, and its CPU kernels use exactly the instruction
sets they were compiled for. ``-march=native`` crashed here in llama.cpp's AMX code
(``shared/design/ENVIRONMENT.md``); the "portable" build (``GGML_NATIVE=OFF``) stops at
AVX2 and leaves AVX-512 unused on CPUs that have it. So the setup asks this file, which
turns each of ggml's instruction-set options on exactly when ``/proc/cpuinfo`` lists
every flag it needs, AMX never:

    python supertiny/runtime/engines/cpu_build.py            # the CMAKE_ARGS for this machine
    SUPERTINY_PORTABLE=1 python supertiny/runtime/engines/cpu_build.py   # AVX2 level, for any x86-64 CPU since 2013

On this project's 2-core VM (AVX-512 F/BW/VL/VNNI/BF16/VBMI), against the AVX2 build with
flash attention on in both: 8 decoding streams of BF16 1.49x faster (295.8 vs 199.2 tok/s)
and of Q4_0 1.10x (360.6 vs 327.2), single streams within noise
(``benchmarks/batched_decode.py --steps``); a 512-token prefill of Q8_0 1.62x (624 vs 386
tok/s) and of Q4_0 1.26x (``benchmarks/prefill.py``; issue 13's note). A build made here
must not be copied to a CPU that lacks what it was built for (it would stop with an
illegal instruction); the portable switch is for that case.

At run time :func:`build_report` compares the loaded llama.cpp's features with the CPU's,
so ``supertiny bench`` can say when the build leaves speed unused.

Standard library only: the Makefile runs it before anything is installed.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ALWAYS = ("-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF")

# ggml's CMake option -> the /proc/cpuinfo flags it needs (options left out stay at ggml's default)
OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_F16C": ("f16c",),
    "GGML_FMA": ("fma",),
    "GGML_AVX2": ("avx2",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw", "avx512vbmi"),
    "GGML_AVX512_VNNI": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw", "avx512_vnni"),
    "GGML_AVX512_BF16": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw", "avx512_bf16"),
}
# llama.cpp's system-info names (llama_print_system_info) for the same options
SYSTEM_INFO_NAMES = {"GGML_AVX": "AVX", "GGML_F16C": "F16C", "GGML_FMA": "FMA",
                     "GGML_AVX2": "AVX2", "GGML_BMI2": "BMI2", "GGML_AVX_VNNI": "AVX_VNNI",
                     "GGML_AVX512": "AVX512", "GGML_AVX512_VBMI": "AVX512_VBMI",
                     "GGML_AVX512_VNNI": "AVX512_VNNI", "GGML_AVX512_BF16": "AVX512_BF16"}


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The instruction-set flags of this CPU (Linux x86-64), None where they cannot be read."""
    if cpuinfo is None:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return None
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def cmake_args(flags: set[str] | None, portable: bool = False) -> list[str]:
    """CMAKE_ARGS for llama-cpp-python: each option on exactly when ``flags`` has what it needs.

    Unknown flags (not Linux x86-64) or ``portable``: ggml's own portable defaults (AVX2 level).
    """
    if flags is None or portable:
        return list(ALWAYS)
    return [*ALWAYS, *(f"-D{option}={'ON' if set(needs) <= flags else 'OFF'}" for option, needs in OPTIONS.items())]


def llama_features(system_info: str) -> set[str]:
    """The CPU features a llama.cpp build reports (``"AVX2 = 1 | AVX512 = 0 | ..."`` -> {"AVX2"})."""
    found = set()
    for part in system_info.replace("CPU :", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() == "1":
            found.add(name.strip())
    return found


def build_report(system_info: str, flags: set[str] | None) -> dict[str, object]:
    """The loaded build's instruction sets, and those this CPU has that the build does not use."""
    built = llama_features(system_info)
    have = {name for option, name in SYSTEM_INFO_NAMES.items() if flags is not None and set(OPTIONS[option]) <= flags}
    unused = sorted(have - built) if flags is not None else []
    return {"features": sorted(built & set(SYSTEM_INFO_NAMES.values())), "unused_by_build": unused}


def main() -> None:
    portable = os.environ.get("SUPERTINY_PORTABLE", "") not in ("", "0")
    sys.stdout.write(" ".join(cmake_args(cpu_flags(), portable)) + "\n")


if __name__ == "__main__":
    main()
