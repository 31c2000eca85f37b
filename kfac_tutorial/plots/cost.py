"""Figures of cost: curvature memory by layer type, and speed or memory ratios of variants
against a baseline."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from .style import _PALETTE, METHOD_COLORS, _label, set_style


def memory_bars(tables: dict, title: str = "Curvature memory by layer type"):
    """Grouped horizontal bars, one panel per model: for each layer group (the index of
    a table) the bytes of its parameters and of each curvature state (the columns, e.g.
    ``parameters``, ``EWC``, ``KFAC``), in MiB."""
    set_style()
    n = len(tables)
    heights = [len(t) for t in tables.values()]
    fig, axes = plt.subplots(1, n, figsize=(5.6 * n, 0.55 * max(heights) * 3 / 2 + 1.4), squeeze=False, constrained_layout=True)
    colors = {"parameters": _PALETTE[7], "EWC": METHOD_COLORS["ewc"], "KFAC": METHOD_COLORS["kfac"]}
    for ax, (name, table) in zip(axes[0], tables.items()):
        y = np.arange(len(table))
        width = 0.8 / len(table.columns)
        for j, col in enumerate(table.columns):
            vals = table[col].to_numpy(dtype=float) / 2**20
            bars = ax.barh(
                y + (j - (len(table.columns) - 1) / 2) * width,
                vals,
                width,
                label=col,
                color=colors.get(col, _PALETTE[j % len(_PALETTE)]),
            )
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_yticks(y, list(table.index))
        ax.invert_yaxis()
        ax.set_xlabel("MiB")
        ax.set_title(name, fontsize=10)
        ax.margins(x=0.15)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return fig


def variant_bars(
    table,
    methods: Sequence[str] | None = None,
    columns: Sequence[str] = ("forgetting_reduction", "plasticity", "final_avg_accuracy"),
    title: str = "Variants",
):
    """One panel per metric, one group of bars per variant, one bar per method.

    ``table``: the ``pandas.DataFrame`` of
    :func:`kfac_tutorial.experiments.compare_variants` (columns ``variant``, ``method`` and
    the metrics); ``methods`` default: every method but fine-tuning."""
    set_style()
    names = {
        "forgetting_reduction": "reduction of forgetting",
        "plasticity": "plasticity",
        "final_avg_accuracy": "final average accuracy",
        "avg_forgetting": "average forgetting",
    }
    if methods is None:
        methods = [m for m in dict.fromkeys(table["method"]) if m != "finetune"]
    variants = list(dict.fromkeys(table["variant"]))
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns) + 0.5, 3.4), squeeze=False, constrained_layout=True)
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(variants))
    for ax, col in zip(axes[0], columns):
        for j, m in enumerate(methods):
            vals = []
            for v in variants:
                sel = table[(table["variant"] == v) & (table["method"] == m)][col]
                vals.append(float(sel.iloc[0]) if len(sel) and sel.iloc[0] is not None else np.nan)
            bars = ax.bar(x + (j - (len(methods) - 1) / 2) * width, vals, width, label=_label(m), color=METHOD_COLORS.get(m))
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.set_xticks(x, variants, rotation=20, ha="right", fontsize=8)
        ax.set_title(names.get(col, col), fontsize=10)
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("variant")
    axes[0][0].set_ylabel("value (test)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return fig


def ratio_bars(
    table,
    label: str,
    value: str,
    group: str,
    *,
    targets: Sequence[float] = (1.0,),
    title: str = "",
    xlabel: str = "",
    log: bool = True,
):
    """Horizontal bars of a cost ratio (``value``) per row label (``label``), one colour
    per ``group`` (e.g. the machine), with vertical reference lines at ``targets``
    (first: solid, the others dashed). Rows whose value is missing (a library that
    failed) are drawn as an ✗ at the left edge."""
    set_style()
    labels = list(dict.fromkeys(table[label]))
    groups = list(dict.fromkeys(table[group]))
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(labels) * max(1, len(groups)) / 1.6 + 1.6), constrained_layout=True)
    width = 0.8 / len(groups)
    for j, g in enumerate(groups):
        part = table[table[group] == g].set_index(label)
        for i, lab in enumerate(labels):
            y = i + (j - (len(groups) - 1) / 2) * width
            cell = part[value].loc[[lab]] if lab in part.index else None  # None: no row for this group
            v = float(cell.iloc[0]) if cell is not None else np.nan
            if np.isfinite(v):
                ax.barh(y, v, width, color=_PALETTE[j], label=g)  # one legend entry per group: deduplicated below
                ax.text(v, y, f" {v:.2f}×", va="center", fontsize=7)
            elif cell is not None:
                ax.text(0.02, y, "✗ failed", va="center", fontsize=7, color=_PALETTE[j], transform=ax.get_yaxis_transform())
    for k, t in enumerate(targets):
        ax.axvline(t, color="k" if k == 0 else "r", lw=0.8, ls="-" if k == 0 else "--")
    if log:
        ax.set_xscale("log")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    handles, names = ax.get_legend_handles_labels()
    uniq = dict(zip(names, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="upper right")
    ax.margins(x=0.12)
    return fig
