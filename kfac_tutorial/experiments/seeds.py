"""Several seeds of one comparison: :func:`run_seeds` and :func:`combine_seeds`.

A seed is a whole run (task subsets, initialisation, batch order, Fisher samples). The
combined JSON keeps the first seed's results dict as it is and adds

* ``"seeds"``: the seeds run, and ``"examples_per_seed"``;
* per method ``"seeds"`` (that method's per-seed dicts), ``"mean"`` and ``"ci95"``
  (metric → value / ``[low, high]``) for :data:`kfac_tutorial.statistics.METRICS`;
* ``"comparisons"``: one entry per pair of methods and metric, ``{"a", "b", "metric",
  "diff", "ci95", "verdict"}`` (:func:`kfac_tutorial.statistics.compare`);
* ``"frontier_comparisons"``: forgetting at matched plasticity for the pairs of swept
  methods, matched to each one's chosen run
  (:func:`kfac_tutorial.statistics.matched_comparison`);
* ``"statistics"``: how the intervals were made and the smallest difference in
  reduction the design detects (:func:`kfac_tutorial.statistics.minimal_detectable_difference`).
"""

from __future__ import annotations

import functools

from typing import Callable, Sequence

from .. import statistics as st
from .methods import method_spec
from .profiles import Profile

__all__ = ["FRONTIER_PAIRS", "combine_seeds", "first_tasks", "merge_recorded", "run_seeds", "seed_runs"]

#: Pairs compared along their λ frontiers when the run holds both.
FRONTIER_PAIRS = (("kfac", "ewc"), ("kfac_online", "ewc_online"), ("kfac", "l2"), ("ewc", "l2"))
N_BOOT = 2000
BOOTSTRAP_SEED = 0


def combine_seeds(
    runs: Sequence[dict], n_boot: int = N_BOOT, bootstrap_seed: int = BOOTSTRAP_SEED, frontier_boot: int = 500
) -> dict:
    """The combined results dict of several seeds' runs (module docs). Methods missing
    from some run (a run still in progress) are left out of the statistics."""
    if not runs:
        raise ValueError("no runs to combine")
    methods = [m for m in runs[0]["methods"] if all(m in r["methods"] for r in runs)]
    out = dict(runs[0])
    out["seeds"] = [r["seed"] for r in runs]
    out["examples_per_seed"] = {str(r["seed"]): r["examples"] for r in runs}
    out["total_seconds"] = sum(r.get("total_seconds", 0.0) for r in runs)
    out["methods"] = {m: dict(e) for m, e in runs[0]["methods"].items()}
    if not methods:
        return out
    boot = st.bootstrap_seeds(runs, methods, n_boot=n_boot, bootstrap_seed=bootstrap_seed)
    summary = st.summarize_seeds(boot)
    for m in methods:
        out["methods"][m]["seeds"] = [r["methods"][m] for r in runs]
        out["methods"][m]["mean"] = summary[m]["mean"]
        out["methods"][m]["ci95"] = summary[m]["ci95"]
    # the four headline metrics, then where the forgetting lives (table rows restored)
    out["comparisons"] = st.compare(boot, metrics=st.METRICS_COMPARED)
    frontier = []
    swept = [m for m in methods if method_spec(m).swept]
    for a, b in FRONTIER_PAIRS:
        if a in swept and b in swept:
            for ref in (a, b):
                frontier.append(st.matched_comparison(runs, a, b, ref, n_boot=frontier_boot, bootstrap_seed=bootstrap_seed))
    out["frontier_comparisons"] = frontier
    power = {}
    for c in out["comparisons"]:
        if c["metric"] == "forgetting_reduction" and c["ci95"][0] is not None:
            power[f"{c['a']}-{c['b']}"] = {
                "mdd": st.minimal_detectable_difference(c["ci95"], len(runs)),
                "mdd_per_seed": st.minimal_detectable_difference(c["ci95"], len(runs), 1),
            }
    out["statistics"] = {
        "intervals": "paired two-stage percentile bootstrap over seeds and test mentions (kfac_tutorial.statistics)",
        "n_boot": n_boot,
        "bootstrap_seed": bootstrap_seed,
        "verdict": "tie exactly when the 95% interval of the difference contains 0",
        "minimal_detectable_difference": "(1.96 + 0.84) × SE of the difference (5% two-sided, 80% power)",
        "power": power,
    }
    return out


def _partial_update(on_update, done: list, partial: dict) -> None:
    """Report the seeds ``done`` so far plus the current seed's ``partial`` results."""
    if on_update is not None:
        on_update(combine_seeds(done + [partial], n_boot=200, frontier_boot=50))


def run_seeds(
    model: str,
    task_names: Sequence[str],
    methods: Sequence[str],
    profile: Profile,
    seeds: Sequence[int],
    setting: str = "growing",
    progress: bool = True,
    checkpoint: str | None = None,
    on_update: Callable[[dict], None] | None = None,
) -> dict:
    """Run the comparison once per seed and combine (:func:`combine_seeds`).

    ``on_update(combined)`` is called after every method of every seed with the
    combination of what has finished."""
    from .harness import load_tasks, run_experiment

    if not seeds:
        raise ValueError("no seeds given, e.g. seeds=[0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds listed twice: {list(seeds)}")
    runs: list[dict] = []
    for seed in seeds:
        tasks = load_tasks(task_names, profile, seed=seed)

        update = functools.partial(_partial_update, on_update, list(runs))

        runs.append(
            run_experiment(
                model,
                tasks,
                methods,
                profile,
                seed=seed,
                setting=setting,
                progress=progress,
                checkpoint=checkpoint,
                on_update=update,
            )
        )
    combined = combine_seeds(runs)
    if on_update is not None:
        on_update(combined)
    return combined


