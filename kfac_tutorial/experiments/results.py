"""Results files: written atomically (a crash never leaves half a JSON file); the
book's tables of a results dict (:func:`methods_table`, :func:`sweep_table`); results
recorded in the repository (benchmarks, the GPU run) read by path or, where the
package was installed without the repository (Colab), from GitHub
(:func:`read_recorded`), and the benchmark JSON as tables (:func:`benchmark_tables`)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

__all__ = [
    "REPOSITORY_RAW",
    "benchmark_tables",
    "comparisons_table",
    "evidence_table",
    "format_interval",
    "frontier_sentence",
    "frontier_table",
    "methods_table",
    "verdict_sentence",
    "read_recorded",
    "read_results",
    "reproduction_check",
    "sweep_table",
    "write_json_atomic",
]

#: Where :func:`read_recorded` fetches a recorded file when no checkout is at hand: the
#: pinned release the chapters install (kfac_tutorial._release), never a moving branch.
from .._release import RAW_URL as REPOSITORY_RAW  # noqa: E402


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file in the same folder and
    ``os.replace``; nan/inf become ``null`` (strict JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_finite(obj), f, indent=1, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_results(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


_METHOD_ORDER = ("finetune", "ewc", "kfac", "ewc_online", "kfac_online", "l2", "frozen", "joint")


def _ordered(results: dict) -> list[str]:
    have = list(results["methods"])
    return sorted(have, key=lambda m: _METHOD_ORDER.index(m) if m in _METHOD_ORDER else len(_METHOD_ORDER))


def methods_table(results: dict):
    """One row per method (pandas ``DataFrame`` indexed by method): average forgetting,
    its reduction vs fine-tuning, plasticity, final average accuracy (acc@1 on test),
    the λ chosen on dev, seconds (task 0 + the chosen λ's run), seconds of the whole
    sweep and the bytes of curvature state held after the last task."""
    import pandas as pd

    rows = {}
    for m in _ordered(results):
        e = results["methods"][m]
        rows[m] = {
            "avg forgetting": e.get("avg_forgetting"),
            "forgetting reduction": e.get("forgetting_reduction"),
            "plasticity": e.get("plasticity"),
            "final avg accuracy": e.get("final_avg_accuracy"),
            "λ (dev)": e.get("lambda") if "lambda_sweep" in e else None,
            "seconds": e.get("seconds"),
            "sweep seconds": e.get("sweep_seconds"),
            "curvature bytes": e.get("curvature_bytes", 0),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table


def sweep_table(results: dict):
    """One row per (consolidation method, λ) of the sweeps: the dev metrics λ was chosen
    by and the same runs' test metrics; ``chosen`` marks the λ picked on dev."""
    import pandas as pd

    rows = []
    for m in _ordered(results):
        e = results["methods"][m]
        for s in e.get("lambda_sweep", []):
            rows.append(
                {
                    "method": m,
                    "λ": s["lambda"],
                    "chosen": s["lambda"] == e["lambda"],
                    "dev final avg acc": s.get("dev_final_avg_accuracy"),
                    "dev forgetting": s.get("dev_avg_forgetting"),
                    "dev plasticity": s.get("dev_plasticity"),
                    "test final avg acc": s.get("test_final_avg_accuracy"),
                    "test forgetting": s.get("test_avg_forgetting"),
                    "test plasticity": s.get("test_plasticity"),
                }
            )
    return pd.DataFrame(rows).set_index(["method", "λ"]) if rows else pd.DataFrame()


def read_recorded(relpath: str, root: str | os.PathLike | None = None, *, download: bool = True) -> dict:
    """A JSON file recorded in the repository (e.g. ``benchmarks/results/cpu_idle.json``).

    Looked up under ``root`` (default: the checkout holding this package, then the
    current folder and its parents); when absent (the package installed from GitHub,
    as on Colab) and ``download`` is true, fetched from :data:`REPOSITORY_RAW`.
    Raises ``FileNotFoundError`` naming every place tried.
    """
    tried = []
    if root is not None:
        roots = [Path(root)]
    else:
        here = Path.cwd().resolve()
        roots = list(dict.fromkeys([Path(__file__).resolve().parents[2], here, *here.parents]))
    for r in roots:
        path = r / relpath
        tried.append(str(path))
        if path.is_file():
            return json.loads(path.read_text())
    if download and root is None:
        from urllib.request import urlopen

        url = f"{REPOSITORY_RAW}/{relpath}"
        tried.append(url)
        try:
            with urlopen(url, timeout=30) as response:
                return json.loads(response.read().decode())
        except OSError as err:
            raise FileNotFoundError(f"recorded file {relpath!r} not found; tried {tried} ({err})") from err
    raise FileNotFoundError(f"recorded file {relpath!r} not found; tried {tried}")


def benchmark_tables(results: dict) -> dict:
    """The benchmark JSON of ``python -m benchmarks`` as pandas tables:

    ``estimation`` (workload, variant, method, seconds, × plain forward+backward, peak
    MiB, error), ``step`` (one row per workload and penalty variant: seconds, × plain
    step, state bytes × parameter bytes, relative penalty error), ``state`` (workload,
    storage, layer kind, × parameter bytes) and ``growth_length``, ``growth_vocabulary``,
    ``growth_tasks``; a section the file lacks gives an empty table."""
    import pandas as pd

    est = [
        {
            "workload": r["workload"],
            "variant": r["variant"],
            "method": r["method"],
            "ok": r["ok"],
            "seconds": r.get("median_s"),
            "x plain fwd+bwd": r.get("over_plain_fwd_bwd"),
            "peak MiB": r.get("peak_mib"),
            "error": r.get("error", ""),
        }
        for r in results.get("estimation", [])
        if r.get("method") != "_notes"
    ]
    steps = []
    for key in [k for k in results if k == "step" or k.startswith("step_")]:
        entry = results[key]
        if not entry:
            continue
        for r in entry["rows"]:
            steps.append(
                {
                    "workload": entry["workload"],
                    "fisher examples": entry["fisher_examples"],
                    "batch": entry["batch_size"],
                    "variant": r["variant"],
                    "seconds": r["median_s"],
                    "x plain step": r["over_plain"],
                    "state x params": r.get(
                        "state_over_parameters",
                        r["state_bytes"] / entry["parameter_bytes"] if "parameter_bytes" in entry else None,
                    ),
                    "penalty rel. error": r.get("penalty_rel_error_after_training_steps"),
                }
            )
    state = []
    for workload, entry in results.get("state", {}).items():
        for storage in ("auto", "full", "packed", "low_rank_tol=0.0", "low_rank_tol=0.01"):
            e = entry.get(storage)
            if not e:
                continue
            row = {
                "workload": workload,
                "storage": storage,
                "fisher examples": entry.get("fisher_examples"),
                "in memory x params": e["state_over_parameters"],
                "file x params": e["file_curvature_over_parameters"],
            }
            row.update({f"{kind} x params": v["ratio"] for kind, v in e["by_kind"].items()})
            state.append(row)
    growth = results.get("growth", {})
    return {
        "estimation": pd.DataFrame(est),
        "step": pd.DataFrame(steps),
        "state": pd.DataFrame(state),
        "growth_length": pd.DataFrame(growth.get("sequence_length", [])),
        "growth_vocabulary": pd.DataFrame(growth.get("vocabulary", [])),
        "growth_tasks": pd.DataFrame(growth.get("tasks", [])),
    }


# -- several seeds ------------------------------------------------------------------------------


def format_interval(mean, ci, fmt: str = "{:.1%}") -> str:
    """``0.5, [0.4, 0.6]`` → ``"50.0% [40.0%, 60.0%]"``; ``–`` for a missing value."""
    if mean is None:
        return "–"
    if ci is None or ci[0] is None:
        return fmt.format(mean)
    return f"{fmt.format(mean)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def evidence_table(results: dict):
    """One row per method of a multi-seed results dict: each metric's mean over seeds
    with its 95% interval (formatted for reading) and the λ each seed chose on dev."""
    import pandas as pd

    rows = {}
    for m in _ordered(results):
        e = results["methods"][m]
        if "mean" not in e:
            continue
        mean, ci = e["mean"], e["ci95"]
        rows[m] = {
            "forgetting reduction": format_interval(mean.get("forgetting_reduction"), ci.get("forgetting_reduction"), "{:.0%}"),
            "avg forgetting": format_interval(mean.get("avg_forgetting"), ci.get("avg_forgetting"), "{:.3f}"),
            "plasticity": format_interval(mean.get("plasticity"), ci.get("plasticity"), "{:.3f}"),
            "final avg accuracy": format_interval(mean.get("final_avg_accuracy"), ci.get("final_avg_accuracy"), "{:.3f}"),
            "λ per seed (dev)": ", ".join(f"{s['lambda']:g}" for s in e["seeds"]) if "sweep" in e else "–",
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table


def comparisons_table(results: dict, metric: str | None = "forgetting_reduction", pairs=None):
    """The ``comparisons`` of a multi-seed results dict as a table: ``a − b``, its 95%
    interval and the verdict (``tie`` exactly when the interval contains 0), for
    ``metric`` (None: every metric) and ``pairs`` (default: all)."""
    import pandas as pd

    rows = []
    for c in results.get("comparisons", []):
        if metric is not None and c["metric"] != metric:
            continue
        if pairs is not None and (c["a"], c["b"]) not in pairs:
            continue
        fmt = "{:+.1%}" if c["metric"] == "forgetting_reduction" else "{:+.3f}"
        rows.append(
            {
                "a − b": f"{c['a']} − {c['b']}",
                "metric": c["metric"],
                "difference [95% interval]": format_interval(c["diff"], c["ci95"], fmt),
                "verdict": c["verdict"],
            }
        )
    return pd.DataFrame(rows).set_index("a − b") if rows else pd.DataFrame()


def frontier_table(results: dict):
    """The ``frontier_comparisons``: forgetting of two methods at the plasticity of one
    method's dev-chosen run, interpolated along each one's λ frontier, their difference
    with its 95% interval and the verdict (lower forgetting wins)."""
    import pandas as pd

    rows = []
    for c in results.get("frontier_comparisons", []):
        rows.append(
            {
                "a − b": f"{c['a']} − {c['b']}",
                "matched to": c["matched_to"],
                "plasticity": f"{c['plasticity']:.3f}" if c["plasticity"] is not None else "–",
                "forgetting a": f"{c['forgetting'][c['a']]:.3f}" if c["forgetting"][c["a"]] is not None else "–",
                "forgetting b": f"{c['forgetting'][c['b']]:.3f}" if c["forgetting"][c["b"]] is not None else "–",
                "a − b [95% interval]": format_interval(c["diff"], c["ci95"], "{:+.3f}"),
                "verdict": c["verdict"],
                "draws covered": f"{c['coverage']:.0%}",
            }
        )
    return pd.DataFrame(rows).set_index(["a − b", "matched to"]) if rows else pd.DataFrame()


def reproduction_check(
    live: dict, recorded: dict, methods, tolerance_mentions: int = 3, tolerance_accuracy: float = 0.05
) -> dict:
    """Does a live run reproduce the recorded run of the same seed? For every method in
    ``methods`` and every accuracy ``R[t][k]``, the difference between ``live`` and the
    recorded seed (``recorded``'s per-seed entry whose ``seed`` equals ``live["seed"]``),
    in test mentions (``|Δacc| × n_k``) and in accuracy.

    Two levels. ``reproduced``: no accuracy differs by more than ``tolerance_mentions``
    test mentions (float noise on the arithmetic of the recording machine: a thread
    count or a summation order flips a prediction at a near-tie). ``agrees``: reproduced,
    or no accuracy differs by more than ``tolerance_accuracy`` (another CPU's matrix
    kernels round differently; training amplifies that into a different but equivalent
    trajectory, a few test mentions per hundred, while a broken method moves the old
    tasks' accuracies by tens of points). Returns ``{"max_mentions": {method: int},
    "max_accuracy": {method: float}, "tolerance_mentions", "tolerance_accuracy",
    "reproduced": bool, "agrees": bool}``."""
    from .seeds import seed_runs

    runs = {r["seed"]: r for r in seed_runs(recorded)}
    if live["seed"] not in runs:
        raise KeyError(f"seed {live['seed']} is not recorded; recorded seeds: {sorted(runs)}")
    rec = runs[live["seed"]]
    sizes = [live["examples"][t]["test"] for t in live["tasks"]]
    if [rec["examples"][t]["test"] for t in rec["tasks"]] != sizes:
        raise ValueError("the live run's test sets differ from the recorded ones (another profile or data version)")
    worst, worst_acc = {}, {}
    for m in methods:
        a, b = live["methods"][m]["accuracy_matrix"], rec["methods"][m]["accuracy_matrix"]
        pairs = [
            (abs(x - y), sizes[k])
            for ra, rb in zip(a, b)
            for k, (x, y) in enumerate(zip(ra, rb))
            if x is not None and y is not None
        ]
        worst[m] = int(round(max(d * n for d, n in pairs)))
        worst_acc[m] = float(max(d for d, _ in pairs))
    reproduced = all(v <= tolerance_mentions for v in worst.values())
    return {
        "max_mentions": worst,
        "max_accuracy": worst_acc,
        "tolerance_mentions": tolerance_mentions,
        "tolerance_accuracy": tolerance_accuracy,
        "reproduced": reproduced,
        "agrees": reproduced or all(v <= tolerance_accuracy for v in worst_acc.values()),
    }


_WORDS = {
    "forgetting_reduction": ("reduction of forgetting", "reduces forgetting more than", "{:+.1%}"),
    "avg_forgetting": ("average forgetting", "forgets less than", "{:+.3f}"),
    "plasticity": ("plasticity", "is more plastic than", "{:+.3f}"),
    "final_avg_accuracy": ("final average accuracy", "ends with a higher final average accuracy than", "{:+.3f}"),
    "forgetting_encoder": ("forgetting in the encoder (old table rows restored)", "forgets less in the encoder than", "{:+.3f}"),
    "forgetting_table": ("forgetting in the concept table", "forgets less in the concept table than", "{:+.3f}"),
}


def _label(m: str) -> str:
    from ..plots import METHOD_LABELS

    return METHOD_LABELS.get(m, m)


def verdict_sentence(results: dict, a: str, b: str, metric: str = "forgetting_reduction") -> str:
    """One sentence for the book: the verdict of ``a`` vs ``b`` on ``metric`` from the
    results' ``comparisons`` (never re-decided here), with the difference and interval."""
    found = [c for c in results.get("comparisons", []) if c["metric"] == metric and {c["a"], c["b"]} == {a, b}]
    if not found:
        return f"({_label(a)} vs {_label(b)}: not in these results.)"
    c = found[0]
    words, better, fmt = _WORDS[metric]
    n = len(results.get("seeds", [0]))
    diff = f"{_label(c['a'])} − {_label(c['b'])} = {format_interval(c['diff'], c['ci95'], fmt)}"
    if c["verdict"] == "tie":
        return (
            f"{_label(a)} and {_label(b)} cannot be told apart on {words}: {diff} "
            f"(95% interval over {n} seeds and the test mentions), and the interval contains 0."
        )
    loser = c["b"] if c["verdict"] == c["a"] else c["a"]
    return (
        f"{_label(c['verdict'])} {better} {_label(loser)}: {diff} (95% interval over {n} seeds "
        f"and the test mentions; it excludes 0)."
    )


def frontier_sentence(results: dict, a: str, b: str, matched_to: str) -> str:
    """One sentence: ``a`` vs ``b`` at the plasticity of ``matched_to``'s chosen runs,
    read off their frontiers (``frontier_comparisons``), with the verdict."""
    found = [c for c in results.get("frontier_comparisons", []) if (c["a"], c["b"], c["matched_to"]) == (a, b, matched_to)]
    if not found:
        return f"({_label(a)} vs {_label(b)} at matched plasticity: not in these results.)"
    c = found[0]
    if c["diff"] is None:
        return (
            f"At the plasticity of {_label(matched_to)}'s chosen runs one of the two frontiers "
            "does not reach: no matched reading."
        )
    head = (
        f"At the plasticity of {_label(matched_to)}'s chosen runs ({c['plasticity']:.3f}), "
        f"{_label(a)} forgets {c['forgetting'][a]:.3f} and {_label(b)} {c['forgetting'][b]:.3f} "
        f"(difference {format_interval(c['diff'], c['ci95'], '{:+.3f}')})"
    )
    if c["verdict"] == "tie":
        return head + ": a tie, the interval contains 0."
    return head + f": {_label(c['verdict'])} forgets less, the interval excludes 0."
