"""Intervals, verdicts, frontiers and power (kfac_tutorial.statistics) on hand-made runs,
and the λ-grid extension of the harness."""

import numpy as np
import pytest

from kfac_tutorial import statistics as st
from kfac_tutorial.experiments import combine_seeds, next_lambda


def _hits(acc: float, n: int, rng) -> str:
    """n hits with exactly round(acc * n) ones, in a seeded random order."""
    ones = int(round(acc * n))
    h = np.array([1] * ones + [0] * (n - ones))
    rng.shuffle(h)
    return st.encode_hits(h)


def _entry(R, n, rng, restored=None, sweep=None, lam=0.0):
    """A method entry from an accuracy matrix R (T x T, None above the diagonal)."""
    hits = [[None if v is None else _hits(v, n, rng) for v in row] for row in R]
    e = {
        "test_hits": hits,
        "lambda": lam,
        "test_hits_restored": None if restored is None else [_hits(v, n, rng) for v in restored],
    }
    if sweep is not None:
        e["lambda_sweep"] = [
            {"lambda": l, "test_hits": [[None if v is None else _hits(v, n, rng) for v in row] for row in M]} for l, M in sweep
        ]
    return e


def _run(seed, methods, n=400):
    rng = np.random.default_rng(seed)
    return {"seed": seed, "examples": {}, "methods": {m: _entry(R, n, rng, **kw) for m, (R, kw) in methods.items()}}


FT = [[0.9, None], [0.3, 0.9]]  # forgets 0.6
GOOD = [[0.9, None], [0.8, 0.85]]  # forgets 0.1
SAME = [[0.9, None], [0.8, 0.85]]


def test_hits_round_trip():
    assert st.encode_hits([True, False, 1, 0]) == "1010"
    assert st.decode_hits("1010").tolist() == [1.0, 0.0, 1.0, 0.0]


def test_a_clear_difference_gets_a_verdict_and_identical_methods_tie():
    runs = [_run(s, {"finetune": (FT, {}), "ewc": (GOOD, {}), "kfac": (SAME, {})}) for s in range(3)]
    # make kfac's hits identical to ewc's: the same method twice
    for r in runs:
        r["methods"]["kfac"] = dict(r["methods"]["ewc"])
    boot = st.bootstrap_seeds(runs, n_boot=500)
    comps = {(c["a"], c["b"], c["metric"]): c for c in st.compare(boot)}
    tie = comps[("kfac", "ewc", "forgetting_reduction")]
    assert tie["verdict"] == "tie" and tie["diff"] == 0.0 and tie["ci95"] == [0.0, 0.0]
    clear = comps[("finetune", "ewc", "avg_forgetting")]
    assert clear["diff"] == pytest.approx(0.5, abs=1e-9)  # 0.6 − 0.1, exact hit counts
    assert clear["ci95"][0] > 0 and clear["verdict"] == "ewc"  # lower forgetting wins
    assert np.isnan(boot["points"]["finetune"]["forgetting_reduction"]).all()  # no reduction of itself
    assert ("finetune", "ewc", "forgetting_reduction") not in comps  # so no comparison on it


def test_interval_contains_the_point_estimate_and_is_reproducible():
    runs = [
        _run(s, {"finetune": (FT, {}), "ewc": (GOOD, {}), "kfac": ([[0.9, None], [0.75, 0.88]], {})}, n=150) for s in range(4)
    ]
    a = st.summarize_seeds(st.bootstrap_seeds(runs, n_boot=400, bootstrap_seed=7))
    b = st.summarize_seeds(st.bootstrap_seeds(runs, n_boot=400, bootstrap_seed=7))
    c = st.summarize_seeds(st.bootstrap_seeds(runs, n_boot=400, bootstrap_seed=8))
    assert a == b and a != c
    for m, s in a.items():
        for metric in ("avg_forgetting", "plasticity", "final_avg_accuracy"):
            lo, hi = s["ci95"][metric]
            assert lo <= s["mean"][metric] <= hi and lo < hi, (m, metric)
    # the mean reduction of ewc: 1 − 0.1/0.6 on every seed
    assert a["ewc"]["mean"]["forgetting_reduction"] == pytest.approx(1 - 0.1 / 0.6, abs=1e-9)


def test_verdict_rule():
    assert st.verdict("a", "b", "forgetting_reduction", [0.01, 0.2]) == "a"
    assert st.verdict("a", "b", "forgetting_reduction", [-0.2, -0.01]) == "b"
    assert st.verdict("a", "b", "avg_forgetting", [0.01, 0.2]) == "b"
    assert st.verdict("a", "b", "avg_forgetting", [-0.2, -0.01]) == "a"
    for ci in ([-0.1, 0.1], [0.0, 0.3], [-0.3, 0.0], [None, None]):
        assert st.verdict("a", "b", "plasticity", ci) == "tie"


