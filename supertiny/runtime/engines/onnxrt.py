"""The onnxruntime engine: run an exported causal LM with its KV cache.

Two graph layouts run here, both written by ``supertiny export onnx``:

* optimum's ``text-generation-with-past`` graph (``--format optimum``): inputs
  ``input_ids``, ``attention_mask``, ``position_ids`` and ``past_key_values.{i}.key/value``,
  outputs ``logits`` and ``present.{i}.key/value``; each step returns a new, longer cache.
* onnxruntime-genai's graph (``--format genai``): the same names without
  ``position_ids``, attention fused into ``GroupQueryAttention``, which can write the new
  keys and values into the cache in place. The engine then allocates the cache once per
  sequence and binds it as both the past input and the present output, so a decode step
  copies no cache at all (``genai_config.json``'s ``past_present_share_buffer``).

The generation loop is our own: the cache stays in onnxruntime's memory between steps
(I/O binding), so a decode step copies nothing but one row of logits out.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from supertiny.backends import PROVIDER_ALIASES, PROVIDERS, threads_for
from supertiny.errors import InvalidInputError, MissingExtraError, NotAModelError
from supertiny.models import ONNX_MODEL_FILE, describe_onnx
from supertiny.runtime.engines.base import Engine, EngineOptions, register_engine
from supertiny.runtime.engines.constrain import Constraint
from supertiny.runtime.engines.sampling import Sampling, pick_token

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_ORT_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError("the onnxruntime backend needs onnxruntime: pip install 'supertiny[onnx]'") from None
    return onnxruntime


def onnx_model_file(path: str | os.PathLike[str]) -> Path:
    """The ``model.onnx`` of an export directory (or the file itself)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / ONNX_MODEL_FILE
    if not p.is_file():
        raise NotAModelError(f"no {ONNX_MODEL_FILE} in {p.parent}; export one with `supertiny export onnx`")
    return p


@register_engine("onnxruntime", kinds=("onnx",), native=("onnx",),
                 runs="ONNX exports (make one with `supertiny export onnx`)")
