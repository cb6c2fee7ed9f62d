"""What a runtime process sets up about itself before it loads anything.

A guard on the process environment, not a part of any engine: the CLI's ``serve``
and the bench's child processes call it before transformers is first imported.
"""

from __future__ import annotations

import os
import sys

from supertiny.errors import UserError
from supertiny.models import resolve


def keep_torch_out(model: str | os.PathLike[str], backend: str = "auto") -> bool:
    """Tell transformers not to import torch in this process when ``model`` runs without it.

    A process that serves or benchmarks a GGUF file or an ONNX export needs only the
    tokenizer from transformers, yet importing transformers imports torch when it is
    installed: ~220 MB of resident memory a device pays for nothing. Call this before
    transformers is first imported (the CLI's ``serve`` and the bench's child
    processes do); it returns whether torch was kept out.
    """
    try:
        kind, _ = resolve(model)
    except UserError:  # opening it will say what is wrong
        return False
    if kind == "hf" or backend == "torch" or "transformers" in sys.modules or "torch" in sys.modules:
        return False
    os.environ["USE_TORCH"] = "0"
    return True
