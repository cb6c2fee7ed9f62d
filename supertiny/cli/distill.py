"""``supertiny distill``: a student trained on a task's answers by SFT or logit KD (the stage:
:mod:`supertiny.stages.transfer.distill`)."""

from __future__ import annotations

from supertiny.cli.core import dev_line, main
from supertiny.cli.options import stage_command
from supertiny.manifest import Manifest
from supertiny.stages.registry import get


def distill_lines(m: Manifest, out: str) -> list[str]:
    """What ``supertiny distill`` prints."""
    d, q = m.details, m.quality
    lines = [f"wrote {out}: {d['steps']} steps ({d['epochs']} epochs) on {d['examples']} examples, "
             f"final loss {d['final'].get('loss')}, {d['tokens_per_s']} tokens/s"]
    lines += dev_line(q)
    if "top1_agreement" in q:
        lines.append(f"agreement with the teacher: top-1 {q['top1_agreement']:.3f}, KL {q['kl_mean']:.4f}")
    return lines + [f"note: {n}" for n in m.notes]


stage_command(main, get("distill"), "distill", "Train STUDENT on a task's answers by SFT or logit KD; runs "
              "data-parallel under torchrun/accelerate.", distill_lines, out_help="The student to write.",
              phases=True)
