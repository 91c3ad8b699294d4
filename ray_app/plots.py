"""Figures of the evaluation report: one PNG per ranking protocol (matplotlib, Agg backend).

Each figure has two panels over the same systems: the mean figure per system (what the table
says), and each system's mean per-query difference to the reference with its 95% paired-bootstrap
interval (what the table cannot show at a glance: on a few dozen queries most gaps are inside
it). matplotlib is imported when a figure is drawn, never at import time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def protocol_figure(path: str | Path, title: str, figures: dict[str, dict[str, Any]], metric: str, label: str,
                    comparisons: Optional[dict[str, dict[str, dict[str, float]]]] = None,
                    reference: Optional[str] = None) -> Path:
    """Write a PNG: the mean `metric` per system, and (when given) its difference to `reference`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [name for name, fig in figures.items() if isinstance(fig.get(metric), (int, float))]
    if not systems:
        raise ValueError(f"no system has a value for {metric!r}")
    values = [float(figures[name][metric]) for name in systems]
    diffs = {name: (comparisons or {}).get(name, {}).get(metric) for name in systems}
    with_diff = bool(reference) and any(d and d.get("queries") for d in diffs.values())
    height = 1.2 + 0.38 * len(systems)
    fig, axes = plt.subplots(1, 2 if with_diff else 1, figsize=(11 if with_diff else 6.5, height), sharey=True,
                             squeeze=False)
    rows = list(range(len(systems)))[::-1]  # first system on top, as in the tables
    ax = axes[0][0]
    colours = ["#4c72b0" if name != reference else "#999999" for name in systems]
    ax.barh(rows, values, color=colours)
    low, high = min(values), max(values)
    span = high - low
    ax.set_xlim(max(0.0, low - 0.3 * span - 0.005), high + 0.25 * span + 0.005)  # zoomed: the gaps are small
    for y, v in zip(rows, values):
        ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
    ax.set_yticks(rows, systems, fontsize=8)
    ax.set_xlabel(label)
    ax.set_title("mean over queries", fontsize=9)
    if with_diff:
        ax = axes[0][1]
        for y, name in zip(rows, systems):
            d = diffs[name]
            if not d or not d.get("queries"):
                continue
            clear = d["ci_low"] > 0 or d["ci_high"] < 0
            colour = "#2a9d3a" if clear and d["diff"] > 0 else "#c0392b" if clear else "#4c72b0"
            ax.plot([d["ci_low"], d["ci_high"]], [y, y], color=colour, linewidth=2)
            ax.plot([d["diff"]], [y], "o", color=colour)
            ax.text(d["ci_high"], y, f"  {d['diff']:+.3f}", va="center", fontsize=8)
        ax.axvline(0.0, color="#555555", linewidth=1, linestyle="--")
        ax.set_xlabel(f"{label}: system - {reference}, per query")
        ax.set_title(f"difference to {reference}, 95% paired-bootstrap interval", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
