"""The process guard: a process that runs a GGUF file never imports torch."""

from __future__ import annotations

import subprocess
import sys


def test_a_gguf_process_keeps_torch_out(tiny_artifacts):
    code = ("import sys; from supertiny.runtime.engines.process import keep_torch_out; "
            "from supertiny.runtime.engines.base import open_engine; "
            "print(keep_torch_out(sys.argv[1])); e = open_engine(sys.argv[1], n_ctx=64); "
            "print(e.complete('Alice', max_tokens=3, ignore_eos=True).completion_tokens, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_artifacts["llama.cpp"])], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "3", "False"]
    out = subprocess.run([sys.executable, "-c", code.split(";")[0] + "; from supertiny.runtime.engines.process import "
                          "keep_torch_out; print(keep_torch_out(sys.argv[1]))", str(tiny_artifacts["torch"])],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]  # a Hugging Face directory runs in torch
