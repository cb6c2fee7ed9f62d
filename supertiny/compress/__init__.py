"""Compression stage: pruning (depth/width), distillation, RL and quantization.

Each module takes a model and a config and returns a new model or a standard
Hugging Face directory (see ARCHITECTURE.md). Modules arrive with their issues.

The choices the stage's configs take live here, free of torch, so the CLI offers
them without importing the stage.
"""

LAYER_METRICS = ("block-influence", "loss")  # how depth pruning ranks layers (prune.PruneConfig)

# Quantization (quantize.py): scheme names, calibrated methods, int4 group sizes, FP8 scale granularities.
QUANT_SCHEMES = ("w4a16", "w8a8", "fp8")
QUANT_METHODS = ("rtn", "gptq", "awq")
QUANT_GROUPS = (32, 64, 128)
HEAD_BITS = (4, 8)  # w4a16: the output layer (and a tied embedding) in int4 or group-wise int8
FP8_GRANULARITIES = ("tensor", "channel")