def test_table_and_encoder_split_adds_up():
    # forgetting 0.6; with the old table rows restored task 0 scores 0.7: encoder 0.2, table 0.4
    runs = [_run(0, {"finetune": (FT, {"restored": [0.7]})})]
    boot = st.bootstrap_seeds(runs, n_boot=50)
    p = {k: v[0] for k, v in boot["points"]["finetune"].items()}
    assert p["avg_forgetting"] == pytest.approx(0.6)
    assert p["forgetting_encoder"] == pytest.approx(0.2)
    assert p["forgetting_table"] == pytest.approx(0.4)


def test_matched_plasticity_interpolates_along_the_frontier():
    # finetune: plasticity 0.9, forgetting 0.6. Sweep of "a": λ=1 → (0.8, 0.3), λ=10 → (0.7, 0.1).
    # Sweep of "b": λ=1 → (0.85, 0.4), λ=10 → (0.6, 0.2). Both chose λ=1.
    a1, a10 = [[0.9, None], [0.6, 0.7]], [[0.9, None], [0.8, 0.5]]
    b1, b10 = [[0.9, None], [0.5, 0.8]], [[0.9, None], [0.7, 0.3]]
    methods = {
        "finetune": (FT, {}),
        "a": (a1, {"sweep": [(1.0, a1), (10.0, a10)], "lam": 1.0}),
        "b": (b1, {"sweep": [(1.0, b1), (10.0, b10)], "lam": 1.0}),
    }
    runs = [_run(s, methods, n=200) for s in range(2)]
    m = st.matched_comparison(runs, "a", "b", "a", n_boot=200)
    # at a's plasticity 0.8: a's own point, 0.3; b's points (0.6, 0.2), (0.85, 0.4), (0.9, 0.6)
    # give 0.2 + (0.8 − 0.6) / (0.85 − 0.6) × 0.2 = 0.36
    assert m["plasticity"] == pytest.approx(0.8)
    assert m["forgetting"]["a"] == pytest.approx(0.3) and m["forgetting"]["b"] == pytest.approx(0.36)
    assert m["diff"] == pytest.approx(-0.06)
    assert m["ci95"][0] <= m["diff"] <= m["ci95"][1]
    assert (m["verdict"] == "tie") == (m["ci95"][0] <= 0 <= m["ci95"][1])
    # matched to b (0.85): a's points (0.7, 0.1), (0.8, 0.3), (0.9, 0.6) → 0.45; b: 0.4
    m = st.matched_comparison(runs, "a", "b", "b", n_boot=200)
    assert m["forgetting"]["a"] == pytest.approx(0.45) and m["forgetting"]["b"] == pytest.approx(0.4)
    band = st.frontier_band(runs, "b", grid=[0.6, 0.8, 0.85, 0.95], n_boot=100)
    assert band["forgetting"][:3] == pytest.approx([0.2, 0.36, 0.4])
    assert np.isnan(band["forgetting"][3])  # beyond fine-tuning's plasticity: no extrapolation
    assert band["low"][1] <= 0.36 <= band["high"][1]


def test_minimal_detectable_difference_and_seed_count():
    # SE = 0.1 / 1.96 from the interval [−0.1, 0.1]: MDD = 2.80 × 0.051 = 0.143
    mdd = st.minimal_detectable_difference([-0.1, 0.1], n_seeds=3)
    assert mdd == pytest.approx((1.959964 + 0.841621) * 0.1 / 1.959964)
    assert st.minimal_detectable_difference([-0.1, 0.1], 3, target_seeds=12) == pytest.approx(mdd / 2)
    assert st.seeds_needed([-0.1, 0.1], 3, mdd) == 3
    assert st.seeds_needed([-0.1, 0.1], 3, mdd / 2) == 12


def test_lambda_grid_extends_past_an_edge_optimum_until_interior_or_bound():
    grid = (1.0, 10.0, 100.0)
    assert next_lambda({1.0: 0.5, 10.0: 0.7, 100.0: 0.6}, grid, 3) is None  # interior
    assert next_lambda({1.0: 0.5, 10.0: 0.6, 100.0: 0.7}, grid, 3) == 1000.0  # top edge
    assert next_lambda({1.0: 0.8, 10.0: 0.6, 100.0: 0.5}, grid, 3) == 0.1  # bottom edge
    assert next_lambda({1.0: 0.7, 10.0: 0.7, 100.0: 0.5}, grid, 3) == 0.1  # tie → smaller λ
    scores = {1.0: 0.5, 10.0: 0.6, 100.0: 0.7}
    tried = []
    while (nxt := next_lambda(scores, grid, 2)) is not None:  # dev keeps rising: stops at the bound
        tried.append(nxt)
        scores[nxt] = scores[max(scores)] + 0.01
    assert tried == [1000.0, 10000.0]
    assert next_lambda({3.5: 0.9}, (3.5,), 3) is None  # one fixed λ: never extended


