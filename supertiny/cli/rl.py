"""``supertiny rl``: on-policy RL of a student on the task's reward (the stage: :mod:`supertiny.stages.transfer.rl`)."""

from __future__ import annotations

from supertiny.cli.core import dev_line, main
from supertiny.cli.options import stage_command
from supertiny.manifest import Manifest
from supertiny.stages.registry import get


def rl_lines(m: Manifest, out: str) -> list[str]:
    """What ``supertiny rl`` prints."""
    d, q = m.details, m.quality
    lines = [f"wrote {out}: {d['steps']} steps on {d['prompts']} prompts, reward {d['reward_first']} -> "
             f"{d['reward_last']}, KL {d['kl_last']}, {d['tokens_per_s']} tokens/s"]
    return lines + dev_line(q) + [f"note: {n}" for n in m.notes]


stage_command(main, get("rl"), "rl", "GRPO-style RL of STUDENT: G sampled answers per prompt, group-relative task "
              "reward, KL penalty.", rl_lines, out_help="The student to write.")
