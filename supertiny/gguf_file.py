"""Reading GGUF files safely: validation, metadata and the tokenizer they carry.

Everything here goes through gguf-py (the ``gguf`` package, llama.cpp's own Python
reader), so a file is checked before any native code (transformers' dequantizer,
llama.cpp) sees it: magic, version, every key/value, every tensor's type and that
its bytes lie inside the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidGGUFError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"

# llama.cpp's pre-tokenizer regexes, keyed by ``tokenizer.ggml.pre``. llama.cpp splits
# the text with each regex in turn (matched pieces and the gaps between them both
# become pieces), then runs byte-level BPE on each piece; a HF ``Split`` per regex
# followed by ``ByteLevel(use_regex=False)`` does the same. Facts from llama.cpp's
# llama-vocab.cpp; extend the table to support another pre-tokenizer.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class PreTokenizer:
    """One row of the pre-tokenizer table, with llama.cpp's per-type defaults."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is itself a token is not merged (llama3)
    add_bos: bool = False  # default when the file has no tokenizer.ggml.add_bos_token


def _rows(names: str, **row) -> dict[str, PreTokenizer]:
    return {name: PreTokenizer(**row) for name in names.split()}


PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **_rows("gpt-2 phi-2 mpt olmo jais exaone4", regexes=(_GPT2,)),
    **_rows("starcoder refact codeshell exaone minerva-7b smollm command-r", regexes=(r"\p{N}", _GPT2)),
    **_rows("llama3 llama-v3 llama-bpe falcon3 pixtral lfm2", regexes=(_LLAMA3,), ignore_merges=True, add_bos=True),
    **_rows("dbrx smaug-bpe", regexes=(_LLAMA3,)),
    **_rows("qwen2 deepseek-r1-qwen kormo stablelm2 megrez", regexes=(_QWEN2,)),
    # What llama.cpp uses when a file names no pre-tokenizer.
    **_rows("default", regexes=(r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
}

# gguf token types (llama.cpp's llama_token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


def _reader_class():
    """gguf-py's reader, parsing from a plain ndarray view of its memory map.

    gguf-py slices a ``np.memmap`` once per metadata item; each slice runs memmap's
    ``__array_finalize__``, which made parsing the 49k-token vocabulary of the default
    teacher take ~5 s. A plain ndarray view over the same mapping parses it in ~2 s,
    with the same values and no copy. (``gguf`` is pinned; this overrides the one
    method that starts parsing.)
    """
    import gguf
    import numpy as np

    class _Reader(gguf.GGUFReader):
        def _build_fields(self, offs: int, count: int) -> int:
            self.data = self.data.view(np.ndarray)
            return super()._build_fields(offs, count)

    return _Reader


class GGUFFile:
    """A validated GGUF file: its metadata, tensor table and size.

    Args:
        path: the ``.gguf`` file.

    Raises:
        ModelNotFoundError: the path does not exist.
        InvalidGGUFError: the file is empty, not GGUF, truncated or corrupt.

    Example::

        f = GGUFFile("model.gguf")
        f.get("general.architecture")  # 'llama'
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.exists():
            raise ModelNotFoundError(f"no such file: {self.path}")
        if not self.path.is_file():
            raise InvalidGGUFError(f"expected a GGUF file, got a directory: {self.path}")
        self.size = self.path.stat().st_size
        with open(self.path, "rb") as fh:
            head = fh.read(8)
        if self.size == 0:
            raise InvalidGGUFError(f"expected a GGUF file, got a 0-byte file: {self.path}")
        if head[:4] != GGUF_MAGIC:
            raise InvalidGGUFError(
                f"expected a GGUF file (magic b'GGUF'), got {head[:4]!r}: {self.path}"
            )
        try:
            self._reader = _reader_class()(self.path, "r")
        except Exception as exc:  # gguf-py raises ValueError/IndexError/... on bad bytes
            raise InvalidGGUFError(
                f"corrupt or truncated GGUF file {self.path} ({self.size} bytes): {exc}"
            ) from None
        for t in self._reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > self.size:
                raise InvalidGGUFError(
                    f"truncated GGUF file {self.path}: tensor {t.name} ends at byte {end}, "
                    f"file has {self.size}"
                )
        if not self._reader.tensors:
            raise InvalidGGUFError(f"GGUF file {self.path} holds no tensors")

    @property
    def reader(self):  # -> gguf.GGUFReader
        """The underlying gguf-py reader."""
        return self._reader

    def get(self, key: str, default: Any = None) -> Any:
        """The value of a metadata key (scalars, strings and arrays), or ``default``."""
        field = self._reader.fields.get(key)
        if field is None:
            return default
        return field.contents()

    def keys(self) -> list[str]:
        """All metadata keys."""
        return list(self._reader.fields)

    @property
    def architecture(self) -> str | None:
        return self.get("general.architecture")

    def arch_get(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped key, e.g. ``arch_get('block_count')`` → ``llama.block_count``."""
        return self.get(f"{self.architecture}.{key}", default)

    @property
    def tensors(self):
        return self._reader.tensors

    def n_parameters(self) -> int:
        """Parameters stored in the file (tied embeddings are stored once)."""
        return sum(int(t.n_elements) for t in self._reader.tensors)

    def file_type(self) -> str:
        """The file's quantization as llama.cpp names it (``MOSTLY_Q4_1``, ``ALL_F32``...)."""
        import gguf  # noqa: PLC0415

        ft = self.get("general.file_type")
        if ft is None:
            kinds = {t.tensor_type.name for t in self._reader.tensors}
            return "/".join(sorted(kinds))
        try:
            return gguf.LlamaFileType(int(ft)).name
        except ValueError:
            return f"file_type={ft}"
