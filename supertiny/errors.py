"""One exception hierarchy for the whole package.

The library raises these; only the CLI turns them into a one-line message and an
exit code. A :class:`UserError` is something the person running supertiny can fix
(a wrong path, an unsupported file); anything else is a bug in supertiny.
"""

from __future__ import annotations


class SupertinyError(Exception):
    """Base class of every error supertiny raises on purpose."""


class UserError(SupertinyError):
    """A mistake in what the user passed: the CLI prints it and exits with code 2."""


class ModelNotFoundError(UserError):
    """The model path does not exist."""


class NotAModelError(UserError):
    """The path exists but holds no model supertiny can read."""


class UnsafeCheckpointError(UserError):
    """The checkpoint is a pickle (``.bin``/``.pt``): supertiny loads safetensors only."""


class UnsupportedArchitectureError(UserError):
    """The model's architecture has no row in :mod:`supertiny.archs`."""


class InvalidGGUFError(UserError):
    """The file is not a well-formed GGUF file (bad magic, truncated, corrupt)."""


class InvalidInputError(UserError):
    """A text file, prompt list or option value that cannot be used."""


class MissingExtraError(UserError):
    """An optional backend is not installed; the message names the extra to install."""


class TargetError(UserError):
    """A device target profile that is missing, unreadable or invalid; the message names the file."""


class TaskError(UserError):
    """A task file that is missing, unreadable or invalid, or labels that do not fit it; names the file."""


class BrokenCheckpointError(UserError):
    """Weights that parse but cannot be the model: missing, unexpected, mis-shaped or non-finite
    tensors (the message names them), or a backend returning non-finite logits."""


class RecipeError(UserError):
    """A recipe that is missing, unreadable or invalid, or a run it cannot start; the message names the file."""