class OnnxEngine(Engine):
    """An exported causal LM running in onnxruntime.

    Args:
        path: an export directory (``model.onnx`` inside) or the ``.onnx`` file.
        threads: intra-op threads (default: all cores).
        provider: ``cpu``, ``cuda`` or ``dml`` (the execution provider must be in the
            installed onnxruntime build).
        n_ctx: the longest sequence (prompt + generated) accepted; default the
            model's ``max_position_embeddings`` when ``config.json`` is present.

    Example::

        engine = OnnxEngine("out/", threads=2)
        engine.logits([1, 2, 3]).shape  # (3, vocab)
        list(engine.stream([1, 2, 3], max_new_tokens=8))
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, provider: str = "cpu",
                 n_ctx: int | None = None):
        ort = _ort()
        self.path = onnx_model_file(path)
        provider = PROVIDER_ALIASES.get(provider, provider)
        if provider not in PROVIDERS:
            raise InvalidInputError(f"unknown execution provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        ep = PROVIDERS[provider]
        if ep not in ort.get_available_providers():
            raise InvalidInputError(
                f"this onnxruntime build has no {ep} (available: {', '.join(ort.get_available_providers())}); "
                f"install the onnxruntime package built for it"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads_for(threads or None)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=[ep])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise NotAModelError(f"onnxruntime cannot load {self.path}: {str(exc).splitlines()[0]}") from None
        self.threads = opts.intra_op_num_threads
        self.provider = provider
        self._device = "cuda" if provider == "cuda" else "cpu"
        self._read_signature()
        self.n_ctx = n_ctx or self._config_context() or 4096

    @classmethod
    def open(cls, path: Path, options: EngineOptions) -> OnnxEngine:
        return cls(path, threads=options.threads, provider=options.provider, n_ctx=options.n_ctx)

    def _load_tokenizer(self) -> tuple[Any, str]:
        return load_tokenizer(self.path.parent), "tokenizer files of the export"

    def _describe(self) -> dict[str, Any]:
        return describe_onnx(self.path.parent).to_dict()

    @property
    def backend_label(self) -> str:
        return f"onnxruntime ({self.provider})"

    def _extra_stop_ids(self) -> list[int]:
        return stop_ids(self.tokenizer, self.path.parent)

    def close(self) -> None:
        self.__dict__.pop("session", None)

    def _read_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if "input_ids" not in inputs or "logits" not in outputs:
            raise NotAModelError(f"{self.path} is not a causal LM export (needs input_ids in, logits out)")
        past = sorted((int(m.group(1)), m.group(2), n) for n in inputs if (m := _PAST.match(n)))
        if not past:
            raise NotAModelError(
                f"{self.path} has no KV-cache inputs; export it with `supertiny export onnx` "
                "(optimum task text-generation-with-past)"
            )
        self.past_names = [n for _, _, n in past]
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        missing = [n for n in self.present_names if n not in outputs]
        if missing:
            raise NotAModelError(f"{self.path} lacks the KV-cache outputs {missing[:2]}")
        first = inputs[self.past_names[0]]
        self.n_layers = len(past) // 2
        self.kv_heads, self.head_dim = self._cache_shape(first.shape)
        self.kv_dtype = _ORT_NP.get(first.type)
        if self.kv_dtype is None:
            raise NotAModelError(f"{self.path}: unsupported KV-cache type {first.type}")
        self.has_mask = "attention_mask" in inputs
        search = self._json("genai_config.json").get("search", {})
        # In place needs the mask: GroupQueryAttention reads the valid length from it.
        self.shared_cache = bool(search.get("past_present_share_buffer")) and self.has_mask
        self.has_positions = "position_ids" in inputs
        logits_type = next(o.type for o in self.session.get_outputs() if o.name == "logits")
        vocab = next(o.shape[-1] for o in self.session.get_outputs() if o.name == "logits")
        self.n_vocab = int(vocab) if isinstance(vocab, int) else None
        self.logits_dtype = _ORT_NP.get(logits_type, np.float32)

    def _json(self, name: str) -> dict[str, Any]:
        f = self.path.parent / name
        if not f.is_file():
            return {}
        try:
            data = json.loads(f.read_text())
        except (ValueError, OSError):
            return {}
        return data if isinstance(data, dict) else {}

    def _cache_shape(self, shape: Sequence[Any]) -> tuple[int, int]:
        """KV heads and head size; genai graphs leave the head size symbolic, so ask its config."""
        heads, size = shape[1], shape[3]
        if isinstance(heads, int) and isinstance(size, int):
            return heads, size
        decoder = self._json("genai_config.json").get("model", {}).get("decoder", {})
        hf = self._json("config.json")
        if not isinstance(heads, int):
            heads = decoder.get("num_key_value_heads") or hf.get("num_key_value_heads")
        if not isinstance(size, int):
            size = decoder.get("head_size") or hf.get("head_dim") or (
                hf["hidden_size"] // hf["num_attention_heads"] if "hidden_size" in hf and "num_attention_heads" in hf
                else None)
        if not isinstance(heads, int) or not isinstance(size, int):
            raise NotAModelError(f"{self.path}: the KV-cache shape is symbolic and no config.json or "
                                 "genai_config.json names it")
        return heads, size

    def _config_context(self) -> int | None:
        try:
            return int(self._json("config.json").get("max_position_embeddings") or 0) or None
        except (ValueError, TypeError):
            return None

    # -- one forward pass (also how :mod:`.onnx_batch` prefills each row of a batch) -------

    def empty_past(self, capacity: int) -> list[Any]:
        """A cache for a sequence of up to ``capacity`` tokens (empty unless shared in place)."""
        ort = _ort()
        length = capacity if self.shared_cache else 0
        return [ort.OrtValue.ortvalue_from_shape_and_type((1, self.kv_heads, length, self.head_dim), self.kv_dtype,
                                                          self._device, 0) for _ in self.past_names]

    def forward(self, ids: Sequence[int], past: list[Any], past_len: int) -> tuple[np.ndarray, list[Any]]:
        """Feed ``ids`` after ``past_len`` cached tokens; logits ``[len(ids), vocab]`` and the new cache."""
        n = len(ids)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        if self.has_mask:
            binding.bind_cpu_input("attention_mask", np.ones((1, past_len + n), dtype=np.int64))
        if self.has_positions:
            binding.bind_cpu_input("position_ids", np.arange(past_len, past_len + n, dtype=np.int64)[None, :])
        for name, value in zip(self.past_names, past, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name, value in zip(self.present_names, past, strict=True):
            if self.shared_cache:  # the new keys/values land in the same buffer
                binding.bind_ortvalue_output(name, value)
            else:
                binding.bind_output(name, self._device)
        self.session.run_with_iobinding(binding)
        out = binding.get_outputs()
        return out[0].numpy()[0], past if self.shared_cache else list(out[1:])

    # -- what evaluation and generation use ---------------------------------------------

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Next-token logits for every position of one window: ``[len(ids), vocab]``."""
        self.check_length(len(ids))
        return self.forward(list(ids), self.empty_past(len(ids)), 0)[0].astype(np.float32, copy=False)

    def logits_stepwise(self, ids: Sequence[int], prefill: int) -> np.ndarray:
        """Like :meth:`logits`, but ``ids[prefill:]`` go through the KV cache one at a time.

        Equal to :meth:`logits` up to float rounding when the cache is wired right.
        """
        self.check_length(len(ids))
        if not 0 < prefill <= len(ids):
            raise InvalidInputError(f"prefill must be in 1..{len(ids)}, got {prefill}")
        rows, past = self.forward(list(ids[:prefill]), self.empty_past(len(ids)), 0)
        out = [rows]
        for i in range(prefill, len(ids)):
            row, past = self.forward([ids[i]], past, i)
            out.append(row)
        return np.concatenate(out).astype(np.float32, copy=False)

    def check_length(self, n: int) -> None:
        """Refuse a window of ``n`` tokens that is empty or longer than the context (static batches check
        each prompt with it too)."""
        if n == 0:
            raise InvalidInputError("no tokens to run")
        if n > self.n_ctx:
            raise InvalidInputError(f"{n} tokens exceed the context of {self.n_ctx}")

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling | None = None,
               stop_ids: Sequence[int] | None = None, constraint: Constraint | None = None) -> Iterator[int]:
        """Generate token ids one at a time; the stop token itself is not yielded.

        Args:
            prompt_ids: the prompt (chat template already applied).
            max_new_tokens: most tokens to produce (the context may end it sooner).
            sampling: :class:`Sampling` (greedy by default).
            stop_ids: tokens that end generation (default: none; :meth:`generate` passes eos).
        """
        sampling = sampling or Sampling()
        stop = set(stop_ids or ())
        if max_new_tokens <= 0:
            return
        ids = list(prompt_ids)
        self.check_length(len(ids))
        budget = min(max_new_tokens, self.n_ctx - len(ids))
        rng = np.random.default_rng(sampling.seed)
        capacity = len(ids) + budget
        logits, past = self.forward(ids, self.empty_past(capacity), 0)
        length = len(ids)
        step = self._in_place_step(past, length, capacity, logits.shape[-1]) if self.shared_cache else None
        for produced in range(budget):
            token = pick_token(logits[-1], sampling, rng, constraint)
            if token in stop:
                return
            yield token
            if produced + 1 == budget or (constraint is not None and constraint.finished):
                return
            if step is not None:
                logits = step(token)
            else:
                logits, past = self.forward([token], past, length)
            length += 1

    def _in_place_step(self, past: list[Any], length: int, capacity: int,
                       vocab: int) -> Any:
        """A decode step for a cache written in place: one I/O binding for the whole
        sequence, so a step rebinds only the new token, the mask and the logits buffer
        (binding 2 x layers cache tensors per step cost ~0.2 ms of a ~10 ms step, the
        outputs list another ~0.1 ms)."""
        binding = self.session.io_binding()
        for name, value in zip(self.past_names, past, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(self.present_names, past, strict=True):
            binding.bind_ortvalue_output(name, value)
        out = np.empty((1, 1, vocab), dtype=self.logits_dtype)  # onnxruntime writes the logits here
        binding.bind_output("logits", "cpu", 0, self.logits_dtype, list(out.shape), out.ctypes.data)
        token_ids = np.zeros((1, 1), dtype=np.int64)
        mask = np.ones((1, capacity), dtype=np.int64)
        position = np.zeros((1, 1), dtype=np.int64)
        state = {"length": length}

        def step(token: int) -> np.ndarray:
            n = state["length"]
            token_ids[0, 0], position[0, 0] = token, n
            binding.bind_cpu_input("input_ids", token_ids)
            binding.bind_cpu_input("attention_mask", mask[:, : n + 1])
            if self.has_positions:
                binding.bind_cpu_input("position_ids", position)
            self.session.run_with_iobinding(binding)
            state["length"] = n + 1
            return out[0]

        return step


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The tokenizer saved next to an export (``trust_remote_code`` off)."""
    from transformers import AutoTokenizer

    d = Path(path).expanduser()
    d = d if d.is_dir() else d.parent
    try:
        return AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise NotAModelError(f"no usable tokenizer in {d}: {str(exc).splitlines()[0]}") from None


def stop_ids(tokenizer: Any, directory: Path) -> list[int]:
    """The ids that end a reply: the tokenizer's eos and generation_config's eos list."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gc = directory / "generation_config.json"
    if gc.is_file():
        with contextlib.suppress(ValueError, OSError):
            eos = json.loads(gc.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(i for i in ids if isinstance(i, int))
