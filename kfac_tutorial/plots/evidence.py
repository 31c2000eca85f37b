"""Figures of multi-seed evidence: intervals of a metric per method, and forgetting split
into its parts."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from .style import METHOD_COLORS, _label, _methods, _seeds_title, set_style


def interval_bars(results: dict, metric: str = "forgetting_reduction", methods: Sequence[str] | None = None, ax=None):
    """Each method's mean over seeds of ``metric`` with its 95% interval (paired
    bootstrap over seeds and test mentions) as an error bar; the seeds as dots."""
    set_style()
    methods = [
        m
        for m in _methods(results, methods)
        if "mean" in results["methods"][m] and results["methods"][m]["mean"].get(metric) is not None
    ]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 3.4), constrained_layout=True)
    fig = ax.figure
    for i, m in enumerate(methods):
        e = results["methods"][m]
        mean, (lo, hi) = e["mean"][metric], e["ci95"][metric]
        color = METHOD_COLORS.get(m)
        ax.bar(i, mean, color=color, alpha=0.75)
        if lo is not None:
            ax.errorbar(i, mean, yerr=[[mean - lo], [hi - mean]], color="black", capsize=5, lw=1.2)
        per_seed = [s.get(metric) for s in e["seeds"]]
        ax.scatter([i] * len(per_seed), per_seed, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(methods)), [_label(m) for m in methods], rotation=20, ha="right")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{metric.replace('_', ' ')}: mean and 95% interval — {_seeds_title(results)}", fontsize=9)
    return fig


def forgetting_split_bars(results: dict, methods: Sequence[str] | None = None):
    """Where the forgetting lives: each method's mean forgetting split into the part
    that restoring the old tasks' concept-table rows gives back (table) and the rest
    (the encoder's drift, and new rows that now outscore old concepts), with the 95%
    interval of each part."""
    set_style()
    methods = [
        m
        for m in _methods(results, methods)
        if "mean" in results["methods"][m] and results["methods"][m]["mean"].get("forgetting_encoder") is not None
    ]
    fig, ax = plt.subplots(figsize=(6.0, 3.4), constrained_layout=True)
    x = np.arange(len(methods))
    for j, (part, hatch) in enumerate((("forgetting_encoder", ""), ("forgetting_table", "//"))):
        means = [results["methods"][m]["mean"][part] for m in methods]
        cis = [results["methods"][m]["ci95"][part] for m in methods]
        err = np.array(
            [[mu - (c[0] if c[0] is not None else mu), (c[1] if c[1] is not None else mu) - mu] for mu, c in zip(means, cis)]
        ).T
        ax.bar(
            x + (j - 0.5) * 0.38,
            means,
            width=0.38,
            yerr=err,
            capsize=3,
            hatch=hatch,
            color=[METHOD_COLORS.get(m) for m in methods],
            alpha=0.8 if j == 0 else 0.45,
            edgecolor="black",
            lw=0.5,
            label="rest: encoder (and new rows)" if j == 0 else "old concept-table rows",
        )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [_label(m) for m in methods], rotation=20, ha="right")
    ax.set_ylabel("average forgetting (test acc@1)")
    ax.set_title(f"Forgetting: encoder vs concept table — {_seeds_title(results)}", fontsize=9)
    ax.legend(fontsize=8)
    return fig
