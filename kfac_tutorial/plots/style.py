"""The book's figure style, once: method labels and colours, :func:`set_style`, and the
small helpers every figure shares (method order, titles)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import seaborn as sns


METHOD_LABELS = {
    "finetune": "Fine-tuning",
    "ewc": "EWC",
    "kfac": "KFAC",
    "ewc_online": "EWC (online)",
    "kfac_online": "KFAC (online)",
    "l2": "L2 (isotropic)",
    "frozen": "Frozen encoder",
    "joint": "Joint (upper reference)",
}
_PALETTE = sns.color_palette("colorblind")
METHOD_COLORS = {
    "finetune": _PALETTE[3],
    "ewc": _PALETTE[0],
    "kfac": _PALETTE[2],
    "ewc_online": _PALETTE[9],
    "kfac_online": _PALETTE[8],
    "l2": _PALETTE[4],
    "frozen": _PALETTE[5],
    "joint": _PALETTE[7],
}
_ORDER = list(METHOD_LABELS)


def set_style() -> None:
    """The book's figure style (called by every plot function)."""
    sns.set_theme(
        context="notebook",
        style="whitegrid",
        palette="colorblind",
        rc={"figure.dpi": 110, "axes.titleweight": "bold", "savefig.bbox": "tight"},
    )


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _methods(results: dict, methods: Sequence[str] | None) -> list[str]:
    have = results["methods"]
    if methods is None:
        return sorted(have, key=lambda m: _ORDER.index(m) if m in _ORDER else len(_ORDER))
    missing = [m for m in methods if m not in have]
    if missing:
        raise KeyError(f"methods {missing} not in the results; have {list(have)}")
    return list(methods)


def _matrix(R) -> np.ndarray:
    return np.asarray(R, dtype=float)  # None (a task not seen yet) → nan


def _suptitle(fig, results: dict, what: str) -> None:
    fig.suptitle(
        f"{what} — {results.get('model', '?').upper()} linker, "
        f"{results.get('profile', '?')} profile, seed {results.get('seed', '?')}"
    )


def _seeds_title(results: dict) -> str:
    seeds = results.get("seeds", [results.get("seed")])
    return (
        f"{results.get('model', '?').upper()} linker, {results.get('profile', '?')} profile, "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    )
