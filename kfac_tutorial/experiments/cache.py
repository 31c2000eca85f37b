"""Run an experiment once, reuse its results: ``run_or_load``.

The book's experimental chapters call :func:`run_or_load` instead of
:func:`~kfac_tutorial.experiments.run_experiment`. With no cache folder it simply runs.
With one (the ``cache_dir`` argument or the ``KFAC_RESULTS_CACHE`` environment
variable), the results JSON is stored under a key that hashes everything the run
depends on: model, task names, methods, the whole profile, seed, setting, checkpoint,
and the versions of this package and torch. A second call with the same inputs loads
the file instead of training again; any change of input is a different key.

The test command sets ``KFAC_RESULTS_CACHE`` to a fresh temporary folder: nbval executes
each chapter and fills it, the book build executes each chapter again and reuses the
results (same profile, same numbers), so CI trains every model once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from .harness import load_tasks, run_experiment
from .profiles import Profile
from .results import read_results, write_json_atomic

__all__ = ["cache_key", "run_or_load"]

CACHE_ENV = "KFAC_RESULTS_CACHE"


def cache_key(
    model: str,
    task_names: Sequence[str],
    methods: Sequence[str],
    profile: Profile,
    seed: int = 0,
    setting: str = "growing",
    checkpoint: str | None = None,
) -> str:
    """SHA-1 (first 16 hex digits) of every input of a run, versions included."""
    import torch

    from .. import __version__

    spec = {
        "model": model,
        "tasks": list(task_names),
        "methods": list(methods),
        "profile": asdict(profile),
        "seed": seed,
        "setting": setting,
        "checkpoint": checkpoint,
        "kfac_tutorial": __version__,
        "torch": torch.__version__,
    }
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def run_or_load(
    model: str,
    task_names: Sequence[str],
    methods: Sequence[str],
    profile: Profile,
    seed: int = 0,
    setting: str = "growing",
    checkpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """The results dict of :func:`run_experiment` for these inputs (tasks by name).

    Loaded from ``cache_dir`` (default: ``$KFAC_RESULTS_CACHE``; none: no caching) when
    a run with identical inputs was stored there, else run, stored atomically, returned.
    The returned dict has ``"cached": True`` when it was loaded.
    """
    cache_dir = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or None
    path = None
    if cache_dir is not None:
        key = cache_key(model, task_names, methods, profile, seed, setting, checkpoint)
        path = Path(cache_dir) / f"{model}-{profile.name}-{key}.json"
        if path.exists():
            return {**read_results(path), "cached": True}
    tasks = load_tasks(task_names, profile, seed=seed)
    results = run_experiment(model, tasks, methods, profile, seed=seed, setting=setting, progress=progress, checkpoint=checkpoint)
    if path is not None:
        write_json_atomic(path, results)
    return {**results, "cached": False}
