"""Ablations: the same sequential experiment under several variants of one setting.

Chapter 9 asks what matters for KFAC and EWC (Fisher flavour, number of MC samples,
number of Fisher examples, task order, …). Each variant is a set of profile overrides
(or a different task order); every variant is a full run of
:func:`~kfac_tutorial.experiments.run_or_load` (λ chosen on dev per variant and
method, exactly as in the main experiments), so a variant is never helped by test data.

>>> table, runs = compare_variants(                                    # doctest: +SKIP
...     "cnn", ["diseases", "drugs"], ["finetune", "kfac"], get_profile("cnn", "cpu"),
...     {"mc, 8 samples": {}, "exact": {"fisher": "exact"}})
"""

from __future__ import annotations

import sys
from typing import Mapping, Sequence

from .cache import run_or_load
from .profiles import Profile

__all__ = [
    "FISHER_FLAVOURS",
    "compare_variants",
    "reproduce_variant",
    "summary_rows",
    "variants_as_results",
    "variants_over_seeds",
    "variants_table",
]

_COLUMNS = ("avg_forgetting", "forgetting_reduction", "plasticity", "final_avg_accuracy", "lambda", "seconds", "curvature_bytes")


def summary_rows(results: dict, **labels) -> list[dict]:
    """One flat row per method of a results dict: the metrics of ``_COLUMNS`` plus
    ``labels`` (e.g. ``variant="exact"``)."""
    rows = []
    for method, entry in results["methods"].items():
        row = {**labels, "method": method}
        row.update({k: entry.get(k) for k in _COLUMNS})
        rows.append(row)
    return rows


def compare_variants(
    model: str,
    task_names: Sequence[str],
    methods: Sequence[str],
    profile: Profile,
    variants: Mapping[str, Mapping],
    seed: int = 0,
    progress: bool = True,
):
    """Run (or load) one experiment per variant; return ``(table, runs)``.

    ``variants``: name → overrides. The keys ``tasks`` (a task order) and ``methods``
    replace the defaults; every other key is a :class:`Profile` field passed to
    ``profile.with_overrides``. ``table`` is a ``pandas.DataFrame`` with one row per
    (variant, method); ``runs`` maps variant name → results dict.
    """
    import pandas as pd

    if not variants:
        raise ValueError("no variants given: pass {name: {profile field: value}}")
    fields = set(Profile.__dataclass_fields__)
    rows, runs = [], {}
    for name, overrides in variants.items():
        overrides = dict(overrides)
        tasks = list(overrides.pop("tasks", task_names))
        meths = list(overrides.pop("methods", methods))
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"variant {name!r}: unknown setting(s) {unknown}; valid: 'tasks', 'methods' or a Profile field {sorted(fields)}"
            )
        variant_profile = profile.with_overrides(**overrides) if overrides else profile
        results = run_or_load(model, tasks, meths, variant_profile, seed=seed, progress=progress)
        runs[name] = results
        rows += summary_rows(results, variant=name, order=" → ".join(results["tasks"]))
    return pd.DataFrame(rows), runs


#: The Fisher flavours of chapter 9's ablation (chapter 2: the exact Fisher, its Monte
#: Carlo estimate with 1 and 8 sampled labels, and the empirical Fisher with the data labels).
FISHER_FLAVOURS = {
    "exact": {"fisher": "exact"},
    "mc, 1 sample": {"fisher": "mc", "mc_samples": 1},
    "mc, 8 samples": {"fisher": "mc", "mc_samples": 8},
    "empirical": {"fisher": "empirical"},
}


