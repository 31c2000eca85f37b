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

__all__ = ["REPOSITORY_RAW", "benchmark_tables", "methods_table", "read_recorded", "read_results", "sweep_table",
           "write_json_atomic"]

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


_METHOD_ORDER = ("finetune", "ewc", "kfac", "ewc_online", "kfac_online", "joint")


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
            rows.append({
                "method": m, "λ": s["lambda"], "chosen": s["lambda"] == e["lambda"],
                "dev final avg acc": s.get("dev_final_avg_accuracy"),
                "dev forgetting": s.get("dev_avg_forgetting"),
                "dev plasticity": s.get("dev_plasticity"),
                "test final avg acc": s.get("test_final_avg_accuracy"),
                "test forgetting": s.get("test_avg_forgetting"),
                "test plasticity": s.get("test_plasticity"),
            })
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

    est = [{"workload": r["workload"], "variant": r["variant"], "method": r["method"], "ok": r["ok"],
            "seconds": r.get("median_s"), "x plain fwd+bwd": r.get("over_plain_fwd_bwd"),
            "peak MiB": r.get("peak_mib"), "error": r.get("error", "")}
           for r in results.get("estimation", []) if r.get("method") != "_notes"]
    steps = []
    for key in [k for k in results if k == "step" or k.startswith("step_")]:
        entry = results[key]
        if not entry:
            continue
        for r in entry["rows"]:
            steps.append({"workload": entry["workload"], "fisher examples": entry["fisher_examples"],
                          "batch": entry["batch_size"], "variant": r["variant"], "seconds": r["median_s"],
                          "x plain step": r["over_plain"],
                          "state x params": r.get("state_over_parameters",
                                                  r["state_bytes"] / entry["parameter_bytes"] if "parameter_bytes" in entry else None),
                          "penalty rel. error": r.get("penalty_rel_error_after_training_steps")})
    state = []
    for workload, entry in results.get("state", {}).items():
        for storage in ("full", "low_rank_tol=0.0", "low_rank_tol=0.01"):
            e = entry.get(storage)
            if not e:
                continue
            row = {"workload": workload, "storage": storage, "fisher examples": entry.get("fisher_examples"),
                   "in memory x params": e["state_over_parameters"], "file x params": e["file_curvature_over_parameters"]}
            row.update({f"{kind} x params": v["ratio"] for kind, v in e["by_kind"].items()})
            state.append(row)
    growth = results.get("growth", {})
    return {"estimation": pd.DataFrame(est), "step": pd.DataFrame(steps), "state": pd.DataFrame(state),
            "growth_length": pd.DataFrame(growth.get("sequence_length", [])),
            "growth_vocabulary": pd.DataFrame(growth.get("vocabulary", [])),
            "growth_tasks": pd.DataFrame(growth.get("tasks", []))}
