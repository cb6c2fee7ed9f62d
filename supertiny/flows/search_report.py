"""A search report as text (one row per candidate, the recommendation) and as a plot.

matplotlib (the ``plot`` extra) is imported only to draw.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from supertiny.flows.search_grid import LATENCY, overshoot
from supertiny.runtime.bench.report import check_plot_path, save_figure


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _num(value: float | None) -> str:
    """Three significant figures or so: 1234, 56.7, 0.12 (tiny test models and real ones in one column)."""
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def table_lines(report: dict[str, Any]) -> list[str]:
    """The candidates table (``*``: on the Pareto front), then the recommendation line."""
    sets = list(dict.fromkeys(k for p in report["points"] for k in p.get("holdout", {})))
    head = ("", "CANDIDATE", "LAYERS", "QUANT", "FORMAT", "MB", "TTFT_MS", "DECODE_TOK/S", "P95_MS", "QUALITY",
            *(s.upper() for s in sets), "AGREE", "MEETS")
    rows = [head]
    for p in report["points"]:
        if "error" in p:
            rows.append(("", p["name"], str(p["layers"]), p["quant"], p["format"], "failed", "", "", "", "",
                         *("" for _ in sets), "", "no"))
            continue
        rows.append(("*" if p["on_front"] else "", p["name"], str(p["layers"]), p["quant"], p["format"],
                     _num(p["size_mb"]), _num(p["ttft_ms"]), _num(p["decode_tokens_per_s"]),
                     _num(p["p95_latency_ms"]), _cell(p["quality"], ".3f"),
                     *(_cell(p["holdout"].get(s), ".3f") for s in sets), _cell(p["top1_agreement"], ".3f"),
                     "yes" if p["meets"] else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"* on the Pareto front of (quality up, {LATENCY[report['latency']][0]} "
                 f"{'down' if LATENCY[report['latency']][1] == 'min' else 'up'}, size down); "
                 f"MEETS: every budget of target {report['target']}")
    lines.append(recommendation_line(report))
    for p in report["points"]:
        if "error" in p:
            lines.append(f"failed      {p['name']}: {p['error']}")
    return lines + [f"note        {n}" for n in report["notes"]]


def recommendation_line(report: dict[str, Any]) -> str:
    """Which candidate to deploy, or that none meets the budgets and which comes closest (and how)."""
    by_name = {p["name"]: p for p in report["points"]}
    if report["recommended"]:
        p = by_name[report["recommended"]]
        return (f"recommended {p['name']}: quality {p['quality']:.3f}, {_num(p['size_mb'])} MB, TTFT "
                f"{_num(p['ttft_ms'])} ms, {_num(p['decode_tokens_per_s'])} tok/s "
                f"({p['artifact']}); it meets every budget of {report['target']}")
    if not report["closest"]:
        return "recommended none: no candidate was measured (see the failures)"
    p = by_name[report["closest"]]
    missed = [f"{v['key']} {v['measured']:.4g} vs {v['limit']:g} {v['unit']}" for v in p["verdicts"]
              if v["passed"] is False]
    return (f"recommended NONE: no candidate meets every budget of {report['target']}; closest is {p['name']} "
            f"(misses {'; '.join(missed)}; overshoot {overshoot(p['verdicts']):.2f})")


def plot(report: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Quality vs latency, marker area ~ file size, the front joined and ringed, budget-meeting candidates
    filled (others hollow), the recommended one annotated. Written to a temporary file and renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = check_plot_path(out)
    key, direction = LATENCY[report["latency"]]
    points = [p for p in report["points"] if "error" not in p and p.get(key) is not None and p.get("quality")
              is not None]
    fig, ax = plt.subplots(figsize=(9, 6))
    biggest = max((p["size_mb"] for p in points), default=1.0) or 1.0
    for n, p in enumerate(points):
        size = 40 + 600 * p["size_mb"] / biggest
        color = "tab:green" if p["meets"] else "tab:red"
        ax.scatter(p[key], p["quality"], s=size, facecolors=color if p["meets"] else "none", edgecolors=color,
                   linewidths=1.5, alpha=0.7, zorder=2)
        ax.annotate(f"{p['name']}\n{p['size_mb']:.0f} MB", (p[key], p["quality"]), fontsize=7,
                    xytext=(6, -10 - 14 * (n % 3)), textcoords="offset points")  # neighbours' labels apart
    front = sorted((p for p in points if p["on_front"]), key=lambda p: p[key])
    if front:
        ax.plot([p[key] for p in front], [p["quality"] for p in front], "--", color="tab:blue", zorder=1,
                label="Pareto front")
        ax.scatter([p[key] for p in front], [p["quality"] for p in front], s=14, color="tab:blue", zorder=3)
    limit = report["budgets"].get(key)
    if limit is not None:
        ax.axvline(limit, color="gray", linestyle=":", label=f"budget {key} {limit:g}")
    chosen = report["recommended"] or report["closest"]
    for p in points:
        if p["name"] == chosen:
            ax.annotate("recommended" if report["recommended"] else "closest (misses a budget)",
                        (p[key], p["quality"]), xytext=(30, -45 if p["quality"] > 0.5 else 35),
                        textcoords="offset points", fontsize=9,
                        arrowprops={"arrowstyle": "->"}, fontweight="bold")
    ax.scatter([], [], s=60, color="tab:green", label="meets every budget")
    ax.scatter([], [], s=60, facecolors="none", edgecolors="tab:red", label="misses a budget")
    ax.set_xlabel(f"{key} ({'lower' if direction == 'min' else 'higher'} is better)")
    ax.set_ylabel("task score")
    ax.set_title(f"search: {Path(report['teacher']).name} on {report['task']}, target {report['target']} "
                 "(marker area ~ file size)", fontsize=10)
    ax.margins(x=0.1, y=0.15)  # room for the labels beside the outermost points
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, out, dpi=120)