def variants_over_seeds(
    model: str,
    task_names: Sequence[str],
    profile: Profile,
    variants: Mapping[str, Mapping],
    seeds: Sequence[int],
    method: str = "kfac",
    reference: str | None = None,
    n_boot: int = 2000,
    progress: bool = True,
) -> dict:
    """One consolidation ``method`` under several profile ``variants`` (name → Profile
    overrides, e.g. :data:`FISHER_FLAVOURS`), each seed's runs paired, with intervals.

    Per seed and variant, one run of ``["finetune", method]`` (:func:`run_or_load`; λ
    chosen on dev per variant and seed, the grid extended past an edge optimum). The
    variants of one seed share its data, task 0 and fine-tuning run, so they are
    compared paired: the per-seed runs are joined as methods named ``"<method> (<variant>)"``
    and passed to :func:`kfac_tutorial.statistics.bootstrap_seeds` (two-stage paired
    bootstrap over seeds and test mentions). Returns a JSON-able dict: ``variants``
    (name → ``overrides``, ``label``, ``mean``/``ci95`` of the metrics, ``lambda`` and
    ``curvature_bytes`` per seed, ``per_seed``: the harness's entry of each seed),
    ``comparisons`` (each variant − ``reference``, default
    the first, with :func:`~kfac_tutorial.statistics.verdict`), ``finetune`` (its
    mean/ci95) and ``finetune_shared`` (whether fine-tuning gave the same test hits in
    every variant of a seed, as it must: the variants change only the curvature)."""
    from .. import statistics as st

    if not variants:
        raise ValueError("no variants given: pass {name: {profile field: value}}")
    if not seeds:
        raise ValueError("no seeds given, e.g. seeds=[0, 1, 2]")
    fields = set(Profile.__dataclass_fields__)
    for name, overrides in variants.items():
        if unknown := sorted(set(overrides) - fields):
            raise ValueError(f"variant {name!r}: unknown setting(s) {unknown}; valid: {sorted(fields)}")
    reference = reference or next(iter(variants))
    if reference not in variants:
        raise ValueError(f"reference {reference!r} is not one of the variants {list(variants)}")
    label = {name: f"{method} ({name})" for name in variants}
    joined, shared = [], True
    for seed in seeds:
        run = None
        for name, overrides in variants.items():
            res = run_or_load(
                model, list(task_names), ["finetune", method], profile.with_overrides(**overrides), seed=seed, progress=progress
            )
            if run is None:
                run = {**res, "methods": {"finetune": res["methods"]["finetune"]}}
            else:
                shared &= res["methods"]["finetune"]["test_hits"] == run["methods"]["finetune"]["test_hits"]
            run["methods"][label[name]] = res["methods"][method]
        joined.append(run)
    names = ["finetune", *label.values()]
    boot = st.bootstrap_seeds(joined, names, n_boot=n_boot)
    summary = st.summarize_seeds(boot)
    pairs = [(label[n], label[reference]) for n in variants if n != reference]
    return {
        "model": model,
        "tasks": list(joined[0]["tasks"]),
        "profile": profile.name,
        "torch_threads": joined[0].get("torch_threads"),
        "method": method,
        "seeds": list(seeds),
        "reference": reference,
        "examples_per_seed": {str(s): r["examples"] for s, r in zip(seeds, joined)},
        "finetune": summary["finetune"],
        "finetune_shared": bool(shared),
        "variants": {
            n: {
                "overrides": dict(variants[n]),
                "label": label[n],
                **summary[label[n]],
                "lambda": [r["methods"][label[n]]["lambda"] for r in joined],
                "lambda_interior": [r["methods"][label[n]].get("lambda_interior") for r in joined],
                "curvature_bytes": [r["methods"][label[n]].get("curvature_bytes") for r in joined],
                "per_seed": [r["methods"][label[n]] for r in joined],
            }
            for n in variants
        },
        "finetune_per_seed": [r["methods"]["finetune"] for r in joined],
        "comparisons": st.compare(boot, pairs=pairs),
        "statistics": {
            "intervals": "paired two-stage percentile bootstrap over seeds and test mentions (kfac_tutorial.statistics)",
            "n_boot": n_boot,
            "verdict": "tie exactly when the 95% interval of the difference contains 0",
        },
    }


def reproduce_variant(
    ablation: dict, variant: str, profile: Profile, seed: int | None = None, tolerance_mentions: int = 3, progress: bool = True
) -> tuple[dict, dict]:
    """Re-run one seed of one variant of a recorded :func:`variants_over_seeds` live, at
    the λ that seed chose on dev (a one-value grid, never extended), and check it
    (:func:`~kfac_tutorial.experiments.results.reproduction_check`: every test accuracy of
    fine-tuning and of the method within ``tolerance_mentions`` test mentions).
    ``profile``: the recorded profile (the variant's overrides are applied here). Returns
    ``(live results, check)``."""
    from .book import recorded_threads
    from .results import reproduction_check

    seeds = ablation["seeds"]
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise ValueError(f"seed {seed} is not recorded; recorded seeds: {seeds}")
    if variant not in ablation["variants"]:
        raise ValueError(f"variant {variant!r} is not recorded; recorded: {list(ablation['variants'])}")
    if profile.name != ablation["profile"]:
        raise ValueError(f"the record is of the {ablation['profile']!r} profile, not {profile.name!r}")
    i, method, v = seeds.index(seed), ablation["method"], ablation["variants"][variant]
    family = "ewc" if method.startswith("ewc") else "kfac"
    live_profile = profile.with_overrides(**v["overrides"], lambdas={**profile.lambdas, family: (v["lambda"][i],)})
    with recorded_threads(ablation):
        live = run_or_load(ablation["model"], ablation["tasks"], ["finetune", method], live_profile, seed=seed, progress=progress)
    recorded = {
        "seed": seeds[0],
        "seeds": seeds,
        "tasks": ablation["tasks"],
        "examples": ablation["examples_per_seed"][str(seeds[0])],
        "examples_per_seed": ablation["examples_per_seed"],
        "methods": {"finetune": {"seeds": ablation["finetune_per_seed"]}, method: {"seeds": v["per_seed"]}},
    }
    return live, reproduction_check(live, recorded, ["finetune", method], tolerance_mentions)


