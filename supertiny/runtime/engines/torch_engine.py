"""The PyTorch engine: a Hugging Face directory (or a dequantized GGUF) as the reference.

Not what a device runs; what every exported artifact is compared with. The decode
loop keeps transformers' KV cache between steps and samples with the same
:func:`~.sampling.pick_token` as the onnxruntime engine, so greedy outputs compare
token for token across backends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from supertiny.errors import InvalidInputError
from supertiny.models import load_model
from supertiny.runtime.engines.base import Engine, EngineOptions, register_engine
from supertiny.runtime.engines.constrain import Constraint, Grammar, HeldRows
from supertiny.runtime.engines.sampling import Sampling, pick_token
from supertiny.runtime.engines.text import text_chunks


@register_engine("torch", kinds=("hf", "gguf"), native=("hf",),
                 runs="Hugging Face directories and GGUF files")
class TorchEngine(Engine):
    """A causal LM in PyTorch.

    Args:
        path: a Hugging Face directory (safetensors) or a ``.gguf`` file.
        threads: torch intra-op threads (process-wide; default: torch's own choice).
        n_ctx: longest sequence (default: the model's ``max_position_embeddings``).
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, path: str | Path, threads: int | None = None, n_ctx: int | None = None,
                 dtype: str = "float32", device: str = "cpu"):
        import torch

        if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
            raise InvalidInputError(f"torch device {device!r} is not available here (torch {torch.__version__})")
        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path)
        self.lm = load_model(path, dtype=dtype)
        self.model = self.lm.model.to(device)
        self.device = device
        self.threads = torch.get_num_threads()
        self.n_ctx = n_ctx or int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)

    @classmethod
    def open(cls, path: Path, options: EngineOptions) -> TorchEngine:
        return cls(path, threads=options.threads, n_ctx=options.n_ctx, dtype=options.dtype, device=options.device)

    def _load_tokenizer(self) -> tuple[Any, str]:
        return self.lm.tokenizer, self.lm.info.tokenizer

    def _describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.lm.info.to_dict().items() if k != "tokenizer"}

    def _forward(self, ids: Sequence[int], past: Any = None) -> tuple[Any, Any]:
        import torch

        with torch.inference_mode():  # per call: a generator must not leave the mode on for its caller
            out = self.model(input_ids=torch.tensor([list(ids)], dtype=torch.long, device=self.device),
                             past_key_values=past, use_cache=True)
        return out.logits[0], out.past_key_values

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        if not ids:
            raise InvalidInputError("no tokens to run")
        return self._forward(ids)[0].float().cpu().numpy()

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling | None = None,
               stop_ids: Sequence[int] | None = None, constraint: Constraint | None = None) -> Iterator[int]:
        """Token ids one at a time with the KV cache; a stop id ends the stream unyielded."""
        sampling = sampling or Sampling()
        stop = set(stop_ids or ())
        if max_new_tokens <= 0:
            return
        budget = min(max_new_tokens, self.n_ctx - len(prompt_ids))
        rng = np.random.default_rng(sampling.seed)
        logits, past = self._forward(prompt_ids)
        for produced in range(budget):
            token = pick_token(logits[-1].float().cpu().numpy(), sampling, rng, constraint)
            if token in stop:
                return
            yield token
            if produced + 1 == budget or (constraint is not None and constraint.finished):
                return
            logits, past = self._forward([token], past)

    def complete_batch(self, prompts: Sequence[Any], max_tokens: int = 256,
                       grammars: Sequence[Grammar | None] | None = None) -> list[str]:
        """Greedy replies to several prompts at once: one left-padded batch through ``generate``.

        The fast path of task evaluation on CPU, where one sequence leaves the matrix units
        idle. Each reply ends at a stop id like :meth:`complete`'s; on near-tied logits a
        padded batch can pick another token than one sequence alone (float rounding).
        ``grammars``: per prompt, the grammar its reply is held to (None: free).
        """
        import torch
        from transformers import LogitsProcessorList

        ids = [self.prompt_ids(p) for p in prompts]
        budget = min(self.check_request(len(x), max_tokens) for x in ids)
        if budget == 0:
            return ["" for _ in ids]
        stop = self.stop_ids
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (stop[0] if stop else 0)
        width = max(len(x) for x in ids)
        rows = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        held = LogitsProcessorList([HeldRows([self.constraint(g) if g is not None else None for g in grammars],
                                             stop, greedy=True)]) if grammars else None
        with torch.inference_mode():
            out = self.model.generate(input_ids=rows, attention_mask=mask, max_new_tokens=budget, do_sample=False,
                                      temperature=None, top_p=None, top_k=None, eos_token_id=stop or None,
                                      pad_token_id=pad, logits_processor=held)
        texts = []
        for row in out[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in stop), len(row))
            texts.append("".join(c.text for c in text_chunks((t for t in row[:end]), self.tokenizer, budget)))
        return texts

    def close(self) -> None:
        self.__dict__.pop("model", None)
        self.__dict__.pop("lm", None)
