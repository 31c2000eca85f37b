"""Figures of the λ trade-off: remembering (old tasks) against learning (the new task)
over the penalty strength, with seed bands."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from .. import metrics
from .style import METHOD_COLORS, _label, _methods, _seeds_title, _suptitle, set_style


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


def frontier_bands(results: dict, methods: Sequence[str] | None = None, n_boot: int = 300):
    """Forgetting against plasticity along each swept method's λ frontier: the mean over
    seeds (interpolated on a common plasticity grid) with its 95% band
    (:func:`kfac_tutorial.statistics.frontier_band`); the dev-chosen runs as points with
    their intervals in both directions; fine-tuning and the other baselines as points."""
    from ..experiments.seeds import seed_runs
    from ..statistics import frontier_band

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


def final_accuracy_over_lambda(results: dict, methods: Sequence[str] | None = None):
    """Final average test accuracy against λ for every swept method: one thin line per
    seed, the dev-chosen λ of each seed ringed. λ is not comparable across methods (each
    method's penalty has its own scale), so each method gets its own panel."""
    from ..experiments.seeds import seed_runs

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