def variants_as_results(ablation: dict) -> dict:
    """A :func:`variants_over_seeds` record in the shape of a combined results dict
    (methods named ``"<method> (<variant>)"``, with ``mean``, ``ci95`` and per-seed
    entries; its ``comparisons``), for :func:`kfac_tutorial.plots.interval_bars` and
    :func:`~kfac_tutorial.experiments.results.verdict_sentence`."""
    methods = {v["label"]: {"mean": v["mean"], "ci95": v["ci95"], "seeds": v["per_seed"]} for v in ablation["variants"].values()}
    return {
        "model": ablation["model"],
        "profile": ablation["profile"],
        "tasks": ablation["tasks"],
        "seeds": ablation["seeds"],
        "methods": methods,
        "comparisons": ablation["comparisons"],
    }


def variants_table(ablation: dict):
    """A ``pandas.DataFrame``, one row per variant of :func:`variants_over_seeds`: mean
    and 95% interval of the reduction of forgetting, plasticity and final accuracy, the
    λ per seed, and the difference in reduction against the reference with its verdict."""
    import pandas as pd

    from .results import format_interval

    diff = {c["a"]: c for c in ablation["comparisons"] if c["metric"] == "forgetting_reduction"}
    rows = {}
    for name, v in ablation["variants"].items():
        c = diff.get(v["label"])
        rows[name] = {
            "forgetting reduction": format_interval(v["mean"]["forgetting_reduction"], v["ci95"]["forgetting_reduction"]),
            "plasticity": format_interval(v["mean"]["plasticity"], v["ci95"]["plasticity"]),
            "final avg accuracy": format_interval(v["mean"]["final_avg_accuracy"], v["ci95"]["final_avg_accuracy"]),
            "λ per seed (dev)": ", ".join(f"{x:g}" for x in v["lambda"]),
            f"reduction − {ablation['reference']}": "reference"
            if c is None
            else f"{c['diff']:+.1%} [{c['ci95'][0]:+.1%}, {c['ci95'][1]:+.1%}] → "
            + (c["verdict"] if c["verdict"] == "tie" else c["verdict"].split(" (", 1)[-1].rstrip(")")),
        }
    return pd.DataFrame(rows).T


def main(argv=None) -> int:
    """``python -m kfac_tutorial.experiments.fisher_ablation --model cnn --profile ci --tasks diseases,drugs
    --seeds 0,1,2 --out book/results/ablation_fisher_cnn.json``: the Fisher-flavour ablation
    (:data:`FISHER_FLAVOURS`, KFAC) over seeds, written with its command, version and commit."""
    import argparse

    from .__main__ import parse_seeds, run_provenance
    from .profiles import get_profile
    from .results import write_json_atomic

    p = argparse.ArgumentParser(
        prog="python -m kfac_tutorial.experiments.fisher_ablation",
        description="KFAC (or EWC) under each Fisher flavour, over seeds.",
    )
    p.add_argument("--model", choices=("cnn", "bert"), default="cnn")
    p.add_argument("--method", choices=("kfac", "ewc"), default="kfac")
    p.add_argument("--profile", default="ci")
    p.add_argument("--tasks", default="diseases,drugs")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = variants_over_seeds(
        args.model,
        [t.strip() for t in args.tasks.split(",") if t.strip()],
        get_profile(args.model, args.profile),
        FISHER_FLAVOURS,
        seeds,
        method=args.method,
        progress=not args.no_progress,
    )
    prov = run_provenance(argv)
    prov["command"] = prov["command"].replace("kfac_tutorial.experiments ", "kfac_tutorial.experiments.fisher_ablation ", 1)
    write_json_atomic(args.out, {**out, **prov})
    print(variants_table(out).to_string())
    print(f"wrote {args.out}")
    return 0
