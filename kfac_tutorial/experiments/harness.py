"""The sequential-training harness: tasks in order, one linker, several methods.

Methods: :data:`~kfac_tutorial.experiments.methods.METHOD_SPECS` (finetune, ewc, kfac,
their online variants, the isotropic ``l2`` pull, the ``frozen`` encoder and ``joint``
training; one :class:`~kfac_tutorial.experiments.methods.MethodSpec` each).

Every method starts from the same model after task 0 (task 0 has no penalty, so its
training is shared and run once). After each task every task seen so far is scored on
its test split (acc@1, acc@5, and the per-mention acc@1 hits that the bootstrap of
:mod:`kfac_tutorial.statistics` resamples) and its dev split; λ of each penalty method is
chosen by the final average **dev** accuracy (ties: the smaller λ), never by test. The
profile's grid is extended by factors of 10 on the side of an edge optimum until the
optimum is interior or ``profile.lambda_extension`` steps beyond the grid
(:func:`next_lambda`). After the last task every old task is scored once more with its
concept-table rows restored to their values just after it was learned: the forgetting
left is the encoder's (``forgetting_encoder``), the rest the table's
(``forgetting_table``). The Fisher is estimated on the task's training mentions
(``profile.fisher_examples`` of them), with the same full softmax over every seen
concept that training uses, in ``eval()`` mode.

Recorded for the run: ``total_seconds`` (wall time from task 0 to the last method, Fisher
fits and evaluations included). Recorded per method: ``seconds`` (task 0 + the chosen λ's run, Fisher fits included),
``sweep_seconds`` (the whole λ sweep), ``peak_memory_mb`` (CUDA: peak allocated; CPU:
the process's peak resident set so far, which never decreases), ``curvature_bytes``
(``memory_bytes()`` of the penalty after the last fit) and ``parameter_sha1`` (a
checksum of the final parameters: equal across runs exactly when they are bit-for-bit
reproducible).
"""

from __future__ import annotations

import hashlib
import platform
import random
import resource
import time
from dataclasses import asdict
from typing import Callable, Sequence

import numpy as np
import torch

from .. import metrics
from ..linkers import ConceptInventory, Linker, bert_linker, cnn_linker
from .methods import METHOD_SPECS, METHODS, method_spec
from .profiles import Profile
from .sequence import TaskSequence
from .tasks import load_tasks, prepare_task

__all__ = [
    "METHODS",
    "MODELS",
    "SETTINGS",
    "build_linker",
    "load_tasks",
    "next_lambda",
    "parameter_checksum",
    "prepare_task",
    "run_experiment",
    "validate",
]

MODELS = ("cnn", "bert")
SETTINGS = ("growing", "per_task")
# method → curvature family of the Fisher-based methods (read by experiments/cost.py)
_FAMILY = {m: s.family for m, s in METHOD_SPECS.items() if s.family in ("ewc", "kfac")}


# -- inputs ------------------------------------------------------------------------------


def validate(model: str, methods: Sequence[str], tasks: Sequence, setting: str = "growing") -> None:
    """Refuse an unknown model/method/setting or an empty task up front, listing valid choices."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; valid: {', '.join(SETTINGS)}")
    if not methods:
        raise ValueError(f"no methods given; valid: {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods listed twice: {list(methods)}")
    if not tasks:
        raise ValueError("no tasks given")
    for task in tasks:
        name = getattr(task, "name", "?")
        for split in ("concepts", "train", "dev", "test"):
            if not getattr(task, split, None):
                raise ValueError(f"task {name!r} is empty: no {split} (need concepts and train/dev/test examples)")
    names = [getattr(t, "name", str(i)) for i, t in enumerate(tasks)]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks listed twice: {names}")


def build_linker(
    model: str,
    inventory: ConceptInventory,
    profile: Profile,
    setting: str = "growing",
    seed: int = 0,
    checkpoint: str | None = None,
) -> Linker:
    """The profile's CNN or BERT linker over ``inventory``, seeded."""
    kwargs = dict(profile.linker)
    if model == "cnn":
        return cnn_linker(inventory, setting=setting, max_length=profile.max_length, seed=seed, **kwargs)
    if model == "bert":
        return bert_linker(inventory, setting=setting, max_length=profile.max_length, seed=seed, checkpoint=checkpoint, **kwargs)
    raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")


# -- one run -----------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA), else the process's peak resident memory (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def next_lambda(scores: dict[float, float], grid: Sequence[float], max_steps: int) -> float | None:
    """The next λ to try, or None when the dev optimum is interior (or the bound is hit).

    ``scores``: λ → dev score of every λ tried (higher is better; ties: the smaller λ).
    When the best λ is the smallest tried, the next is a tenth of it; when it is the
    largest tried, ten times it; never beyond ``max_steps`` factors of 10 below
    ``min(grid)`` or above ``max(grid)``. A grid of one value is a fixed λ (e.g. the
    CLI's ``--lambda kfac=3.5``), never extended."""
    if len(set(grid)) < 2:
        return None
    lams = sorted(scores)
    best = max(lams, key=lambda lam: (scores[lam], -lam))
    low, high = min(grid) / 10**max_steps, max(grid) * 10**max_steps
    if best == lams[0]:
        cand = float(f"{lams[0] / 10:.6g}")
        if cand >= low * (1 - 1e-9) and cand not in scores:
            return cand
    if best == lams[-1]:
        cand = float(f"{lams[-1] * 10:.6g}")
        if cand <= high * (1 + 1e-9) and cand not in scores:
            return cand
    return None


