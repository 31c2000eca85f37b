"""Figures of the book, each one call on a results dict (the CLI's JSON).

>>> from kfac_tutorial import plots
>>> from kfac_tutorial.experiments import read_results
>>> results = read_results("results.json")            # doctest: +SKIP
>>> fig = plots.accuracy_heatmaps(results)             # doctest: +SKIP

Styling lives here once (:func:`set_style`, :data:`METHOD_COLORS`); every function
returns its ``matplotlib`` figure.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from . import metrics

__all__ = [
    "METHOD_COLORS",
    "METHOD_LABELS",
    "accuracy_heatmaps",
    "accuracy_over_time",
    "accuracy_by_mention",
    "forgetting_bars",
    "growth_panels",
    "lambda_curves",
    "lambda_tradeoff",
    "memory_bars",
    "ratio_bars",
    "set_style",
    "training_curve",
    "variant_bars",
    "frontier_bands",
    "interval_bars",
    "forgetting_split_bars",
    "final_accuracy_over_lambda",
]

METHOD_LABELS = {
    "finetune": "Fine-tuning",
    "ewc": "EWC",
    "kfac": "KFAC",
    "ewc_online": "EWC (online)",
    "kfac_online": "KFAC (online)",
    "l2": "L2 (isotropic)",
    "frozen": "Frozen encoder",
    "joint": "Joint (upper reference)",
}
_PALETTE = sns.color_palette("colorblind")
METHOD_COLORS = {
    "finetune": _PALETTE[3],
    "ewc": _PALETTE[0],
    "kfac": _PALETTE[2],
    "ewc_online": _PALETTE[9],
    "kfac_online": _PALETTE[8],
    "l2": _PALETTE[4],
    "frozen": _PALETTE[5],
    "joint": _PALETTE[7],
}
_ORDER = list(METHOD_LABELS)


def set_style() -> None:
    """The book's figure style (called by every plot function)."""
    sns.set_theme(
        context="notebook",
        style="whitegrid",
        palette="colorblind",
        rc={"figure.dpi": 110, "axes.titleweight": "bold", "savefig.bbox": "tight"},
    )


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _methods(results: dict, methods: Sequence[str] | None) -> list[str]:
    have = results["methods"]
    if methods is None:
        return sorted(have, key=lambda m: _ORDER.index(m) if m in _ORDER else len(_ORDER))
    missing = [m for m in methods if m not in have]
    if missing:
        raise KeyError(f"methods {missing} not in the results; have {list(have)}")
    return list(methods)


def _matrix(R) -> np.ndarray:
    return np.asarray(R, dtype=float)  # None (a task not seen yet) → nan


def _suptitle(fig, results: dict, what: str) -> None:
    fig.suptitle(
        f"{what} — {results.get('model', '?').upper()} linker, "
        f"{results.get('profile', '?')} profile, seed {results.get('seed', '?')}"
    )


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


