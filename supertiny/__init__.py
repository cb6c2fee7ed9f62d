"""supertiny: turn a large language model into a super-tiny one for the devices people have.

The public API, re-exported from the modules that hold it::

    from supertiny import load_model, describe, perplexity, agreement, torch_logits
    from supertiny import evaluate_model, EvalConfig, evaluate_task_model, load_task
    from supertiny import read_manifest, verify_artifact
    from supertiny import open_engine, Sampling, load_target
"""

from supertiny.errors import (  # noqa: E402
    BrokenCheckpointError,
    InvalidGGUFError,
    InvalidInputError,
    MissingExtraError,
    ModelNotFoundError,
    NotAModelError,
    SupertinyError,
    TargetError,
    TaskError,
    UnsafeCheckpointError,
    UnsupportedArchitectureError,
    UserError,
)
from supertiny.evaluate import agreement, generate, perplexity, torch_generate, torch_logits  # noqa: E402
from supertiny.manifest import Manifest, read_manifest, verify_artifact  # noqa: E402
from supertiny.models import LoadedModel, ModelInfo, describe, load_model  # noqa: E402
from supertiny.runtime.engines.base import Engine, EngineOptions, open_engine  # noqa: E402
from supertiny.runtime.engines.sampling import Sampling  # noqa: E402
from supertiny.stages.eval import EvalConfig, EvalReport, TaskReport, evaluate_model, evaluate_task_model  # noqa: E402
from supertiny.targets import Target, list_targets, load_target  # noqa: E402
from supertiny.tasks import Task, list_tasks, load_task  # noqa: E402
from supertiny.version import __version__

__all__ = [
    "BrokenCheckpointError",
    "Engine",
    "EngineOptions",
    "EvalConfig",
    "EvalReport",
    "InvalidGGUFError",
    "InvalidInputError",
    "LoadedModel",
    "Manifest",
    "MissingExtraError",
    "ModelInfo",
    "ModelNotFoundError",
    "NotAModelError",
    "Sampling",
    "SupertinyError",
    "Target",
    "TargetError",
    "Task",
    "TaskError",
    "TaskReport",
    "UnsafeCheckpointError",
    "UnsupportedArchitectureError",
    "UserError",
    "__version__",
    "agreement",
    "describe",
    "evaluate_model",
    "evaluate_task_model",
    "generate",
    "list_targets",
    "list_tasks",
    "load_model",
    "load_target",
    "load_task",
    "open_engine",
    "perplexity",
    "read_manifest",
    "torch_generate",
    "torch_logits",
    "verify_artifact",
]
