"""How benchmark results are shown: aligned text tables (the CLI prints them) and a plot.

Kept apart from :mod:`.measure`, which measures; these only read its result dicts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError


def _spread(row: dict[str, Any], name: str, fmt: str) -> str:
    return f"{row[name + '_p50']:{fmt}} ({row[name + '_min']:{fmt}}-{row[name + '_max']:{fmt}})"


def _figure(x: float) -> str:
    """A measured value with as many decimals as its size deserves: 16251, 50.7, 3.14."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def format_result(result: dict[str, Any]) -> str:
    """One artifact's figures as aligned text tables."""
    lines = [f"{result['artifact']}  [{result['backend']}, {result['threads']} threads, {result['slots']} slot(s)]",
             f"  file {result['file_size_mb']:.1f} MB   load {result['load_s']:.2f} s   peak RSS "
             f"{result['peak_rss_mb']:.0f} MB (before loading {result['baseline_rss_mb']:.0f} MB)"]
    if "llama_cpp_build" in result:
        lines.append(f"  llama.cpp build: {' '.join(result['llama_cpp_build']['features']) or 'no x86 extensions'}")
    lines += [f"  note: {n}" for n in result["notes"]]
    lines.append(f"  {'prompt tokens':>13}  {'TTFT ms median (min-max)':>26}  {'prompt tok/s':>12}  "
                 f"{'decode tok/s median (min-max)':>30}")
    for r in result["prompts"]:
        lines.append(f"  {r['prompt_tokens']:>13}  {_spread(r, 'ttft_ms', '.0f'):>26}  "
                     f"{r['prompt_tokens_per_s_p50']:>12.0f}  {_spread(r, 'decode_tokens_per_s', '.1f'):>30}")
    lines.append(f"  {'clients':>13}  {'requests':>8}  {'p50 ms':>8}  {'p95 ms':>8}  {'p99 ms':>8}  "
                 f"{'TTFT p95 ms':>11}  {'tokens/s':>8}  {'vs 1':>5}  {'req/s':>6}")
    one = next((c["throughput_tokens_per_s"] for c in result["concurrency"] if c["concurrency"] == 1), None)
    for c in result["concurrency"]:
        gain = f"{c['throughput_tokens_per_s'] / one:.2f}x" if one else ""
        lines.append(f"  {c['concurrency']:>13}  {c['requests']:>8}  {c['latency_ms_p50']:>8.0f}  "
                     f"{c['latency_ms_p95']:>8.0f}  {c['latency_ms_p99']:>8.0f}  {c['ttft_ms_p95']:>11.0f}  "
                     f"{c['throughput_tokens_per_s']:>8.1f}  {gain:>5}  {c['requests_per_s']:>6.2f}")
    if "verdicts" in result:
        for v in result["verdicts"]:
            mark = {True: "PASS", False: "FAIL", None: "----"}[v["passed"]]
            got = "not measured" if v["measured"] is None else _figure(v["measured"])
            op = "<=" if v["direction"] == "max" else ">="
            lines.append(f"  {mark}  {v['label']}: {got} {v['unit']} (budget {op} {v['limit']:g}; {v['conditions']})")
        lines.append(f"  verdict: {'PASS' if result['passed'] else 'FAIL'}")
    return "\n".join(lines)


def format_comparison(results: Sequence[dict[str, Any]]) -> str:
    """Several artifacts side by side: the headline figures and the ratio to the first."""
    first = results[0]
    length = max(r["prompt_tokens"] for r in first["prompts"])
    clients = max(c["concurrency"] for c in first["concurrency"])
    head = (f"{'artifact':<32} {'MB':>8} {'RSS MB':>7} {'TTFT@' + str(length) + ' ms':>14} "
            f"{'decode tok/s':>12} {'p95@' + str(clients) + ' ms':>11} {'verdict':>7}")
    lines = [head]
    for r in results:
        p = next(x for x in r["prompts"] if x["prompt_tokens"] == length)
        p0 = next(x for x in first["prompts"] if x["prompt_tokens"] == length)
        c = next(x for x in r["concurrency"] if x["concurrency"] == clients)
        speed = p["decode_tokens_per_s_p50"] / p0["decode_tokens_per_s_p50"]
        verdict = "" if "passed" not in r else ("PASS" if r["passed"] else "FAIL")
        lines.append(f"{Path(r['artifact']).name[:32]:<32} {r['file_size_mb']:>8.1f} {r['peak_rss_mb']:>7.0f} "
                     f"{p['ttft_ms_p50']:>14.0f} {p['decode_tokens_per_s_p50']:>7.1f} ({speed:.2f}x)"
                     f" {c['latency_ms_p95']:>8.0f} {verdict:>7}")
    return "\n".join(lines)