def test_combine_seeds_writes_the_documented_schema():
    methods = {
        "finetune": (FT, {}),
        "ewc": (GOOD, {"sweep": [(1.0, GOOD)], "lam": 1.0}),
        "kfac": ([[0.9, None], [0.7, 0.88]], {"sweep": [(1.0, [[0.9, None], [0.7, 0.88]])], "lam": 1.0}),
    }
    runs = [_run(s, methods, n=100) for s in (0, 1)]
    out = combine_seeds(runs, n_boot=100, frontier_boot=20)
    assert out["seeds"] == [0, 1] and out["seed"] == 0
    for m, e in out["methods"].items():
        assert len(e["seeds"]) == 2 and set(st.METRICS) <= set(e["mean"]) and set(e["ci95"]) == set(e["mean"])
    first = out["comparisons"][0]
    assert (first["a"], first["b"]) == ("kfac", "ewc")
    assert {"a", "b", "metric", "diff", "ci95", "verdict"} <= set(first)
    for c in out["comparisons"]:
        lo, hi = c["ci95"]
        assert (c["verdict"] == "tie") == (lo is None or lo <= 0 <= hi)
    assert {f["matched_to"] for f in out["frontier_comparisons"]} == {"kfac", "ewc"}


def test_first_tasks_reads_the_runs_after_fewer_tasks():
    from kfac_tutorial.experiments import first_tasks

    ft = [[0.9, None, None], [0.5, 0.9, None], [0.2, 0.6, 0.9]]
    ewc = [[0.9, None, None], [0.85, 0.88, None], [0.7, 0.8, 0.85]]
    runs = [_run(s, {"finetune": (ft, {}), "ewc": (ewc, {})}) for s in range(3)]
    for r in runs:
        r["tasks"] = ["a", "b", "c"]
    combined = combine_seeds(runs, n_boot=200, frontier_boot=20)
    combined["tasks"] = ["a", "b", "c"]
    whole = first_tasks(combined, 3, n_boot=200)
    for m in ("finetune", "ewc"):  # all tasks: the combined statistics, the same draws
        for metric in ("avg_forgetting", "plasticity", "final_avg_accuracy"):
            assert whole["methods"][m]["mean"][metric] == pytest.approx(combined["methods"][m]["mean"][metric])
    two = first_tasks(combined, 2, n_boot=200)
    assert two["tasks"] == ["a", "b"] and two["seeds"] == [0, 1, 2]
    # after two tasks: fine-tuning forgets 0.9 - 0.5, EWC 0.9 - 0.85 (exact hit counts)
    assert two["methods"]["finetune"]["mean"]["avg_forgetting"] == pytest.approx(0.4)
    assert two["methods"]["ewc"]["mean"]["avg_forgetting"] == pytest.approx(0.05)
    assert two["methods"]["ewc"]["mean"]["forgetting_reduction"] == pytest.approx(1 - 0.05 / 0.4)
    c = next(c for c in two["comparisons"] if c["metric"] == "avg_forgetting")
    assert c["verdict"] == "ewc" and c["ci95"][0] > 0
    with pytest.raises(ValueError, match="between 2 and the number of tasks"):
        first_tasks(combined, 4)


def test_reproduction_check_has_an_exact_and_a_cross_machine_level():
    from kfac_tutorial.experiments import reproduction_check

    ex = {"a": {"test": 100}, "b": {"test": 200}}
    rec = {"seed": 0, "tasks": ["a", "b"], "examples": ex, "methods": {"kfac": {"accuracy_matrix": [[0.9, None], [0.8, 0.7]]}}}

    def live(r10):
        return {
            "seed": 0,
            "tasks": ["a", "b"],
            "examples": ex,
            "methods": {"kfac": {"accuracy_matrix": [[0.9, None], [r10, 0.7]]}},
        }

    same = reproduction_check(live(0.82), rec, ["kfac"])  # 2 mentions of 100
    assert same["reproduced"] and same["agrees"] and same["max_mentions"] == {"kfac": 2}
    other = reproduction_check(live(0.84), rec, ["kfac"])  # 4 points: another CPU's noise
    assert not other["reproduced"] and other["agrees"]
    assert other["max_accuracy"]["kfac"] == pytest.approx(0.04)
    broken = reproduction_check(live(0.5), rec, ["kfac"])  # a broken method: 30 points
    assert not broken["reproduced"] and not broken["agrees"]
