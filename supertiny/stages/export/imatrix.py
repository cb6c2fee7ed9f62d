"""Importance matrix for llama.cpp quantization, computed in PyTorch from calibration text.

llama.cpp's quantizers weigh each input column of a weight matrix by how large the
activations feeding it are (the mean of x² over calibration tokens), so columns
that matter keep more precision. llama.cpp's own ``llama-imatrix`` tool is not in
the Python bindings; the same statistic is collected here with forward hooks on the
source model's linear layers (a statistic of the shared calibration pass,
:func:`supertiny.stages.calibration.calibrate`) and handed to ``llama_model_quantize`` as its
null-terminated ``llama_model_imatrix_data`` array.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from supertiny.archs import ArchSpec, Layout, shape, tensor_name_map
from supertiny.readers import token_windows
from supertiny.stages.calibration import Statistic, calibrate

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class ImatrixStatistic(Statistic):
    """Sum and count of squared input activations per column of every quantizable matrix
    (each layer's attention and MLP matrices, and an untied output layer), keyed by GGUF
    tensor name; :meth:`finish` returns their means."""

    def __init__(self, spec: ArchSpec):
        self.spec = spec  # names the tensors (the GGUF graph the file is written as)
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def attach(self, model: Any, layout: Layout) -> list[Any]:
        s = shape(model.config)
        names = tensor_name_map(self.spec, s.layers)
        paths = [layout.path(role, bid) for bid in range(s.layers) for role in Layout.LINEARS]
        if not s.tied:  # a tied output layer is the embedding table: the file has no output matrix
            paths.append(layout.path("lm_head"))
        sums, counts = self.sums, self.counts

        def hook_for(gguf_name: str):
            def hook(_module: Any, args: tuple[Any, ...]) -> None:
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                sums[gguf_name] = sums.get(gguf_name, 0) + (x * x).sum(0)
                counts[gguf_name] = counts.get(gguf_name, 0) + x.shape[0]

            return hook

        handles = []
        for path in paths:
            gguf_name = names.get_name(path + ".weight", try_suffixes=(".weight",))
            if gguf_name is not None:
                handles.append(model.get_submodule(path).register_forward_pre_hook(hook_for(gguf_name)))
        return handles

    def finish(self) -> dict[str, np.ndarray]:
        return {name: (self.sums[name] / self.counts[name]).numpy().astype(np.float32) for name in self.sums}


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
    # a last window of a single token is left out
    (data,) = calibrate(model, token_windows(ids, window, min_len=2), [ImatrixStatistic(spec)])
    return data


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