def lambda_tradeoff(
    results: dict, methods: Sequence[str] | None = None, split: str = "dev", mark_plasticity: float | None = None
):
    """Forgetting vs new-task accuracy (plasticity) for every λ of the sweep.

    ``split="dev"`` shows what λ was chosen on; ``"test"`` the same runs on test.
    The chosen λ is ringed; fine-tuning is the λ = 0 star. ``mark_plasticity`` draws a
    dotted vertical line there (to read the curves off at matched plasticity)."""
    set_style()
    have = [m for m in _methods(results, None) if "lambda_sweep" in results["methods"][m]]
    methods = have if methods is None else [m for m in methods if m in have]
    fig, ax = plt.subplots(figsize=(5.4, 4.0), constrained_layout=True)
    for m in methods:
        sweep = results["methods"][m]["lambda_sweep"]
        if split == "dev":
            xs = [s["dev_plasticity"] for s in sweep]
            ys = [s["dev_avg_forgetting"] for s in sweep]
        else:
            xs = [s["test_plasticity"] for s in sweep]
            ys = [s["test_avg_forgetting"] for s in sweep]
        color = METHOD_COLORS.get(m)
        ax.plot(xs, ys, marker="o", color=color, label=_label(m))
        for s, x, y in zip(sweep, xs, ys):
            ax.annotate(f"λ={s['lambda']:g}", (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
            if s["lambda"] == results["methods"][m]["lambda"]:
                ax.scatter([x], [y], s=160, facecolors="none", edgecolors=color, lw=1.5)
    base = results["methods"].get("finetune")
    if base is not None:
        R = metrics.split_matrix(base, split)
        ax.scatter(
            [metrics.plasticity(R)],
            [metrics.average_forgetting(R)],
            marker="*",
            s=180,
            color=METHOD_COLORS["finetune"],
            label=_label("finetune"),
            zorder=3,
        )
    if mark_plasticity is not None and np.isfinite(mark_plasticity):
        ax.axvline(mark_plasticity, color="grey", ls=":", lw=1.2, label="matched plasticity")
    ax.set_xlabel(f"new-task accuracy (plasticity, {split})")
    ax.set_ylabel(f"average forgetting ({split})")
    ax.set_title("The λ trade-off: less forgetting, less plasticity", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def lambda_curves(results: dict, methods: Sequence[str] | None = None, split: str = "test"):
    """Average forgetting, plasticity and final average accuracy against λ (log scale),
    one line per consolidation method, fine-tuning as a dashed horizontal line; the
    chosen λ is ringed. Shows what one λ does to each method (equal λ, equal Fisher
    normalisation: the mean per-example Fisher)."""
    set_style()
    if split not in ("dev", "test"):
        raise ValueError(f"unknown split {split!r}; valid: 'dev', 'test'")
    have = [m for m in _methods(results, None) if "lambda_sweep" in results["methods"][m]]
    methods = have if methods is None else [m for m in methods if m in have]
    panels = [
        ("avg_forgetting", "average forgetting"),
        ("plasticity", "plasticity"),
        ("final_avg_accuracy", "final average accuracy"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), constrained_layout=True)
    base = results["methods"].get("finetune")
    if base is not None:
        R = metrics.split_matrix(base, split)
        base_vals = {
            "avg_forgetting": metrics.average_forgetting(R),
            "plasticity": metrics.plasticity(R),
            "final_avg_accuracy": metrics.final_average_accuracy(R),
        }
    for ax, (key, label) in zip(axes, panels):
        for m in methods:
            sweep = sorted(results["methods"][m]["lambda_sweep"], key=lambda s: s["lambda"])
            lams = [s["lambda"] for s in sweep]
            vals = [np.nan if s.get(f"{split}_{key}") is None else s[f"{split}_{key}"] for s in sweep]
            color = METHOD_COLORS.get(m)
            ax.plot(lams, vals, marker="o", color=color, label=_label(m))
            chosen = results["methods"][m]["lambda"]
            for lam, v in zip(lams, vals):
                if lam == chosen:
                    ax.scatter([lam], [v], s=140, facecolors="none", edgecolors=color, lw=1.5)
        if base is not None:
            ax.axhline(base_vals[key], color=METHOD_COLORS["finetune"], ls="--", lw=1.2, label=_label("finetune"))
        ax.set_xscale("log")
        ax.set_xlabel("λ")
        ax.set_ylabel(f"{label} ({split})")
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=8)
    _suptitle(fig, results, "What λ does")
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


def _seeds_title(results: dict) -> str:
    seeds = results.get("seeds", [results.get("seed")])
    return (
        f"{results.get('model', '?').upper()} linker, {results.get('profile', '?')} profile, "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    )


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


def frontier_bands(results: dict, methods: Sequence[str] | None = None, n_boot: int = 300):
    """Forgetting against plasticity along each swept method's λ frontier: the mean over
    seeds (interpolated on a common plasticity grid) with its 95% band
    (:func:`kfac_tutorial.statistics.frontier_band`); the dev-chosen runs as points with
    their intervals in both directions; fine-tuning and the other baselines as points."""
    from .experiments.seeds import seed_runs
    from .statistics import frontier_band

    set_style()
    runs = seed_runs(results)
    have = _methods(results, None)
    swept = [m for m in have if "lambda_sweep" in results["methods"][m]]
    methods = swept if methods is None else [m for m in methods if m in swept]
    fig, ax = plt.subplots(figsize=(6.2, 4.3), constrained_layout=True)
    for m in methods:
        band = frontier_band(runs, m, n_boot=n_boot)
        color = METHOD_COLORS.get(m)
        ax.plot(band["plasticity"], band["forgetting"], color=color, label=f"{_label(m)} frontier")
        ax.fill_between(band["plasticity"], band["low"], band["high"], color=color, alpha=0.2, lw=0)
    for m in have:
        e = results["methods"][m]
        if "mean" not in e:
            continue
        x, y = e["mean"]["plasticity"], e["mean"]["avg_forgetting"]
        (xl, xh), (yl, yh) = e["ci95"]["plasticity"], e["ci95"]["avg_forgetting"]
        marker = "o" if m in methods else ("*" if m == "finetune" else "s")
        ax.errorbar(
            [x],
            [y],
            xerr=[[x - xl], [xh - x]] if xl is not None else None,
            yerr=[[y - yl], [yh - y]] if yl is not None else None,
            fmt=marker,
            color=METHOD_COLORS.get(m),
            ms=9 if marker == "*" else 6,
            capsize=3,
            label=f"{_label(m)} (λ chosen on dev)" if m in methods else _label(m),
        )
    ax.set_xlabel("new-task accuracy (plasticity, test)")
    ax.set_ylabel("average forgetting (test)")
    ax.set_title(f"Frontiers over λ, mean and 95% band — {_seeds_title(results)}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
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


def final_accuracy_over_lambda(results: dict, methods: Sequence[str] | None = None):
    """Final average test accuracy against λ for every swept method: one thin line per
    seed, the dev-chosen λ of each seed ringed. λ is not comparable across methods (each
    method's penalty has its own scale), so each method gets its own panel."""
    from .experiments.seeds import seed_runs

    set_style()
    runs = seed_runs(results)
    swept = [m for m in _methods(results, methods) if "lambda_sweep" in results["methods"][m]]
    fig, axes = plt.subplots(1, len(swept), figsize=(3.2 * len(swept), 3.0), constrained_layout=True, squeeze=False)
    for ax, m in zip(axes[0], swept):
        color = METHOD_COLORS.get(m)
        for run in runs:
            e = run["methods"][m]
            lams = [s["lambda"] for s in e["lambda_sweep"]]
            acc = [s["test_final_avg_accuracy"] for s in e["lambda_sweep"]]
            ax.plot(lams, acc, marker="o", ms=3, color=color, alpha=0.7, lw=1)
            ax.scatter([e["lambda"]], [acc[lams.index(e["lambda"])]], s=90, facecolors="none", edgecolors=color, lw=1.3)
        ax.set_xscale("log")
        ax.set_xlabel("λ")
        ax.set_title(_label(m), fontsize=9)
    axes[0][0].set_ylabel("final avg accuracy (test)")
    fig.suptitle(f"Final accuracy over λ, one line per seed — {_seeds_title(results)}", fontsize=9)
    return fig
