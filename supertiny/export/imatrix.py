"""Importance matrix for llama.cpp quantization, computed in PyTorch from calibration text.

llama.cpp's quantizers weigh each input column of a weight matrix by how large the
activations feeding it are (the mean of x² over calibration tokens), so columns
that matter keep more precision. llama.cpp's own ``llama-imatrix`` tool is not in
the Python bindings; the same statistic is collected here with forward hooks on the
source model's linear layers and handed to ``llama_model_quantize`` as its
null-terminated ``llama_model_imatrix_data`` array.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..archs import ArchSpec, tensor_name_map

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def collect_imatrix(
    model: PreTrainedModel, spec: ArchSpec, ids: Sequence[int], window: int = 512
) -> dict[str, np.ndarray]:
    """Mean squared input activation per column, for every quantizable matrix.

    Args:
        model: the source model (float weights).
        spec: its architecture row (for GGUF tensor names).
        ids: calibration tokens, read in windows of ``window`` tokens.

    Returns:
        GGUF tensor name -> float32 vector of the matrix's input width.
    """
    import torch

    names = tensor_name_map(spec, model.config.num_hidden_layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(gguf_name: str):
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[gguf_name] = sums.get(gguf_name, 0) + (x * x).sum(0)
            counts[gguf_name] = counts.get(gguf_name, 0) + x.shape[0]

        return hook

    tied = model.config.tie_word_embeddings
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or (tied and module is model.get_output_embeddings()):
            continue
        gguf_name = names.get_name(module_name + ".weight", try_suffixes=(".weight",))
        if gguf_name is not None:
            hooks.append(module.register_forward_pre_hook(hook_for(gguf_name)))
    try:
        with torch.inference_mode():
            for begin in range(0, len(ids), window):
                chunk = list(ids[begin : begin + window])
                if len(chunk) > 1:
                    model(input_ids=torch.tensor([chunk]))
    finally:
        for h in hooks:
            h.remove()
    return {name: (sums[name] / counts[name]).numpy().astype(np.float32) for name in sums}


class ImatrixArray:
    """The C array llama.cpp reads, and the buffers it points into (kept alive here)."""

    def __init__(self, data: dict[str, np.ndarray], struct_type: Any):
        self._names = [name.encode() for name in data]
        self._buffers = [np.ascontiguousarray(v, dtype=np.float32) for v in data.values()]
        self.array = (struct_type * (len(data) + 1))()
        for i, (name, buf) in enumerate(zip(self._names, self._buffers, strict=True)):
            self.array[i].name = name
            self.array[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            self.array[i].size = buf.size
        # the zero-filled last entry (name NULL) terminates the array

    def pointer(self, pointer_type: Any) -> Any:
        return ctypes.cast(self.array, pointer_type)
