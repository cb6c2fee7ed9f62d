"""Constrained decoding: a grammar masks the logits, so every reply is valid by construction.

The grammar → token-mask step is llguidance's (the Rust library llama.cpp can be built
with, ``LLAMA_LLGUIDANCE``, and one of vLLM's structured-output backends): it
builds its token trie from the model's own tokenizer (any Hugging Face fast tokenizer,
ours from a GGUF included) and computes a step's mask in 20-200 µs for a task's JSON schema
on a 49k vocabulary (``benchmarks/constrained_decoding.py`` prints the
cost per token), with no per-schema compile pass over the vocabulary.

A :class:`Grammar` is a compiled llguidance grammar (from a JSON schema or a regex); a
:class:`Constraint` is one reply's state: :meth:`Constraint.mask` sets the logits of
tokens the grammar forbids to ``-inf`` before the engine picks, :meth:`Constraint.accept`
advances it with the token picked. A reply ends when the grammar is complete (the
object's closing brace) or at a stop token the grammar allows then. Masking only removes
tokens: a greedy reply whose every token was allowed comes out unchanged.

Most steps need no mask: the engine picks as if free, and only when the grammar refuses
that token (:meth:`Constraint.allows`, a sub-microsecond check) does it compute the mask
and pick again. Greedy, that is exactly the masked argmax; sampling with temperature alone,
exactly the masked distribution (a refused draw is redrawn from the allowed tokens:
``p(t) + (1 - Z) p(t) / Z = p(t) / Z``); with top-k or top-p the mask comes first, since
their cut-offs differ once tokens are masked. :func:`~supertiny.runtime.engines.sampling.pick_token`
does this for the engines that pick in Python (torch, onnxruntime, the batched llama.cpp
engine, ONNX static batches); the single llama.cpp engine masks in llama-cpp-python's logits
processor, the greedy check first.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from supertiny.errors import InvalidInputError
from supertiny.tasks import Task, task_json_schema

# What a constrained JSON reply may put between its tokens: nothing, one space, or a line
# break and up to 8 spaces of indentation. A compact, a spaced (``json.dumps``) and a
# pretty-printed object all pass, but never a run of blanks: a small model held to a grammar
# that allows them fills its token budget with spaces and never closes the object.
JSON_OPTIONS = {"whitespace_flexible": True, "whitespace_pattern": r"(?: |\r?\n {0,8})?"}


@dataclass(frozen=True)
class Grammar:
    """A compiled llguidance grammar; ``source`` says what it was built from (for messages)."""

    text: str
    source: str

    @classmethod
    def from_json_schema(cls, schema: Mapping[str, Any]) -> Grammar:
        """The grammar of one JSON value valid for ``schema`` (an unsupported keyword is an error)."""
        from llguidance import LLMatcher

        try:
            text = LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
        except ValueError as exc:
            raise InvalidInputError(f"not a JSON schema: {exc}") from None
        return cls(text, "JSON schema").checked()

    @classmethod
    def from_regex(cls, regex: str) -> Grammar:
        """The grammar of a reply matching ``regex`` as a whole."""
        from llguidance import LLMatcher

        return cls(LLMatcher.grammar_from_regex(regex), f"regex {regex!r}").checked()

    def checked(self) -> Grammar:
        """This grammar, or a one-line error naming what llguidance could not compile."""
        from llguidance import LLMatcher

        is_error, messages = LLMatcher.validate_grammar_with_warnings(self.text)
        if is_error:
            why = " ".join(messages[0].split())  # llguidance's regex errors span lines
            raise InvalidInputError(f"cannot constrain decoding to this {self.source}: {why}")
        return self


@functools.lru_cache(maxsize=256)
def schema_grammar(schema: str) -> Grammar:
    """The grammar of a JSON schema given as JSON text, compiled once per distinct schema (a server's
    clients send the same one again and again; a task's records share most of theirs)."""
    return Grammar.from_json_schema(json.loads(schema))


def answer_grammar(task: Task) -> Callable[[str], Grammar]:
    """A record's input -> the grammar of ``task``'s answer to it (:func:`~supertiny.tasks.task_json_schema`:
    its extractive fields narrowed to the spans of that input)."""
    return lambda text: schema_grammar(json.dumps(task_json_schema(task, text)))


class Vocabulary:
    """An engine's tokenizer as llguidance sees it, built once per logits width (~0.5 s for 49k tokens)."""

    def __init__(self, tokenizer: Any, stop_ids: Sequence[int]):
        self.tokenizer, self.stop_ids = tokenizer, list(stop_ids)
        self._by_width: dict[int, Any] = {}
        self._lock = threading.Lock()

    def for_width(self, width: int) -> Any:
        """The llguidance tokenizer for logits rows of ``width`` (a padded vocabulary has extra ids)."""
        with self._lock:
            if width not in self._by_width:
                from llguidance.hf import from_tokenizer

                if not getattr(self.tokenizer, "is_fast", False):
                    raise InvalidInputError("constrained decoding needs a fast (Rust) tokenizer")
                eos = self.stop_ids or self.tokenizer.eos_token_id
                self._by_width[width] = from_tokenizer(self.tokenizer, n_vocab=width, eos_token=eos)
            return self._by_width[width]


class Constraint:
    """One reply held to ``grammar``: mask each row of logits, accept each token picked."""

    def __init__(self, grammar: Grammar, vocabulary: Vocabulary):
        self.grammar, self.vocabulary = grammar, vocabulary
        self._matcher: Any = None
        self._bits: np.ndarray | None = None

    def _start(self, width: int) -> None:
        from llguidance import LLMatcher

        self._matcher = LLMatcher(self.vocabulary.for_width(width), self.grammar.text, log_level=0)
        if self._matcher.is_error():
            raise InvalidInputError(f"cannot constrain decoding to this {self.grammar.source}: "
                                    f"{self._matcher.get_error()}")
        self._bits = np.full((width + 31) // 32, -1, dtype=np.int32)

    def allows(self, token: int, width: int) -> bool:
        """Whether the grammar allows ``token`` next (~0.5 µs: no mask is computed)."""
        if self._matcher is None:
            self._start(width)
        return self._matcher.validate_tokens([int(token)]) == 1

    def allowed(self, width: int) -> np.ndarray:
        """A boolean row of ``width``: the tokens the grammar allows next (~20-200 µs for a JSON schema on a
        49k vocabulary)."""
        if self._matcher is None:
            self._start(width)
        assert self._bits is not None
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little")[:width].astype(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` (one row) with every token the grammar forbids at ``-inf``, in place."""
        logits[~self.allowed(logits.shape[-1])] = -np.inf
        return logits

    def accept(self, token: int) -> None:
        """Advance past ``token``; a token the mask forbade is a bug in the engine, not the model's."""
        if not self._matcher.consume_token(int(token)):
            raise RuntimeError(f"constrained decoding: token {token} was not allowed ({self._matcher.get_error()})")

    @property
    def finished(self) -> bool:
        """The grammar is complete and allows nothing more (the reply ends here)."""
        return self._matcher is not None and self._matcher.is_stopped()


class HeldRows:
    """A ``transformers`` logits processor holding each row of a ``generate`` batch to its own constraint.

    Hugging Face's ``generate`` calls it once per step with the sequences so far and the next-token
    scores: it advances each row's constraint past the token the row took last step, then masks
    the row's scores. A row whose grammar is complete may only end (its stop ids). Rows are in
    ``generate``'s order (with ``num_return_sequences``, each prompt's copies one after another).
    Used by the torch engine's batched completion (``greedy``: a row whose argmax the grammar allows is
    left unmasked) and RL's group sampling (every row masked: a sample may be any allowed token).
    """

    def __init__(self, constraints: Sequence[Constraint | None], stop_ids: Sequence[int], greedy: bool = False):
        self.constraints, self.stop_ids, self.greedy = list(constraints), list(stop_ids), greedy
        self._started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        width = scores.shape[-1]
        for row, constraint in enumerate(self.constraints):
            if constraint is None:
                continue
            last = int(input_ids[row, -1])
            if self._started and last not in self.stop_ids and not constraint.finished:
                constraint.accept(last)
            if last in self.stop_ids and self._started or constraint.finished:
                allowed = np.zeros(width, dtype=bool)  # done (padding follows): only a stop id
                allowed[self.stop_ids] = True
            elif self.greedy and constraint.allows(int(scores[row].argmax()), width):
                continue  # the greedy pick is allowed: masking would not change it
            else:
                allowed = constraint.allowed(width)
            scores[row, ~torch.from_numpy(allowed).to(scores.device)] = -torch.inf
        self._started = True
        return scores
