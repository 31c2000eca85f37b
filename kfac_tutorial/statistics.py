"""Statistics of the sequential experiments: intervals, verdicts, frontiers, power.

Every interval here is a **paired two-stage bootstrap over seeds and test mentions**:
one bootstrap draw ``b``

1. resamples the seeds with replacement (``S`` of them: a seed is a whole run, with its
   own task subsets, initialisation, batch order and Fisher samples);
2. for every seed slot ``j`` it resamples, task by task, that seed's test mentions with
   replacement (slot ``j`` of draw ``b`` uses mention draw ``(b + j) mod B`` of its seed,
   so that a seed drawn twice gets two different mention samples);
3. recomputes every metric from the per-mention hits (acc@1, 0/1) of every method on
   the *same* resampled seeds and mentions (paired: a difference between methods never
   mixes different test mentions), and averages it over the seed slots.

The 95% interval is the 2.5 and 97.5 percentiles of the ``B`` draws (percentile
bootstrap; draws where a metric is undefined, e.g. a reduction when fine-tuning did not
forget, are left out). The point estimate is the mean over seeds of the per-seed values.
:func:`verdict` is the one rule that ranks two methods: ``"tie"`` exactly when the
interval of their difference contains 0. The random generator is seeded
(``bootstrap_seed``): the same inputs give the same intervals.

Per-mention hits are stored in the results JSON as strings of ``'0'``/``'1'``
(:func:`encode_hits`): ``test_hits[t][k]`` = the hits of task k's test mentions after
training on task t (``None`` for k > t), and ``test_hits_restored[k]`` = the same after
the last task with task k's concept-table rows put back to their values just after
task k (the forgetting that remains is the encoder's).
"""

from __future__ import annotations

from itertools import combinations
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "LOWER_IS_BETTER",
    "METRICS",
    "METRICS_COMPARED",
    "bootstrap_seeds",
    "compare",
    "decode_hits",
    "encode_hits",
    "frontier_band",
    "matched_comparison",
    "minimal_detectable_difference",
    "seeds_needed",
    "summarize_seeds",
    "verdict",
]

#: Metrics summarised over seeds (``forgetting_reduction`` needs fine-tuning in the run).
METRICS = ("avg_forgetting", "forgetting_reduction", "plasticity", "final_avg_accuracy", "forgetting_encoder", "forgetting_table")
#: Metrics of the ``comparisons`` of a combined record: the four headline metrics, then
#: the forgetting split into the encoder's and the concept table's parts.
METRICS_COMPARED = (
    "avg_forgetting",
    "forgetting_reduction",
    "plasticity",
    "final_avg_accuracy",
    "forgetting_encoder",
    "forgetting_table",
)
#: Metrics for which the smaller value is the better one.
LOWER_IS_BETTER = ("avg_forgetting", "forgetting_encoder", "forgetting_table")
#: z-values of a two-sided 5% test and of 80% power.
Z_ALPHA, Z_POWER = 1.959964, 0.841621


# -- hits ---------------------------------------------------------------------------------


def encode_hits(hits: Iterable) -> str:
    """0/1 hits (bools, ints or a bool tensor) → a string such as ``"0110"``."""
    return "".join("1" if bool(h) else "0" for h in list(hits))


def decode_hits(text: str) -> np.ndarray:
    """``"0110"`` → ``array([0., 1., 1., 0.])`` (float64)."""
    return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.float64) - ord("0")


# -- per-draw metrics ---------------------------------------------------------------------


def _matrices(hits: list[list], idx: list[np.ndarray] | None) -> np.ndarray:
    """``(B, T, K)`` accuracy matrices of one run from its hit strings; ``idx[k]`` is a
    ``(B, n_k)`` array of resampled mention indices of task k (None: no resampling,
    ``B = 1``). Entries with k > t are nan."""
    T, K = len(hits), len(hits[0])
    B = 1 if idx is None else idx[0].shape[0]
    R = np.full((B, T, K), np.nan)
    for t in range(T):
        for k in range(K):
            h = hits[t][k]
            if h is None:
                continue
            arr = decode_hits(h)
            R[:, t, k] = arr.mean() if idx is None else arr[idx[k]].mean(axis=1)
    return R


