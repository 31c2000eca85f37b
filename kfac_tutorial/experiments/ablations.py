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

from typing import Mapping, Sequence

from .cache import run_or_load
from .profiles import Profile

__all__ = ["compare_variants", "summary_rows"]

_COLUMNS = ("avg_forgetting", "forgetting_reduction", "plasticity", "final_avg_accuracy",
            "lambda", "seconds", "curvature_bytes")


def summary_rows(results: dict, **labels) -> list[dict]:
    """One flat row per method of a results dict: the metrics of ``_COLUMNS`` plus
    ``labels`` (e.g. ``variant="exact"``)."""
    rows = []
    for method, entry in results["methods"].items():
        row = {**labels, "method": method}
        row.update({k: entry.get(k) for k in _COLUMNS})
        rows.append(row)
    return rows


def compare_variants(model: str, task_names: Sequence[str], methods: Sequence[str],
                     profile: Profile, variants: Mapping[str, Mapping], seed: int = 0,
                     progress: bool = True):
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
            raise ValueError(f"variant {name!r}: unknown setting(s) {unknown}; valid: "
                             f"'tasks', 'methods' or a Profile field {sorted(fields)}")
        variant_profile = profile.with_overrides(**overrides) if overrides else profile
        results = run_or_load(model, tasks, meths, variant_profile, seed=seed,
                              progress=progress)
        runs[name] = results
        rows += summary_rows(results, variant=name, order=" → ".join(results["tasks"]))
    return pd.DataFrame(rows), runs
