"""Compression stage: pruning (depth/width), distillation, RL and quantization.

Each module takes a model and a config and returns a new model or a standard
Hugging Face directory (see ARCHITECTURE.md). Modules arrive with their issues.

The choices the stage's configs take live here, free of torch, so the CLI offers
them without importing the stage.
"""

LAYER_METRICS = ("block-influence", "loss")  # how depth pruning ranks layers (prune.PruneConfig)
