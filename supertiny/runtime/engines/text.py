"""The text layer every engine shares: token ids in, text chunks out.

Incremental detokenization that never splits a UTF-8 character, stop strings held
back until they can no longer match, cancellation and the finish reason. It knows
nothing of backends: :meth:`supertiny.runtime.engines.base.Engine.stream_text` feeds it
the token ids of a backend's decode loop, so replies read the same on every backend.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass
class Chunk:
    """A piece of streamed text; the last chunk of a reply carries ``finish_reason``."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Completion:
    """A whole reply with its token counts and timings (seconds from the call)."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    ttft_s: float | None
    total_s: float

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @classmethod
    def from_chunks(cls, chunks: Sequence[Chunk], prompt_tokens: int, ttft_s: float | None,
                    total_s: float) -> Completion:
        """A reply put together from its streamed chunks (the last finish reason wins)."""
        reason = next((c.finish_reason for c in reversed(chunks) if c.finish_reason), "length")
        return cls("".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids], prompt_tokens,
                   reason, ttft_s, total_s)


class IncrementalDetokenizer:
    """Text of a growing token sequence, emitted only once it is final.

    Byte-level tokens can end inside a UTF-8 character, and SentencePiece tokens
    change the text before them (a leading space). So the new text is the decoded
    tail past the last emitted point, decoded together with a few tokens before it,
    and held back while it ends in U+FFFD (an unfinished character).
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # tokens before this only give context
        self.read = 0  # text of ids[prefix:read] was already emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def add(self, token: int) -> str:
        """Append one token; returns the text that became final (often ``""``)."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (a reply that ends inside a character)."""
        before = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(before):]


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string in ``text`` begins, or None."""
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could still be the start of a stop string."""
    keep = 0
    for s in stops:
        for j in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:j]):
                keep = j
                break
    return keep


class TextStream:
    """The text layer fed one token at a time (push), for decode loops that run many
    sequences at once; :func:`text_chunks` is the same thing pulled from an iterator.

    :meth:`add` returns a chunk when text became final (the last one, with a finish
    reason, when a stop string matched or ``cancel`` is set), :meth:`end` the final
    chunk when the tokens ran out (eos or the budget).
    """

    def __init__(self, tokenizer: Any, budget: int, stop: Sequence[str] = (),
                 cancel: threading.Event | None = None):
        self.stops = [s for s in stop if s]
        self.detok = IncrementalDetokenizer(tokenizer)
        self.budget, self.cancel = budget, cancel
        self.pending, self.pending_ids, self.produced = "", [], 0
        self.finished = False

    def add(self, token: int) -> Chunk | None:
        """One more token; the chunk of text it made final, if any."""
        self.produced += 1
        self.pending += self.detok.add(token)
        self.pending_ids.append(token)
        cut = find_stop(self.pending, self.stops)
        if cut is not None:
            self.finished = True
            return Chunk(self.pending[:cut], self.pending_ids, "stop")
        if self.cancel is not None and self.cancel.is_set():
            self.finished = True
            return Chunk(self.pending, self.pending_ids, "cancelled")
        keep = held_back(self.pending, self.stops)
        if len(self.pending) > keep:
            chunk = Chunk(self.pending[: len(self.pending) - keep], self.pending_ids)
            self.pending, self.pending_ids = self.pending[len(self.pending) - keep:], []
            return chunk
        return None

    def end(self) -> Chunk:
        """The last chunk once no token follows: ``length`` at the budget, else ``stop`` (eos)."""
        self.finished = True
        text = self.pending + self.detok.flush()
        return Chunk(text, self.pending_ids, "length" if self.produced >= self.budget else "stop")


def text_chunks(tokens: Iterator[int], tokenizer: Any, budget: int, stop: Sequence[str] = (),
                cancel: threading.Event | None = None) -> Iterator[Chunk]:
    """Chunks of text from a stream of token ids; the last chunk has the finish reason.

    ``budget`` is the most tokens ``tokens`` yields: a stream that ends at the budget
    finishes with ``length``, one that ends before it (eos) with ``stop``. A stop
    string ends the reply (``stop``) and is cut from the text; ``cancel`` ends it
    after the current token (``cancelled``). ``tokens`` is closed when the reply ends
    early, so the backend stops decoding.
    """
    stream = TextStream(tokenizer, budget, stop, cancel)
    try:
        for token in tokens:
            chunk = stream.add(token)
            if chunk is not None:
                yield chunk
                if stream.finished:
                    return
    finally:
        tokens.close()  # type: ignore[attr-defined]
    yield stream.end()