def check_plot_path(out: str | os.PathLike[str]) -> Path:
    """The plot's path, checked before any measuring: a known suffix, a folder that exists."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InvalidInputError(f"--plot writes .png, .svg or .pdf, got {out.name}")
    if not out.parent.resolve().is_dir():
        raise InvalidInputError(f"--plot: no folder {out.parent}")
    return out


def plot(report: dict[str, Any], out: str | os.PathLike[str], target: Any = None) -> Path:
    """TTFT vs prompt length, decode speed, p95 latency vs clients and memory, one panel
    each, every artifact a series, the target's budgets as dashed lines. Written to a
    temporary file and renamed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from supertiny.errors import MissingExtraError

        raise MissingExtraError("--plot needs matplotlib: pip install 'supertiny[plot]'") from None
    out = check_plot_path(out)
    results = report["results"]
    budget = target.budget if target is not None else None
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (ax_ttft, ax_dec), (ax_lat, ax_mem) = axes
    names = [Path(r["artifact"]).name for r in results]
    for name, r in zip(names, results, strict=True):
        xs = [p["prompt_tokens"] for p in r["prompts"]]
        ax_ttft.errorbar(xs, [p["ttft_ms_p50"] for p in r["prompts"]], marker="o", label=name, capsize=3,
                         yerr=[[p["ttft_ms_p50"] - p["ttft_ms_min"] for p in r["prompts"]],
                               [p["ttft_ms_max"] - p["ttft_ms_p50"] for p in r["prompts"]]])
        ax_dec.plot(xs, [p["decode_tokens_per_s_p50"] for p in r["prompts"]], marker="o", label=name)
        cs = [c["concurrency"] for c in r["concurrency"]]
        ax_lat.plot(cs, [c["latency_ms_p95"] for c in r["concurrency"]], marker="o", label=name)
    x = range(len(results))
    ax_mem.bar([i - 0.2 for i in x], [r["peak_rss_mb"] for r in results], width=0.4, label="peak RSS")
    ax_mem.bar([i + 0.2 for i in x], [r["file_size_mb"] for r in results], width=0.4, label="file size")
    ax_mem.set_xticks(list(x), names, rotation=15, fontsize=8)
    if budget is not None:
        for ax, limit, what, color in (
                (ax_ttft, budget.ttft_ms, f"at {budget.prompt_tokens} tokens", "red"),
                (ax_dec, budget.decode_tokens_per_s, f"at {budget.prompt_tokens} tokens", "red"),
                (ax_lat, budget.p95_latency_ms, f"at {budget.concurrency} clients", "red"),
                (ax_mem, budget.peak_rss_mb, "peak RSS", "tab:blue"),
                (ax_mem, budget.file_size_mb, "file size", "tab:orange")):
            if limit is not None:
                ax.axhline(limit, color=color, linestyle="--", linewidth=1, label=f"{target.name} budget, {what}")
    for ax, title, xl, yl in ((ax_ttft, "time to first token (median, min-max)", "prompt tokens", "ms"),
                              (ax_dec, "decode speed (median)", "prompt tokens", "tokens/s"),
                              (ax_lat, "request latency p95", "concurrent clients", "ms"),
                              (ax_mem, "memory and size", "", "MB")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def save_figure(fig: Any, out: Path, dpi: int) -> Path:
    """Write a matplotlib figure to ``out`` through a temporary file and a rename (never half a PNG), and close it."""
    import matplotlib.pyplot as plt

    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, out)
    return out