def seed_runs(combined: dict) -> list[dict]:
    """The per-seed results dicts held in a combined dict (the inverse of
    :func:`combine_seeds`, up to the statistics)."""
    seeds = combined.get("seeds", [combined["seed"]])
    runs = []
    for i, seed in enumerate(seeds):
        run = {
            k: v
            for k, v in combined.items()
            if k not in ("methods", "seeds", "comparisons", "frontier_comparisons", "statistics", "examples_per_seed")
        }
        run["seed"] = seed
        run["examples"] = combined.get("examples_per_seed", {}).get(str(seed), combined["examples"])
        run["methods"] = {
            m: e["seeds"][i] if "seeds" in e else e for m, e in combined["methods"].items() if "seeds" in e or i == 0
        }
        runs.append(run)
    return runs


def merge_recorded(*combined: dict, n_boot: int = N_BOOT) -> dict:
    """One combined dict from several runs of the same model, tasks and profile: runs of
    other seeds are added, runs of the same seed with other methods are joined (a
    method's results do not depend on the other methods of its run: task 0 is shared,
    every later task re-seeded; a method in several inputs is taken from the first).
    Reductions are recomputed against each seed's fine-tuning. The inputs' ``command``
    and ``git_commit`` entries are kept as lists."""
    from .harness import _add_reductions

    if not combined:
        raise ValueError("nothing to merge")
    first = combined[0]
    for other in combined[1:]:
        for key in ("tasks", "profile", "model", "setting"):
            if other.get(key) != first.get(key):
                raise ValueError(f"cannot merge runs with different {key}: {first.get(key)} vs {other.get(key)}")
    by_seed: dict[int, dict] = {}
    for c in combined:
        for run in seed_runs(c):
            have = by_seed.get(run["seed"])
            if have is None:
                by_seed[run["seed"]] = {**run, "methods": dict(run["methods"])}
                continue
            if have["examples"] != run["examples"]:
                raise ValueError(f"seed {run['seed']}: the runs have different task sizes")
            for m, e in run["methods"].items():
                have["methods"].setdefault(m, e)
            have["total_seconds"] = have.get("total_seconds", 0.0) + run.get("total_seconds", 0.0)
    runs = []
    order = ("finetune", "ewc", "kfac", "ewc_online", "kfac_online", "l2", "frozen", "joint")
    for seed in sorted(by_seed):
        run = by_seed[seed]
        run["methods"] = dict(sorted(run["methods"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
        _add_reductions(run)
        runs.append(run)
    out = combine_seeds(runs, n_boot=n_boot)

    def flat(key):
        vals = []
        for c in combined:
            v = c.get(key)
            vals += v if isinstance(v, list) else [v]
        return list(dict.fromkeys(vals))

    out["command"] = flat("command")
    out["git_commit"] = flat("git_commit")
    out["kfac_tutorial_version"] = first.get("kfac_tutorial_version")
    return out


def first_tasks(combined: dict, k: int, n_boot: int = N_BOOT, bootstrap_seed: int = BOOTSTRAP_SEED) -> dict:
    """The same multi-seed runs read after their first ``k`` tasks: each method's test hits
    ``test_hits[t][j]`` for ``t, j < k`` (its accuracy matrix cut to ``k × k``), with means,
    intervals and ``comparisons`` of the four headline metrics
    (:func:`kfac_tutorial.statistics.compare`) as in :func:`combine_seeds`.

    The runs are not re-trained: every method keeps the λ it chose on dev for the whole
    sequence. The split of forgetting into table and encoder is left out (the old rows
    were restored only after the last task). Used to ask whether a gap between methods
    grows with the number of tasks (chapter 9)."""
    T = len(combined["tasks"])
    if not 2 <= k <= T:
        raise ValueError(f"k must lie between 2 and the number of tasks ({T}), got {k}")
    runs = []
    for run in seed_runs(combined):
        methods = {}
        for m, e in run["methods"].items():
            methods[m] = {"test_hits": [row[:k] for row in e["test_hits"][:k]], "lambda": e.get("lambda")}
            if "accuracy_matrix" in e:
                methods[m]["accuracy_matrix"] = [row[:k] for row in e["accuracy_matrix"][:k]]
        runs.append({"seed": run["seed"], "methods": methods})
    names = list(runs[0]["methods"])
    boot = st.bootstrap_seeds(runs, names, n_boot=n_boot, bootstrap_seed=bootstrap_seed)
    summary = st.summarize_seeds(boot)
    return {
        "model": combined.get("model"),
        "profile": combined.get("profile"),
        "tasks": list(combined["tasks"][:k]),
        "seeds": [r["seed"] for r in runs],
        "methods": {
            m: {"mean": summary[m]["mean"], "ci95": summary[m]["ci95"], "seeds": [r["methods"][m] for r in runs]} for m in names
        },
        "comparisons": st.compare(boot),
        "statistics": {
            "intervals": "paired two-stage percentile bootstrap over seeds and test mentions (kfac_tutorial.statistics)",
            "n_boot": n_boot,
            "bootstrap_seed": bootstrap_seed,
            "first_tasks": k,
        },
    }
