"""Figures of one sequential run: accuracy matrices as heatmaps, forgetting per method,
accuracy over the sequence, and one task's training curve."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .. import metrics
from .style import _PALETTE, METHOD_COLORS, _label, _matrix, _methods, _suptitle, set_style


def accuracy_heatmaps(results: dict, methods: Sequence[str] | None = None, key: str = "accuracy_matrix", annotate: bool = True):
    """Accuracy matrices ``R[t, k]`` side by side, one panel per method (shared 0–1 scale)."""
    set_style()
    methods = _methods(results, methods)
    tasks = results["tasks"]
    n = len(methods)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 1.2, 3.4), squeeze=False, constrained_layout=True)
    for i, (ax, m) in enumerate(zip(axes[0], methods)):
        R = _matrix(results["methods"][m][key])
        sns.heatmap(
            R,
            ax=ax,
            vmin=0,
            vmax=1,
            cmap="viridis",
            annot=annotate,
            fmt=".2f",
            mask=np.isnan(R),
            cbar=i == n - 1,
            square=True,
            xticklabels=tasks,
            yticklabels=tasks[: R.shape[0]],
            cbar_kws={"label": "accuracy@1"} if i == n - 1 else None,
        )
        ax.set_title(_label(m))
        ax.grid(False)
        ax.set_xlabel("evaluated task k")
        ax.set_ylabel("after training on task t" if i == 0 else "")
    _suptitle(fig, results, "Accuracy matrix")
    return fig


def forgetting_bars(results: dict, methods: Sequence[str] | None = None, kind: str = "max"):
    """Forgetting of every earlier task and the average, grouped by task, one bar per method."""
    set_style()
    methods = [m for m in _methods(results, methods)]
    tasks = results["tasks"]
    groups = tasks[:-1] + ["average"]
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) * max(1, len(methods)) / 2 + 2, 3.6), constrained_layout=True)
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(groups))
    for j, m in enumerate(methods):
        f = metrics.forgetting(_matrix(results["methods"][m]["accuracy_matrix"]), kind)
        vals = list(f) + [float(np.mean(f)) if len(f) else np.nan]
        bars = ax.bar(x + (j - (len(methods) - 1) / 2) * width, vals, width, label=_label(m), color=METHOD_COLORS.get(m))
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, groups)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("task")
    ax.set_ylabel("forgetting (accuracy points lost)")
    ax.set_title(
        "Forgetting: best accuracy of a task − its accuracy after the last task"
        if kind == "max"
        else "Forgetting: R[k,k] − R[T,k]",
        fontsize=10,
    )
    ax.legend(fontsize=8, frameon=True)
    return fig


def accuracy_over_time(results: dict, methods: Sequence[str] | None = None, key: str = "accuracy_matrix"):
    """One panel per task: its accuracy after each training stage, one line per method."""
    set_style()
    methods = _methods(results, methods)
    tasks = results["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 3.3), squeeze=False, sharey=True, constrained_layout=True)
    for k, (ax, task) in enumerate(zip(axes[0], tasks)):
        for m in methods:
            R = _matrix(results["methods"][m][key])
            ts = np.arange(k, R.shape[0])
            ax.plot(ts, R[k:, k], marker="o", label=_label(m), color=METHOD_COLORS.get(m))
        ax.set_xticks(range(len(tasks)), [f"after\n{t}" for t in tasks], fontsize=8)
        ax.set_xlim(-0.3, len(tasks) - 0.7)
        ax.set_ylim(0, 1)
        ax.set_title(f"task: {task}")
        if k == 0:
            ax.set_ylabel("accuracy@1")
    axes[0][-1].legend(fontsize=8, loc="lower left")
    _suptitle(fig, results, "Accuracy over time")
    return fig


def training_curve(losses: Sequence[float], dev_accuracy: Sequence[float] | None = None, title: str = "Training on one task"):
    """Mean training loss per epoch (left) and, if given, dev accuracy@1 after each epoch
    (right): the learning curve of one task (``train(..., on_epoch_end=...)``)."""
    set_style()
    epochs = np.arange(1, len(losses) + 1)
    n = 1 if dev_accuracy is None else 2
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.3), squeeze=False, constrained_layout=True)
    ax = axes[0][0]
    ax.plot(epochs, losses, marker="o")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss (cross-entropy)")
    ax.set_title("training loss", fontsize=10)
    if dev_accuracy is not None:
        ax = axes[0][1]
        ax.plot(epochs, dev_accuracy, marker="o", color=_PALETTE[2])
        ax.set_ylim(0, 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("dev accuracy@1")
        ax.set_title("dev accuracy", fontsize=10)
    fig.suptitle(title)
    return fig
