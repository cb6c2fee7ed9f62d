"""Structured pruning: a teacher cut down to a student skeleton in depth (layers) and width (heads, MLP and
hidden channels). :mod:`.stage` is the stage (its Config and run), :mod:`.plan` the choice of units and
the exact surgery, :mod:`.importance` the scores; only the stage module is light (no torch)."""

from supertiny.stages.prune.stage import LAYER_METRICS, PruneConfig, prune

__all__ = ["LAYER_METRICS", "PruneConfig", "prune"]
