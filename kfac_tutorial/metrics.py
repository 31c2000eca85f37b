"""Continual-learning metrics on an accuracy matrix (shared/DESIGN.md §6).

``R[t, k]`` = accuracy on task k (its test split, against the fixed candidate set)
after training on tasks 0..t; rows are "after task t", columns are tasks. Entries with
k > t are allowed (the matrix may be full: every task is scored against the fixed
candidate set at every checkpoint) but no metric here reads them.

Forgetting of task k < T (T = last task):
* ``kind="max"`` (default, Chaudhry et al. 2018): ``max_{k ≤ t < T} R[t, k] − R[T, k]``,
  the drop from the best accuracy the task ever had;
* ``kind="diag"``: ``R[k, k] − R[T, k]``, the drop from just after learning it.
Average forgetting is the mean over k < T. Reduction of forgetting
= ``1 − F_method / F_finetune``. Plasticity = mean ``R[k, k]``. Final average
accuracy = mean ``R[T, k]`` over all k.

Comparing methods across their λ sweeps: a stronger penalty trades plasticity for less
forgetting, so two methods are compared fairly at *matched plasticity*
(:func:`forgetting_at_plasticity`: forgetting interpolated along a method's sweep,
:func:`sweep_tradeoff`: the sweep's points from a results dict). This is a reading aid
for the trade-off curves; λ itself is always chosen on dev.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = [
    "accuracy_at_k",
    "average_forgetting",
    "final_average_accuracy",
    "forgetting",
    "forgetting_at_plasticity",
    "forgetting_reduction",
    "plasticity",
    "split_matrix",
    "summarize",
    "matched_plasticity",
    "sweep_tradeoff",
]


def accuracy_at_k(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """(B, C) logits and (B,) targets → {k: fraction of rows whose target is in the top k}.

    Ties are broken against the target (a row of equal logits is not a hit), so that
    a constant model scores 0, not 1/C."""
    target_logit = logits.gather(1, targets[:, None])
    rank = (logits > target_logit).sum(1) + (logits == target_logit).sum(1) - 1
    return {k: float((rank < k).float().mean()) for k in ks}


def _as_matrix(R) -> np.ndarray:
    """``R`` as a float array; ``None`` entries (tasks not yet seen) become nan."""
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] < 1 or R.shape[1] < R.shape[0]:
        raise ValueError(f"accuracy matrix must be (T, K) with K >= T >= 1, got {R.shape}")
    return R


def split_matrix(entry: dict, split: str = "test") -> np.ndarray:
    """The accuracy matrix of one method's results entry (the harness's JSON) on
    ``split``: ``"test"`` (``accuracy_matrix``) or ``"dev"`` (``dev_accuracy_matrix``)."""
    if split not in ("dev", "test"):
        raise ValueError(f"unknown split {split!r}; valid: 'dev', 'test'")
    return _as_matrix(entry["dev_accuracy_matrix" if split == "dev" else "accuracy_matrix"])


def forgetting(R, kind: str = "max") -> np.ndarray:
    """Forgetting of every task k < T (array of length T−1; T = number of rows − 1)."""
    R = _as_matrix(R)
    last = R.shape[0] - 1
    if kind == "max":
        return np.array([R[k:last, k].max() - R[last, k] for k in range(last)])
    if kind == "diag":
        return np.array([R[k, k] - R[last, k] for k in range(last)])
    raise ValueError(f"unknown kind {kind!r}; valid: 'max', 'diag'")


def average_forgetting(R, kind: str = "max") -> float:
    """Mean forgetting over the tasks k < T (nan with a single task)."""
    f = forgetting(R, kind)
    return float(f.mean()) if f.size else float("nan")


def forgetting_reduction(f_method: float, f_finetune: float) -> float:
    """``1 − F_method / F_finetune``: 1 = no forgetting left, 0 = as bad as fine-tuning.

    nan when fine-tuning did not forget (``F_finetune ≤ 0``): no reduction to measure."""
    if not np.isfinite(f_finetune) or f_finetune <= 0:
        return float("nan")
    return float(1.0 - f_method / f_finetune)


def plasticity(R) -> float:
    """Mean accuracy on each task just after learning it, ``mean_k R[k, k]``."""
    R = _as_matrix(R)
    return float(np.mean([R[k, k] for k in range(R.shape[0])]))


def final_average_accuracy(R) -> float:
    """Mean accuracy over the tasks seen so far, after the last one: ``mean_k R[T, k]``."""
    R = _as_matrix(R)
    last = R.shape[0] - 1
    return float(R[last, : last + 1].mean())


def summarize(R, R_finetune=None, kind: str = "max") -> dict:
    """Every metric of one accuracy matrix as JSON-ready floats (``None`` for nan).

    ``forgetting_reduction`` is included only when ``R_finetune`` is given."""

    def clean(x):
        return None if x is None or not np.isfinite(x) else float(x)

    out = {
        "avg_forgetting": clean(average_forgetting(R, kind)),
        "avg_forgetting_diag": clean(average_forgetting(R, "diag")),
        "forgetting": [clean(x) for x in forgetting(R, kind)],
        "plasticity": clean(plasticity(R)),
        "final_avg_accuracy": clean(final_average_accuracy(R)),
    }
    if R_finetune is not None:
        out["forgetting_reduction"] = clean(
            forgetting_reduction(average_forgetting(R, kind), average_forgetting(R_finetune, kind))
        )
    return out


def forgetting_at_plasticity(plasticity_values, forgetting_values, target: float) -> float:
    """Forgetting of a λ sweep read off at plasticity ``target``.

    ``plasticity_values[i]``, ``forgetting_values[i]``: one point per λ (fine-tuning,
    λ = 0, may be one of them). The points are sorted by plasticity (points of equal
    plasticity are averaged) and joined by straight lines; the result is the curve's
    forgetting at ``target``, or nan when ``target`` lies outside the plasticities the
    sweep reached (no extrapolation)."""
    x = np.asarray(plasticity_values, dtype=float)
    y = np.asarray(forgetting_values, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two 1-d arrays of equal length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size == 0 or not np.isfinite(target) or target < x.min() or target > x.max():
        return float("nan")
    xs = np.unique(x)
    ys = np.array([y[x == v].mean() for v in xs])
    return float(np.interp(target, xs, ys))


def sweep_tradeoff(
    results: dict, method: str, split: str = "test", with_finetune: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lambdas, plasticity, forgetting)`` of ``method``'s λ sweep in a results dict
    (the harness's JSON), on ``split`` (``"dev"`` or ``"test"``), sorted by λ.

    With ``with_finetune`` the fine-tuning run is added as the point λ = 0 (the limit of
    a vanishing penalty), when the results have it."""
    if split not in ("dev", "test"):
        raise ValueError(f"unknown split {split!r}; valid: 'dev', 'test'")
    entry = results["methods"][method]
    if "lambda_sweep" not in entry:
        raise KeyError(f"method {method!r} has no lambda_sweep (not a consolidation method)")
    points = [(s["lambda"], s[f"{split}_plasticity"], s[f"{split}_avg_forgetting"]) for s in entry["lambda_sweep"]]
    base = results["methods"].get("finetune")
    if with_finetune and base is not None:
        R = split_matrix(base, split)
        points.append((0.0, plasticity(R), average_forgetting(R)))
    points.sort(key=lambda p: p[0])
    arr = np.asarray(points, dtype=float)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def matched_plasticity(results: dict, methods: Sequence[str] = ("ewc", "kfac"), split: str = "test") -> list[dict]:
    """Compare consolidation methods at equal plasticity, read off their λ sweeps.

    For each method ``m`` in ``methods`` (its λ chosen on dev by the harness): the
    plasticity of ``m``'s chosen run, and at that plasticity every method's forgetting
    interpolated along its own sweep (:func:`forgetting_at_plasticity`, fine-tuning as
    λ = 0) with its reduction vs fine-tuning. nan where a method's sweep never reached
    that plasticity. A reading aid for the trade-off curves: nothing here picks λ."""
    curves = {m: sweep_tradeoff(results, m, split) for m in methods}
    base = results["methods"].get("finetune")
    f_ft = float("nan")
    if base is not None:
        f_ft = average_forgetting(split_matrix(base, split))
    rows = []
    for ref in methods:
        chosen = results["methods"][ref]["lambda"]
        sweep = {s["lambda"]: s for s in results["methods"][ref]["lambda_sweep"]}
        target = sweep[chosen][f"{split}_plasticity"]
        row = {"matched to": ref, "lambda": chosen, "plasticity": target}
        for m, (_, plast, forg) in curves.items():
            f = forgetting_at_plasticity(plast, forg, target)
            row[f"{m} forgetting"] = f
            row[f"{m} reduction"] = forgetting_reduction(f, f_ft) if np.isfinite(f) else float("nan")
        rows.append(row)
    return rows
