"""Every export is checked against the PyTorch model it came from.

The exported artifact and the source model read the same evaluation text; the
report gives tokenization equality, top-1 agreement, KL(torch‖export) and how far
their greedy continuations agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from supertiny import evaluate as ev
from supertiny.errors import SupertinyError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Strings that have broken converters before: spaces, digits, contractions, control
# tokens in text, non-Latin scripts, emoji, code.
TRICKY_STRINGS = (
    "Hello world",
    " Hello  world ",
    "It's 2026: 12,345.67 apples! I'LL see.",
    "tab\tnew\nline\r\n\n\n  x",
    "café naïve 你好 🙂 ✓ ß",
    "def f(x):\n    return x**2  # square",
    "   leading and trailing   ",
)

class ExportVerificationError(SupertinyError):
    """The exported artifact does not compute what the source model computes."""


# An unquantized export computes what PyTorch computes up to float rounding.
STRICT_TOP1 = 0.995
STRICT_KL = 1e-3


def check_export(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    artifact_logits: ev.LogitsFn,
    artifact_tokenize: Callable[[str], list[int]],
    artifact_generate: ev.GenerateFn,
    text: str,
    tokens: int = 512,
    greedy_tokens: int = 32,
    strict: bool = True,
    atol: float | None = None,
) -> dict[str, Any]:
    """Compare an exported artifact with its source model.

    Args:
        model, tokenizer: the PyTorch source.
        artifact_logits / artifact_tokenize / artifact_generate: the artifact's engine.
        text: evaluation text; its first ``tokens`` tokens are scored in one window.
        greedy_tokens: length of the greedy continuation compared token by token.
        strict: require top-1 >= 99.5% and KL <= 1e-3 (unquantized exports).
        atol: with ``strict``, also require every logit within ``atol`` of PyTorch's
            (an assert-close check for exports that compute in float32).

    Returns:
        A JSON-ready dict with ``passed`` and the figures.
    """
    text_ids = ev.tokenize_text(tokenizer, text)  # once: compared whole, then scored in part
    mismatched = [s for s in TRICKY_STRINGS if tokenizer(s)["input_ids"] != artifact_tokenize(s)]
    if text_ids != artifact_tokenize(text):
        mismatched.append(text)
    ids = text_ids[:tokens]
    # one window: each side computes its logits once, for the agreement and the assert-close check
    torch_fn, artifact_fn = _last_call(ev.torch_logits(model)), _last_call(artifact_logits)
    a = ev.agreement(torch_fn, artifact_fn, ids, window=len(ids), stride=len(ids))
    if getattr(tokenizer, "chat_template", None):
        prompt = ev.build_prompt(tokenizer, "What is the capital of France?")
    else:
        prompt = ids[:16]
    reference = list(ev.torch_generate(model, tokenizer)(prompt, greedy_tokens))
    produced = list(artifact_generate(prompt, greedy_tokens))
    same = ev.common_prefix(reference, produced)
    tokenization_ok = not mismatched
    numerics_ok = a.top1_agreement >= STRICT_TOP1 and a.kl_mean <= STRICT_KL
    max_abs = None
    if atol is not None:
        ref = torch_fn(ids).float().numpy()
        max_abs = float(np.abs(np.asarray(artifact_fn(ids), dtype=np.float32) - ref).max())
        numerics_ok = numerics_ok and max_abs <= atol
    return {
        "passed": tokenization_ok and (numerics_ok or not strict),
        "strict": strict,
        "thresholds": ({"top1_min": STRICT_TOP1, "kl_max": STRICT_KL, "logits_atol": atol} if strict else None),
        "tokenization_equal": tokenization_ok,
        "tokenization_mismatches": [s if len(s) < 60 else s[:57] + "..." for s in mismatched],
        "tokens_scored": a.student.tokens_scored,
        "top1_agreement": a.top1_agreement,
        "kl_mean": a.kl_mean,
        "kl_p95": a.kl_p95,
        "logits_max_abs_diff": max_abs,
        "perplexity_torch": a.teacher.perplexity,
        "perplexity_artifact": a.student.perplexity,
        "greedy_prefix_match": same,
        "greedy_tokens": len(reference),
        "greedy_torch": tokenizer.decode(reference, skip_special_tokens=True),
        "greedy_artifact": tokenizer.decode(produced, skip_special_tokens=True),
    }


def _last_call(fn: ev.LogitsFn) -> ev.LogitsFn:
    """``fn`` that returns its last result again when called with the same ids."""
    last: list[Any] = [None, None]

    def cached(ids: Sequence[int]) -> Any:
        key = tuple(ids)
        if last[0] != key:
            last[:] = [key, fn(ids)]
        return last[1]

    return cached


def describe_failure(report: dict[str, Any]) -> str:
    """One line on why a parity check failed."""
    if not report["tokenization_equal"]:
        return f"tokenization differs from the source tokenizer on {report['tokenization_mismatches']}"
    line = (f"top-1 agreement {report['top1_agreement']:.4f} (need >= {STRICT_TOP1}), "
            f"KL {report['kl_mean']:.2e} (need <= {STRICT_KL})")
    atol = (report.get("thresholds") or {}).get("logits_atol")
    if atol is not None:
        line += f", largest logit difference {report['logits_max_abs_diff']:.2e} (need <= {atol:.0e})"
    return line
