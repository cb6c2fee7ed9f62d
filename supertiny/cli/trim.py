"""``supertiny trim-vocab``: a model with only the tokens its task needs (the stage: :mod:`supertiny.stages.trim`)."""

from __future__ import annotations

from pathlib import Path

from supertiny.cli.core import human, main
from supertiny.cli.options import stage_command
from supertiny.manifest import Manifest
from supertiny.stages.registry import get


def trim_lines(m: Manifest, out: str) -> list[str]:
    """What ``supertiny trim-vocab`` prints: the kept vocabulary, the longer token counts and the cost."""
    v, p, q, t = m.details["vocab"], m.details["parameters"], m.quality, m.details["tokens"]
    lines = [f"model       {Path(out).expanduser()}  {human(p['after'])} params (was {human(p['before'])})",
             f"vocabulary  {v['after']:,} of {v['before']:,} tokens ({v['kept']:.1%}); {v['from_data']:,} from the "
             f"task's data; merges {v['merges_before']:,} -> {v['merges_after']:,}"]
    names = {"data": "the task's data", "dev_inputs": "--dev inputs", "general_text": "general text"}
    lines.append("tokens      " + "; ".join(f"{names[k]} x{r['ratio']:.3f}" for k, r in t.items()))
    if "top1_agreement" in q:
        lines.append(f"answers     same next token as the source at {q['top1_agreement']:.2%} of "
                     f"{q['answer_positions']:,} answer positions ({q['examples']} examples); the source's "
                     f"probability on dropped tokens there {q['dropped_mass_mean']:.2e}")
    g = q["general_text"]
    lines.append(f"general     {g['trimmed_bits_per_byte']:.3f} bits/byte (source {g['source_bits_per_byte']:.3f})")
    return lines


stage_command(main, get("trim-vocab"), "trim-vocab", "Keep only the tokens MODEL's task needs (and the most frequent "
              "ones); OUT_DIR is a plain Hugging Face checkpoint whose tokenizer still encodes any text.", trim_lines)