def _restored(hits_restored: list | None, idx, B: int) -> np.ndarray | None:
    """``(B, K-1)`` accuracies of the old tasks with their table rows restored."""
    if not hits_restored:
        return None
    out = np.empty((B, len(hits_restored)))
    for k, h in enumerate(hits_restored):
        arr = decode_hits(h)
        out[:, k] = arr.mean() if idx is None else arr[idx[k]].mean(axis=1)
    return out


def _run_metrics(R: np.ndarray, R_restored: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Vectorised metrics of ``(B, T, K)`` matrices (shared/DESIGN.md §6, ``max`` kind)."""
    T = R.shape[1]
    last = T - 1
    out = {
        "plasticity": np.mean([R[:, k, k] for k in range(T)], axis=0),
        "final_avg_accuracy": np.mean([R[:, last, k] for k in range(T)], axis=0),
    }
    if last == 0:
        nan = np.full(R.shape[0], np.nan)
        out.update(avg_forgetting=nan, forgetting_encoder=nan, forgetting_table=nan)
        return out
    best = np.stack([np.max(R[:, k:last, k], axis=1) for k in range(last)], axis=1)  # (B, T-1)
    final = np.stack([R[:, last, k] for k in range(last)], axis=1)
    out["avg_forgetting"] = (best - final).mean(axis=1)
    if R_restored is not None:
        out["forgetting_encoder"] = (best - R_restored).mean(axis=1)
        out["forgetting_table"] = out["avg_forgetting"] - out["forgetting_encoder"]
    else:
        out["forgetting_encoder"] = out["forgetting_table"] = np.full(R.shape[0], np.nan)
    return out


def _reduction(f: np.ndarray, f_ft: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f_ft > 0, 1.0 - f / f_ft, np.nan)


def _mention_draws(entry: dict, B: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``(B, n_k)`` resampled mention indices of every task of one seed's run."""
    hits = entry["test_hits"]
    last = hits[-1]
    return [rng.integers(0, len(h), size=(B, len(h))) for h in last]


# -- over seeds -----------------------------------------------------------------------------


def bootstrap_seeds(
    seed_runs: Sequence[dict], methods: Sequence[str] | None = None, n_boot: int = 2000, bootstrap_seed: int = 0
) -> dict:
    """Per-method point values and bootstrap draws of :data:`METRICS` over seeds.

    ``seed_runs``: one results dict of the harness per seed (same methods and tasks;
    each method entry holds ``test_hits``). Returns ``{"points": {m: {metric: (S,)}},
    "draws": {m: {metric: (B,)}}}``: per-seed values and the two-stage paired bootstrap
    draws of their mean over seeds (module docs). ``forgetting_reduction`` is relative to
    the fine-tuning run of the same seed and draw."""
    methods = list(methods or seed_runs[0]["methods"])
    S, B = len(seed_runs), int(n_boot)
    rng = np.random.default_rng(bootstrap_seed)
    per_seed_points = {m: {k: np.empty(S) for k in METRICS} for m in methods}
    per_seed_draws = {m: {k: np.empty((S, B)) for k in METRICS} for m in methods}
    for s, run in enumerate(seed_runs):
        entries = run["methods"]
        idx = _mention_draws(entries[methods[0]], B, rng)
        point_metrics, draw_metrics = {}, {}
        for m in dict.fromkeys(methods + (["finetune"] if "finetune" in entries else [])):
            e = entries[m]
            point_metrics[m] = _run_metrics(_matrices(e["test_hits"], None), _restored(e.get("test_hits_restored"), None, 1))
            draw_metrics[m] = _run_metrics(_matrices(e["test_hits"], idx), _restored(e.get("test_hits_restored"), idx, B))
        for m in methods:
            for key in METRICS:
                if key == "forgetting_reduction":
                    if "finetune" in entries and m != "finetune":
                        p = _reduction(point_metrics[m]["avg_forgetting"], point_metrics["finetune"]["avg_forgetting"])
                        d = _reduction(draw_metrics[m]["avg_forgetting"], draw_metrics["finetune"]["avg_forgetting"])
                    else:
                        p, d = np.array([np.nan]), np.full(B, np.nan)
                else:
                    p, d = point_metrics[m][key], draw_metrics[m][key]
                per_seed_points[m][key][s] = p[0]
                per_seed_draws[m][key][s] = d
    sel = rng.integers(0, S, size=(B, S))  # resampled seeds of every draw
    slot = (np.arange(B)[:, None] + np.arange(S)[None, :]) % B  # mention draw of each slot
    with _quiet():
        draws = {
            m: {k: np.nanmean(v[sel, slot], axis=1) if np.isfinite(v).any() else np.full(B, np.nan) for k, v in d.items()}
            for m, d in per_seed_draws.items()
        }
    return {
        "points": per_seed_points,
        "draws": draws,
        "n_boot": B,
        "bootstrap_seed": bootstrap_seed,
        "_per_seed_draws": per_seed_draws,
        "_sel": sel,
        "_slot": slot,
    }


def _interval(draws: np.ndarray) -> list[float | None]:
    d = draws[np.isfinite(draws)]
    if d.size < max(10, 0.5 * draws.size):
        return [None, None]
    lo, hi = np.percentile(d, [2.5, 97.5])
    return [float(lo), float(hi)]


def _mean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def verdict(a: str, b: str, metric: str, ci95: Sequence[float | None]) -> str:
    """The better of ``a`` and ``b`` on ``metric`` by the interval of ``a − b``, or
    ``"tie"`` exactly when the interval contains 0 (or is undefined). For the metrics of
    :data:`LOWER_IS_BETTER` a negative difference favours ``a``, otherwise a positive one."""
    lo, hi = ci95
    if lo is None or hi is None or lo <= 0.0 <= hi:
        return "tie"
    a_larger = lo > 0.0
    lower_better = metric in LOWER_IS_BETTER
    return b if a_larger == lower_better else a


def summarize_seeds(boot: dict) -> dict:
    """``{method: {"mean": {metric: x}, "ci95": {metric: [lo, hi]}}}`` from
    :func:`bootstrap_seeds`."""
    out = {}
    for m, pts in boot["points"].items():
        out[m] = {"mean": {k: _mean(v) for k, v in pts.items()}, "ci95": {k: _interval(boot["draws"][m][k]) for k in pts}}
    return out


def compare(
    boot: dict,
    pairs: Sequence[tuple[str, str]] | None = None,
    metrics: Sequence[str] = ("avg_forgetting", "forgetting_reduction", "plasticity", "final_avg_accuracy"),
) -> list[dict]:
    """``[{"a", "b", "metric", "diff", "ci95", "verdict"}, ...]``: ``diff`` = mean over
    seeds of ``a − b`` (per seed, paired), ``ci95`` its paired bootstrap interval and
    ``verdict`` from :func:`verdict`. ``pairs`` default: every pair of methods (in the
    order of the run), at least (kfac, ewc) first when both are there. A metric undefined
    for a method (fine-tuning's own reduction) gives no entry."""
    methods = list(boot["points"])
    if pairs is None:
        pairs = [(a, b) for a, b in combinations(methods, 2)]
        pairs = [(b, a) if (a, b) == ("ewc", "kfac") else (a, b) for a, b in pairs]
        pairs.sort(key=lambda p: p != ("kfac", "ewc"))
    out = []
    for a, b in pairs:
        for metric in metrics:
            if not (np.isfinite(boot["points"][a][metric]).any() and np.isfinite(boot["points"][b][metric]).any()):
                continue  # undefined for a method (fine-tuning's reduction of its own forgetting)
            diff_points = boot["points"][a][metric] - boot["points"][b][metric]
            diff_draws = boot["draws"][a][metric] - boot["draws"][b][metric]
            ci = _interval(diff_draws)
            out.append(
                {"a": a, "b": b, "metric": metric, "diff": _mean(diff_points), "ci95": ci, "verdict": verdict(a, b, metric, ci)}
            )
    return out


# -- frontiers -------------------------------------------------------------------------------


def _sweep_points(run: dict, method: str, idx, B: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(lambdas, plasticity (B, P), forgetting (B, P), final (B, P))`` of a method's λ
    sweep in one seed's run, fine-tuning added as λ = 0 when the run has it."""
    entry = run["methods"][method]
    pts = [(s["lambda"], s["test_hits"]) for s in entry["lambda_sweep"]]
    if "finetune" in run["methods"]:
        pts.append((0.0, run["methods"]["finetune"]["test_hits"]))
    pts.sort(key=lambda p: p[0])
    lams = np.array([p[0] for p in pts])
    P = np.empty((B, len(pts)))
    F = np.empty((B, len(pts)))
    A = np.empty((B, len(pts)))
    for i, (_, hits) in enumerate(pts):
        mets = _run_metrics(_matrices(hits, idx))
        P[:, i], F[:, i], A[:, i] = mets["plasticity"], mets["avg_forgetting"], mets["final_avg_accuracy"]
    return lams, P, F, A


def _interp(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """``y`` at ``x = target`` along the points sorted by ``x`` (equal ``x`` averaged);
    nan outside their range (no extrapolation):
    :func:`kfac_tutorial.metrics.forgetting_at_plasticity`."""
    from .metrics import forgetting_at_plasticity

    return forgetting_at_plasticity(x, y, target)


def matched_comparison(
    seed_runs: Sequence[dict], a: str, b: str, matched_to: str, n_boot: int = 1000, bootstrap_seed: int = 0
) -> dict:
    """Forgetting of ``a`` and ``b`` at the plasticity of ``matched_to``'s chosen run.

    Per seed and bootstrap draw: target = plasticity of ``matched_to``'s dev-chosen run;
    each method's forgetting is interpolated along its own λ sweep (forgetting against
    plasticity, fine-tuning as λ = 0; :func:`_interp`, nan outside the sweep). Returns
    ``{"a", "b", "matched_to", "plasticity", "forgetting": {a: x, b: x}, "metric":
    "forgetting_at_matched_plasticity", "diff", "ci95", "verdict", "coverage"}`` where
    ``diff`` is the mean over seeds of forgetting(a) − forgetting(b) (lower is better),
    the interval is the paired two-stage bootstrap of the module docs and ``coverage``
    the fraction of draws where both sweeps reached the target."""
    S, B = len(seed_runs), int(n_boot)
    rng = np.random.default_rng(bootstrap_seed)
    point = np.full((S, 3), np.nan)  # target, f_a, f_b
    draws = np.full((S, B, 3), np.nan)
    for s, run in enumerate(seed_runs):
        idx = _mention_draws(run["methods"][a], B, rng)
        chosen = run["methods"][matched_to]
        tgt_pt = _run_metrics(_matrices(chosen["test_hits"], None))["plasticity"][0]
        tgt_dr = _run_metrics(_matrices(chosen["test_hits"], idx))["plasticity"]
        curves_pt = {m: _sweep_points(run, m, None, 1) for m in (a, b)}
        curves_dr = {m: _sweep_points(run, m, idx, B) for m in (a, b)}
        point[s] = [tgt_pt] + [_interp(curves_pt[m][1][0], curves_pt[m][2][0], tgt_pt) for m in (a, b)]
        for j in range(B):
            draws[s, j] = [tgt_dr[j]] + [_interp(curves_dr[m][1][j], curves_dr[m][2][j], tgt_dr[j]) for m in (a, b)]
    sel = rng.integers(0, S, size=(B, S))
    slot = (np.arange(B)[:, None] + np.arange(S)[None, :]) % B
    per = draws[:, :, 1] - draws[:, :, 2]  # (S, B)
    with _quiet():
        boot = np.nanmean(per[sel, slot], axis=1) if np.isfinite(per).any() else np.full(B, np.nan)
    ci = _interval(boot)
    diff = point[:, 1] - point[:, 2]
    return {
        "a": a,
        "b": b,
        "matched_to": matched_to,
        "metric": "forgetting_at_matched_plasticity",
        "plasticity": _mean(point[:, 0]),
        "forgetting": {a: _mean(point[:, 1]), b: _mean(point[:, 2])},
        "diff": _mean(diff),
        "ci95": ci,
        "verdict": verdict(a, b, "avg_forgetting", ci),
        "coverage": float(np.isfinite(boot).mean()),
    }


def frontier_band(
    seed_runs: Sequence[dict], method: str, grid: Sequence[float] | None = None, n_boot: int = 500, bootstrap_seed: int = 0
) -> dict:
    """A method's forgetting–plasticity frontier over its λ sweep, mean and 95% band over
    seeds: on a plasticity ``grid`` (default: 25 points spanning the range every seed's
    sweep covers), each seed's forgetting interpolated along its sweep, averaged over
    seeds; the band is the seed-and-mention bootstrap of that mean (module docs).
    Returns ``{"plasticity", "forgetting", "low", "high"}`` (lists; nan outside the
    range a draw covers)."""
    S, B = len(seed_runs), int(n_boot)
    rng = np.random.default_rng(bootstrap_seed)
    pts = [_sweep_points(run, method, None, 1) for run in seed_runs]
    if grid is None:
        lo = max(p[1][0].min() for p in pts)
        hi = min(p[1][0].max() for p in pts)
        grid = np.linspace(lo, hi, 25) if hi > lo else np.array([lo])
    grid = np.asarray(grid, dtype=float)
    with _quiet():
        mean_curve = np.nanmean([[_interp(p[1][0], p[2][0], g) for g in grid] for p in pts], axis=0)
    curves = np.full((S, B, grid.size), np.nan)
    for s, run in enumerate(seed_runs):
        idx = _mention_draws(run["methods"][method], B, rng)
        _, P, F, _ = _sweep_points(run, method, idx, B)
        for j in range(B):
            curves[s, j] = [_interp(P[j], F[j], g) for g in grid]
    sel = rng.integers(0, S, size=(B, S))
    slot = (np.arange(B)[:, None] + np.arange(S)[None, :]) % B
    with np.errstate(all="ignore"), _quiet():
        boot = np.nanmean(curves[sel, slot], axis=1)  # (B, G)
        low = np.nanpercentile(boot, 2.5, axis=0)
        high = np.nanpercentile(boot, 97.5, axis=0)
    return {"plasticity": grid.tolist(), "forgetting": mean_curve.tolist(), "low": low.tolist(), "high": high.tolist()}


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


# -- power -----------------------------------------------------------------------------------


def minimal_detectable_difference(
    ci95: Sequence[float], n_seeds: int, target_seeds: int | None = None, power_z: float = Z_POWER
) -> float:
    """The smallest true difference that a two-sided 5% test detects with 80% power:
    ``(z_0.975 + z_0.8) · SE``, with SE read off a bootstrap interval of a difference
    (``SE ≈ (high − low) / (2 · 1.96)``) measured with ``n_seeds`` seeds, rescaled to
    ``target_seeds`` seeds (``SE ∝ 1/√seeds``: seeds are averaged)."""
    lo, hi = ci95
    se = (hi - lo) / (2 * Z_ALPHA)
    if target_seeds is not None:
        se *= np.sqrt(n_seeds / target_seeds)
    return float((Z_ALPHA + power_z) * se)


def seeds_needed(ci95: Sequence[float], n_seeds: int, difference: float) -> int:
    """How many seeds make :func:`minimal_detectable_difference` at most ``difference``."""
    mdd1 = minimal_detectable_difference(ci95, n_seeds, 1)
    return max(1, int(np.ceil((mdd1 / difference) ** 2)))
