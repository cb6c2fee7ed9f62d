"""supertiny: turn a large language model into a super-tiny one for the devices people have.

The public API, re-exported from the stage modules::

    from supertiny import load_model, describe, perplexity, agreement, torch_logits
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    InvalidGGUFError,
    InvalidInputError,
    MissingExtraError,
    ModelNotFoundError,
    NotAModelError,
    SupertinyError,
    UnsafeCheckpointError,
    UnsupportedArchitectureError,
    UserError,
)
from .evaluate import agreement, generate, perplexity, torch_generate, torch_logits  # noqa: E402
from .models import LoadedModel, ModelInfo, describe, load_model  # noqa: E402

__all__ = [
    "InvalidGGUFError",
    "InvalidInputError",
    "LoadedModel",
    "MissingExtraError",
    "ModelInfo",
    "ModelNotFoundError",
    "NotAModelError",
    "SupertinyError",
    "UnsafeCheckpointError",
    "UnsupportedArchitectureError",
    "UserError",
    "__version__",
    "agreement",
    "describe",
    "generate",
    "load_model",
    "perplexity",
    "torch_generate",
    "torch_logits",
]
