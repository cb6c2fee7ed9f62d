"""Compression stage: pruning (depth/width), distillation, RL and quantization.

Each module takes a model and a config and returns a new model or a standard
Hugging Face directory (see ARCHITECTURE.md). Modules arrive with their issues.
"""
