"""``supertiny prune``: a teacher cut down in depth and/or width (the stage: :mod:`supertiny.stages.prune`)."""

from __future__ import annotations

from pathlib import Path

from supertiny.cli.core import human, main
from supertiny.cli.options import stage_command
from supertiny.manifest import Manifest
from supertiny.stages.registry import get


def prune_lines(m: Manifest, out: str) -> list[str]:
    """What ``supertiny prune`` prints: the student, what was cut and how close it stays."""
    pr, params, q = m.details["pruned"], m.details["parameters"], m.quality
    dropped = ", ".join(f"{d['index']} ({d['score']:.3f})" for d in pr["layers"]["dropped"]) or "none"
    lines = [f"student     {Path(out).expanduser()}  {human(params['after'])} params "
             f"({params['kept']:.0%} of {human(params['before'])})",
             f"layers      {pr['layers']['from']} -> {pr['layers']['to']}; dropped {dropped} "
             f"[{pr['layers']['metric']}]"]
    for name in ("query_heads", "kv_heads", "mlp", "hidden"):
        lost = pr[name].get("importance_removed")
        share = f" ({lost:.1%} of their importance removed)" if lost else ""
        lines.append(f"{name.replace('_', ' '):<11} {pr[name]['from']} -> {pr[name]['to']}{share}")
    if "skipped" in q:
        lines.append(f"quality     skipped: {q['skipped']}")
    else:
        lines.append(f"quality     on {q['tokens']} held-out tokens: perplexity {q['student_perplexity']:.2f} "
                     f"(teacher {q['teacher_perplexity']:.2f}), KL {q['kl_mean']:.3f} nats, "
                     f"top-1 agreement {q['top1_agreement']:.1%}")
    return lines


stage_command(main, get("prune"), "prune", "Prune MODEL (depth and/or width) into OUT_DIR, a plain Hugging Face "
              "checkpoint.", prune_lines, label="calibration")
