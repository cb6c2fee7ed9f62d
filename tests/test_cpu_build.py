"""The llama.cpp build arguments follow the CPU's flags (AVX-512 where present, AMX never),
and a loaded build's features are compared with the CPU's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from supertiny.runtime.engines.cpu_build import ALWAYS, build_report, cmake_args, cpu_flags, llama_features

ZEN4 = ("processor : 0\nflags : fpu sse4_2 avx f16c fma avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl "
        "avx512vbmi avx512_vnni avx512_bf16\n")
HASWELL = "processor : 0\nflags : fpu sse4_2 avx f16c fma avx2 bmi2\n"
SAPPHIRE = ZEN4.replace("avx512_bf16", "avx512_bf16 amx_tile amx_int8 amx_bf16 avx_vnni")
OLD = "processor : 0\nflags : fpu sse4_2 avx\n"
SYSTEM_INFO = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 0 | " \
              "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "


def on(args: list[str]) -> set[str]:
    return {a[2:].removesuffix("=ON") for a in args if a.endswith("=ON")}


def test_each_option_follows_the_cpu_flags_and_amx_is_never_asked():
    zen4 = cmake_args(cpu_flags(ZEN4))
    assert zen4[:2] == list(ALWAYS)
    assert {"GGML_AVX2", "GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_AVX512_VBMI"} <= on(zen4)
    assert "-DGGML_AVX_VNNI=OFF" in zen4
    haswell = cmake_args(cpu_flags(HASWELL))
    assert on(haswell) == {"GGML_SSE42", "GGML_AVX", "GGML_F16C", "GGML_FMA", "GGML_AVX2", "GGML_BMI2"}
    assert "-DGGML_AVX512=OFF" in haswell
    sapphire = cmake_args(cpu_flags(SAPPHIRE))
    assert "GGML_AVX_VNNI" in on(sapphire) and not any("AMX" in a for a in sapphire)
    old = cmake_args(cpu_flags(OLD))  # no AVX2: the portable defaults would not even run there
    assert "-DGGML_AVX2=OFF" in old and "-DGGML_FMA=OFF" in old and "GGML_AVX" in on(old)


def test_unknown_cpus_and_the_portable_switch_get_ggmls_portable_build():
    assert cmake_args(None) == list(ALWAYS) == cmake_args(cpu_flags(ZEN4), portable=True)
    assert cpu_flags("no flags line here\n") is None


def test_the_script_prints_one_line_of_arguments():
    script = Path(__file__).resolve().parents[1] / "supertiny" / "runtime" / "engines" / "cpu_build.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    assert out.startswith("-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF") and out.count("\n") == 1
    portable = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                              env={"SUPERTINY_PORTABLE": "1", "PATH": ""}).stdout
    assert portable.split() == list(ALWAYS)


def test_build_report_names_what_the_build_leaves_unused():
    assert llama_features(SYSTEM_INFO) >= {"AVX2", "FMA", "SSE3", "REPACK"} and "AVX512" not in llama_features(
        SYSTEM_INFO)
    report = build_report(SYSTEM_INFO, cpu_flags(ZEN4))
    assert report["unused_by_build"] == ["AVX512", "AVX512_BF16", "AVX512_VBMI", "AVX512_VNNI"]
    assert "AVX2" in report["features"] and "REPACK" not in report["features"]
    assert build_report(SYSTEM_INFO, cpu_flags(HASWELL))["unused_by_build"] == []
    assert build_report(SYSTEM_INFO, None)["unused_by_build"] == []
