"""Results files: written atomically (a crash never leaves half a JSON file); the
book's tables of a results dict (:func:`methods_table`, :func:`sweep_table`)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

__all__ = ["methods_table", "read_results", "sweep_table", "write_json_atomic"]


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
