"""Figures of the data: how the tasks grow, and accuracy by kind of mention."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt

from .style import _PALETTE, set_style


def growth_panels(length: dict, vocabulary: dict, tasks: dict):
    """How the curvature's cost grows, one line per machine (the dict keys): KFAC fit over
    a plain forward+backward against sequence length, KFAC state bytes over parameter
    bytes against vocabulary size, and the state of a per-task sum against the online
    merge as tasks accumulate. Values: tables of ``benchmark_tables``."""
    set_style()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for j, (machine, t) in enumerate(length.items()):
        if not t.empty:
            axes[0].plot(t["length"], t["fit_over_plain"], "o-", color=_PALETTE[j], label=machine)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set(xlabel="sequence length (word pieces)", ylabel="KFAC fit / plain fwd+bwd", title="Estimation vs sequence length")
    axes[0].set_xscale("log", base=2)
    axes[0].minorticks_off()
    axes[0].set_xticks([16, 32, 64, 128], ["16", "32", "64", "128"])
    for j, (machine, t) in enumerate(vocabulary.items()):
        if not t.empty:
            axes[1].plot(t["vocab"] / 1000, t["state_over_parameters"], "s-", color=_PALETTE[j], label=machine)
    axes[1].set(
        xscale="log",
        xlabel="vocabulary size (thousands of word pieces)",
        ylabel="KFAC state / parameter bytes",
        title="Memory vs vocabulary",
    )
    axes[1].axhline(1.0, color="k", lw=0.8)
    for j, (machine, t) in enumerate(tasks.items()):
        if not t.empty:
            axes[2].plot(t["tasks"], t["sum_state_bytes"] / 2**20, "^-", color=_PALETTE[j], label=f"{machine}: per-task sum")
            axes[2].plot(t["tasks"], t["online_state_bytes"] / 2**20, "v--", color=_PALETTE[j], label=f"{machine}: online")
            break  # bytes do not depend on the machine
    axes[2].set(xlabel="tasks consolidated", ylabel="KFAC state (MiB)", title="Memory vs number of tasks")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("How the curvature's cost grows (BERT-base-sized, 2 layers; tasks: MiniLM linker)")
    return fig


# -- several seeds: means and intervals (kfac_tutorial.statistics) ----------------------------


def accuracy_by_mention(
    table,
    properties: Sequence[str] = ("name similarity", "words"),
    similarity_bins: Sequence[float] = (0.0, 0.4, 0.6, 0.8, 1.0),
    title: str = "Which mentions are linked",
):
    """Accuracy@1 against properties of the mention, one panel each, with the number of
    mentions per bar. ``table`` has one row per mention: a bool column ``correct`` and
    the ``properties``; a float column in [0, 1] (a similarity) is binned by
    ``similarity_bins``, an integer column (``words``) is shown as 1, 2, 3, 4+."""
    import pandas as pd

    set_style()
    n = len(properties)
    fig, axes = plt.subplots(1, n, figsize=(4.4 * n, 3.4), squeeze=False, sharey=True, constrained_layout=True)
    for ax, prop in zip(axes[0], properties):
        col = table[prop]
        if pd.api.types.is_integer_dtype(col):
            key = col.clip(upper=4).map(lambda w: "4+" if w >= 4 else str(w))
            key = pd.Categorical(key, categories=[c for c in ("1", "2", "3", "4+") if c in set(key)])
        else:
            key = pd.cut(col, list(similarity_bins), include_lowest=True)
        groups = table["correct"].astype(float).groupby(key, observed=True)
        acc, count = groups.mean(), groups.size()
        labels = [k if isinstance(k, str) else f"{max(k.left, similarity_bins[0]):g}–{k.right:g}" for k in acc.index]
        bars = ax.bar(labels, acc.to_numpy(), color=_PALETTE[0])
        ax.bar_label(bars, labels=[f"n={c}" for c in count.to_numpy()], fontsize=7, padding=2)
        ax.set_ylim(0, 1.1)
        ax.set_xlabel(prop)
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].set_ylabel("accuracy@1")
    fig.suptitle(title)
    return fig
