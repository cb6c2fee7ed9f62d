"""What an artifact can run on, on this machine: backends, execution providers, torch dtypes, which
artifacts batch, and how many threads an engine gets.

The ground floor of the runtime: the tables the CLI offers and the target profiles check
(:mod:`supertiny.targets`), and the two decisions every engine user makes the same way —
:func:`batching` (one engine decoding many sequences, or one engine per request) and
:func:`threads_for` (the one thread policy). Imports nothing of supertiny but its errors.

>>> batching("gguf", "auto"), batching("onnx", "onnxruntime"), batching("hf", "torch")
('continuous', 'static', None)
>>> threads_for(3), threads_for(None, share=cores() + 1)
(3, 1)
"""

from __future__ import annotations

import os

BACKENDS = ("auto", "llama.cpp", "onnxruntime", "torch")  # the shipped engines, for CLI choices
# onnxruntime execution providers by the short name users type (the CLI's and the target
# schema's choices); DirectML covers Windows GPUs and NPUs, CUDA covers Jetson-class
# boards and small discrete GPUs.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "dml": "DmlExecutionProvider",
}
PROVIDER_ALIASES = {"directml": "dml"}  # accepted wherever a provider is, not offered as a choice
DTYPES = ("float32", "bfloat16", "float16")  # what the torch backend (and a loaded model) runs in

# Which artifacts one engine decodes several sequences of at once, on which backend:
# GGUF files continuously on llama.cpp (requests join the running batch between steps),
# optimum-graph ONNX exports in static batches on onnxruntime.
_BATCHING = {("gguf", "llama.cpp"): "continuous", ("onnx", "onnxruntime"): "static"}
_NATIVE = {"gguf": "llama.cpp", "onnx": "onnxruntime", "hf": "torch"}  # what backend "auto" means per kind


def batching(kind: str, backend: str) -> str | None:
    """How an artifact of ``kind`` (``gguf``, ``onnx``, ``hf``) opened on ``backend`` batches sequences:
    ``continuous``, ``static`` or None (one sequence per engine: serve it with several engines)."""
    name = _NATIVE.get(kind) if backend == "auto" else backend
    return _BATCHING.get((kind, name or ""))


def cores() -> int:
    """The CPU cores this process may use."""
    return os.cpu_count() or 1


def threads_for(requested: int | None = None, share: int = 1, cap: bool = False) -> int:
    """The threads of one engine: ``requested``, else this machine's cores shared among ``share`` engines
    (at least one each); with ``cap``, never more than the cores."""
    threads = requested if requested is not None else max(1, cores() // max(1, share))
    return min(threads, cores()) if cap else threads