def parameter_checksum(model: torch.nn.Module) -> str:
    """SHA-1 of every parameter's bytes (in ``named_parameters`` order): equal for two
    runs exactly when they end bit for bit in the same place."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _matrix(rows: list[dict], key: str) -> list[list]:
    return [r[key] for r in rows]


def _summary(rows: list[dict], restored: list | None) -> dict:
    """Metrics of one run from its rows (test acc@1, the ``max`` forgetting kind)."""
    R = _matrix(rows, "test@1")
    out = metrics.summarize(R)
    T = len(rows) - 1
    if restored is not None and T > 0:
        from ..statistics import decode_hits

        best = [max(rows[t]["test@1"][k] for t in range(k, T)) for k in range(T)]
        enc = float(np.mean([best[k] - decode_hits(restored[k]).mean() for k in range(T)]))
        out["forgetting_encoder"] = enc
        out["forgetting_table"] = out["avg_forgetting"] - enc
    return out


def run_experiment(
    model: str,
    tasks: Sequence,
    methods: Sequence[str],
    profile: Profile,
    seed: int = 0,
    setting: str = "growing",
    progress: bool = True,
    checkpoint: str | None = None,
    on_update: Callable[[dict], None] | None = None,
) -> dict:
    """Run every method over ``tasks`` in order; returns the results dict of one seed.

    ``tasks``: objects with ``name``, ``concepts``, ``train``, ``dev``, ``test`` (cut to
    the profile by :func:`prepare_task`). ``on_update(results)`` is called after each
    method (the CLI writes the JSON there, so that finished methods survive a later
    error). Per method: the chosen run's ``accuracy_matrix`` (test acc@1, ``R[t][k]``),
    ``accuracy_matrix_at5``, ``dev_accuracy_matrix``, ``test_hits``,
    ``test_hits_restored``, the metrics of :func:`kfac_tutorial.metrics.summarize` plus
    ``forgetting_encoder``/``forgetting_table``, ``lambda`` and, for swept methods,
    ``sweep`` (``[{"lambda", "dev_score"}]``, every λ tried) and ``lambda_sweep`` (every
    λ's matrices, hits and metrics).
    """
    validate(model, methods, tasks, setting)
    tasks = [prepare_task(t, profile, seed) for t in tasks]
    validate(model, methods, tasks, setting)  # still non-empty after the cut
    _seed_everything(seed)
    inventory = ConceptInventory.union(tasks)
    linker = build_linker(model, inventory, profile, setting, seed, checkpoint)
    if torch.cuda.is_available():
        linker = linker.cuda()
    run = TaskSequence(linker, tasks, profile, seed, progress)
    T = len(tasks)
    order = sorted(methods, key=lambda m: m != "finetune")  # the baseline first
    specs = {m: method_spec(m) for m in order}

    results = {
        "model": model,
        "tasks": [t.name for t in tasks],
        "profile": profile.name,
        "seed": seed,
        "setting": setting,
        "forgetting_kind": "max",
        "lambda_selection": "final average dev acc@1; the grid extended ×10 past an edge optimum",
        "concepts": len(inventory),
        "examples": {
            t.name: {"concepts": len(t.concepts), "train": len(t.train), "dev": len(t.dev), "test": len(t.test)} for t in tasks
        },
        "device": str(run.device) if run.device.type != "cuda" else torch.cuda.get_device_name(run.device),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "config": _jsonable(asdict(profile)),
        "methods": {},
    }

    grids = {m: (tuple(sorted(profile.lambdas[s.family])) if s.swept else (0.0,)) for m, s in specs.items()}
    total = 1 + sum(len(grids[m]) * (T - 1) for m in order)
    bar = None
    if progress:
        from ..progress import progress_bar as tqdm

        bar = tqdm(total=total, desc="tasks trained", unit="task")

    # task 0: identical for every method; trained once
    run_started = time.perf_counter()
    start = time.perf_counter()
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    run.train_task(0, "finetune")
    row0 = run.evaluate_row(0)
    after0 = {k: v.clone() for k, v in linker.state_dict().items()}
    table0 = run.table_rows(0)
    shared_seconds = time.perf_counter() - start
    if bar is not None:
        bar.update(1)
    curvature0, fit0_seconds = {}, {}
    for family in dict.fromkeys(s.family for s in specs.values() if s.swept):
        if T > 1:  # the curvature of task 0, shared by the per-task and online variants
            fit_start = time.perf_counter()
            linker.load_state_dict(after0)
            curvature0[family] = run.fit_curvature(family, 0)
            fit0_seconds[family] = time.perf_counter() - fit_start

    for method in order:
        spec = specs[method]
        family = spec.family
        sweep: dict[float, dict] = {}
        method_start = time.perf_counter()
        queue = list(grids[method])
        while queue:
            lam = queue.pop(0)
            run_start = time.perf_counter()
            linker.load_state_dict(after0)
            state = curvature0.get(family)
            rows, saved = [row0], [table0]
            for t in range(1, T):
                if bar is not None:
                    bar.set_description(f"{method} λ={lam:g} · {tasks[t].name}", refresh=False)
                run.train_task(t, method, lam, state.penalty if state is not None else None)
                rows.append(run.evaluate_row(t))
                if t < T - 1:
                    saved.append(run.table_rows(t))
                if bar is not None:
                    bar.update(1)
                if family is not None and t < T - 1:
                    new = run.fit_curvature(family, t)
                    state = state.merge(new, profile.gamma) if spec.online else state + new
            restored = run.restored_hits(saved[: T - 1]) if T > 1 else None
            R_dev = _matrix(rows, "dev@1")
            sweep[lam] = {
                "lambda": lam,
                "dev_final_avg_accuracy": metrics.final_average_accuracy(R_dev),
                "dev_avg_forgetting": _clean(metrics.average_forgetting(R_dev)),
                "dev_plasticity": metrics.plasticity(R_dev),
                "accuracy_matrix": _matrix(rows, "test@1"),
                "accuracy_matrix_at5": _matrix(rows, "test@5"),
                "dev_accuracy_matrix": R_dev,
                "test_hits": _matrix(rows, "hits"),
                "test_hits_restored": restored,
                "curvature_bytes": int(state.memory_bytes()) if state is not None else 0,
                "seconds": shared_seconds + fit0_seconds.get(family, 0.0) + time.perf_counter() - run_start,
                "parameter_sha1": parameter_checksum(linker),
                **{
                    f"test_{k}": v
                    for k, v in _summary(rows, restored).items()
                    if k in ("avg_forgetting", "plasticity", "final_avg_accuracy", "forgetting_encoder", "forgetting_table")
                },
            }
            if not queue and spec.swept and T > 1:
                nxt = next_lambda(
                    {lam_: s["dev_final_avg_accuracy"] for lam_, s in sweep.items()}, grids[method], profile.lambda_extension
                )
                if nxt is not None:
                    queue.append(nxt)
                    if bar is not None:
                        bar.total += T - 1
                        bar.refresh()
        best = max(sweep.values(), key=lambda s: (s["dev_final_avg_accuracy"], -s["lambda"]))
        tried = sorted(sweep)
        entry = {
            "accuracy_matrix": best["accuracy_matrix"],
            "accuracy_matrix_at5": best["accuracy_matrix_at5"],
            "dev_accuracy_matrix": best["dev_accuracy_matrix"],
            "test_hits": best["test_hits"],
            "test_hits_restored": best["test_hits_restored"],
            **{k: v for k, v in best.items() if k.startswith("test_") and not k.startswith("test_hits")},
            **metrics.summarize(best["accuracy_matrix"]),
            "lambda": best["lambda"],
            "seconds": best["seconds"],
            "sweep_seconds": shared_seconds + fit0_seconds.get(family, 0.0) + time.perf_counter() - method_start,
            "peak_memory_mb": _peak_memory_mb(run.device),
            "curvature_bytes": best["curvature_bytes"],
            "parameter_sha1": best["parameter_sha1"],
        }
        for k in ("forgetting_encoder", "forgetting_table"):
            entry[k] = entry.pop(f"test_{k}", None)
        for k in ("avg_forgetting", "plasticity", "final_avg_accuracy"):
            entry.pop(f"test_{k}", None)
        if spec.swept:
            entry["sweep"] = [{"lambda": lam, "dev_score": sweep[lam]["dev_final_avg_accuracy"]} for lam in tried]
            entry["lambda_interior"] = tried[0] < best["lambda"] < tried[-1]
            entry["lambda_sweep"] = [sweep[lam] for lam in tried]
        results["methods"][method] = entry
        _add_reductions(results)
        results["total_seconds"] = time.perf_counter() - run_started
        if on_update is not None:
            on_update(results)
    if bar is not None:
        bar.close()
    return results


def _add_reductions(results: dict) -> None:
    """``forgetting_reduction`` of every method but finetune (needs the finetune run)."""
    base = results["methods"].get("finetune")
    for name, entry in results["methods"].items():
        if name == "finetune":
            continue
        if base is None:
            entry["forgetting_reduction"] = None
            continue
        entry["forgetting_reduction"] = _clean(
            metrics.forgetting_reduction(
                entry["avg_forgetting"] if entry["avg_forgetting"] is not None else float("nan"),
                base["avg_forgetting"] if base["avg_forgetting"] is not None else float("nan"),
            )
        )


def _clean(x):
    return None if x is None or not np.isfinite(x) else float(x)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
