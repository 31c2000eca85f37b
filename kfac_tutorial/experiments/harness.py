"""The sequential-training harness: tasks in order, one linker, several methods.

Methods (``METHODS``):

* ``finetune``: plain training on each task in turn (the forgetting baseline);
* ``ewc`` / ``kfac``: per-task sum of penalties, ``Σ_{j<t} ½ Δθ_jᵀ F̂_j Δθ_j``,
  each around its own anchor (memory grows with the tasks);
* ``ewc_online`` / ``kfac_online``: one penalty accumulated online,
  ``F ← γ F_old + F_new`` around the newest anchor (``old.merge(new, gamma)``);
* ``joint``: after task t, training on the union of tasks 0..t (replay of everything;
  the upper reference).

Every method starts from the same model after task 0 (task 0 has no penalty, so its
training is shared and run once). After each task every task seen so far is scored on
its test split (acc@1, acc@5) and its dev split; λ of each consolidation method is
chosen from the profile's grid by the final average **dev** accuracy (ties: the
smaller λ), never by test. The Fisher is estimated on the task's training mentions
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
from ..training import evaluate, linking_batches, train
from .profiles import Profile
from .toy import Task, toy_task

__all__ = [
    "METHODS", "MODELS", "SETTINGS", "build_linker", "load_tasks", "parameter_checksum",
    "prepare_task", "run_experiment", "validate",
]

METHODS = ("finetune", "ewc", "kfac", "ewc_online", "kfac_online", "joint")
MODELS = ("cnn", "bert")
SETTINGS = ("growing", "per_task")
_FAMILY = {"ewc": "ewc", "kfac": "kfac", "ewc_online": "ewc", "kfac_online": "kfac"}


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
                raise ValueError(f"task {name!r} is empty: no {split} (need concepts and "
                                 "train/dev/test examples)")
    names = [getattr(t, "name", str(i)) for i, t in enumerate(tasks)]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks listed twice: {names}")


def load_tasks(names: Sequence[str], profile: Profile, seed: int = 0) -> list[Task]:
    """Load tasks by name: ``toy-a``, ``toy-b``, ``toy-c`` (synthetic) or a vocabulary of
    :func:`kfac_tutorial.data.load_task` (diseases, drugs, phenotypes, icd10cm)."""
    tasks = []
    for name in names:
        if name.startswith("toy"):
            n = profile.max_concepts or 20
            task = toy_task(name, n_concepts=n, seed=seed)
        else:
            from ..data import load_task

            task = load_task(name, seed=seed, max_concepts=profile.max_concepts,
                             require_test=True)
        tasks.append(task)
    return tasks


def _stable_shuffle(items: list, seed: int, salt: str) -> list:
    rng = random.Random(f"{seed}:{salt}")
    items = list(items)
    rng.shuffle(items)
    return items


def prepare_task(task, profile: Profile, seed: int = 0) -> Task:
    """Cut a task to the profile: at most ``max_concepts`` concepts (the first ones),
    ``max_train_per_concept`` mentions each (plus the preferred name when
    ``train_on_names``), ``max_eval`` dev and test examples (a seeded sample)."""
    name = getattr(task, "name", "task")
    ids = list(task.concepts)[: profile.max_concepts] if profile.max_concepts else list(task.concepts)
    keep = set(ids)
    concepts = {c: task.concepts[c] for c in ids}
    train_ex, per = [], {}
    for mention, cid in task.train:
        if cid in keep and (profile.max_train_per_concept is None
                            or per.get(cid, 0) < profile.max_train_per_concept):
            per[cid] = per.get(cid, 0) + 1
            train_ex.append((mention, cid))
    if profile.train_on_names:
        train_ex += [(concepts[c], c) for c in ids]

    def cut(examples, split):
        kept = [(m, c) for m, c in examples if c in keep]
        if profile.max_eval is not None and len(kept) > profile.max_eval:
            kept = _stable_shuffle(kept, seed, f"{name}:{split}")[: profile.max_eval]
        return kept

    return Task(name, concepts, train_ex, cut(task.dev, "dev"), cut(task.test, "test"))


def build_linker(model: str, inventory: ConceptInventory, profile: Profile,
                 setting: str = "growing", seed: int = 0,
                 checkpoint: str | None = None) -> Linker:
    """The profile's CNN or BERT linker over ``inventory``, seeded."""
    kwargs = dict(profile.linker)
    if model == "cnn":
        return cnn_linker(inventory, setting=setting, max_length=profile.max_length,
                          seed=seed, **kwargs)
    if model == "bert":
        return bert_linker(inventory, setting=setting, max_length=profile.max_length,
                           seed=seed, checkpoint=checkpoint, **kwargs)
    raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")


# -- one run -----------------------------------------------------------------------------

def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA), else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Sequence:
    """State shared by the methods of one experiment: the tasks, the linker, task 0."""

    def __init__(self, linker: Linker, tasks: list[Task], profile: Profile, seed: int,
                 progress: bool):
        self.linker, self.tasks, self.profile, self.seed = linker, tasks, profile, seed
        self.progress = progress
        self.device = linker.device()

    # training -------------------------------------------------------------------------
    def train_task(self, t: int, method: str, lam: float = 0.0, penalty=None) -> None:
        p, linker = self.profile, self.linker
        if method == "joint":
            ids = [c for task in self.tasks[: t + 1] for c in task.concepts]
            examples = [ex for task in self.tasks[: t + 1] for ex in task.train]
        else:
            ids, examples = list(self.tasks[t].concepts), self.tasks[t].train
        linker.begin_task(ids)
        batches = linking_batches(linker, examples, p.batch_size, shuffle=True,
                                  seed=self.seed * 1000 + t)
        torch.manual_seed(self.seed * 1000 + t)  # dropout
        train(linker, batches, epochs=p.epochs, lr=p.lr, head_lr=p.head_lr,
              penalty=penalty, lam=lam, method=method, task=self.tasks[t].name,
              max_grad_norm=p.max_grad_norm, label_smoothing=p.label_smoothing,
              progress=self.progress)

    def fit_curvature(self, family: str, t: int):
        from ..consolidation import EWC, KFAC

        p, linker = self.profile, self.linker
        linker.begin_task(list(self.tasks[t].concepts))  # task t's softmax (no-op if current)
        examples = _stable_shuffle(self.tasks[t].train, self.seed, f"fisher:{t}")
        if p.fisher_examples:
            examples = examples[: p.fisher_examples]
        batches = list(linking_batches(linker, examples, p.batch_size))
        common = dict(fisher=p.fisher, mc_samples=p.mc_samples, seed=self.seed * 1000 + t,
                      progress=False)
        if family == "ewc":
            return EWC.fit(linker, batches, **common)
        modules = dict(linker.named_modules())
        diagonal = tuple(m for m in p.kfac_diagonal if m in modules)
        return KFAC.fit(linker, batches, weight_sharing=p.weight_sharing,
                        diagonal_modules=diagonal, **common)

    # evaluation -----------------------------------------------------------------------
    def evaluate_row(self, t: int) -> dict[str, list]:
        """Scores of tasks 0..t after task t (``None`` for later tasks)."""
        p, linker = self.profile, self.linker
        row = {"test@1": [], "test@5": [], "dev@1": []}
        for k, task in enumerate(self.tasks):
            if k > t:
                for key in row:
                    row[key].append(None)
                continue
            with linker.scoring(list(task.concepts)):
                test = evaluate(linker, linking_batches(linker, task.test, p.eval_batch_size))
                dev = evaluate(linker, linking_batches(linker, task.dev, p.eval_batch_size),
                               ks=(1,))
            row["test@1"].append(test["acc@1"])
            row["test@5"].append(test["acc@5"])
            row["dev@1"].append(dev["acc@1"])
        return row


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


def run_experiment(model: str, tasks: Sequence, methods: Sequence[str], profile: Profile,
                   seed: int = 0, setting: str = "growing", progress: bool = True,
                   checkpoint: str | None = None,
                   on_update: Callable[[dict], None] | None = None) -> dict:
    """Run every method over ``tasks`` in order; returns the results dict of the CLI.

    ``tasks``: objects with ``name``, ``concepts``, ``train``, ``dev``, ``test`` (cut to
    the profile by :func:`prepare_task`). ``on_update(results)`` is called after each
    method (the CLI writes the JSON there, so that finished methods survive a later
    error).
    """
    validate(model, methods, tasks, setting)
    tasks = [prepare_task(t, profile, seed) for t in tasks]
    validate(model, methods, tasks, setting)  # still non-empty after the cut
    _seed_everything(seed)
    inventory = ConceptInventory.union(tasks)
    linker = build_linker(model, inventory, profile, setting, seed, checkpoint)
    if torch.cuda.is_available():
        linker = linker.cuda()
    run = _Sequence(linker, tasks, profile, seed, progress)
    T = len(tasks)
    order = sorted(methods, key=lambda m: m != "finetune")  # the baseline first

    results = {
        "model": model, "tasks": [t.name for t in tasks], "profile": profile.name,
        "seed": seed, "setting": setting, "forgetting_kind": "max",
        "lambda_selection": "final average dev acc@1 over the profile's grid",
        "concepts": len(inventory),
        "examples": {t.name: {"concepts": len(t.concepts), "train": len(t.train),
                              "dev": len(t.dev), "test": len(t.test)} for t in tasks},
        "device": str(run.device) if run.device.type != "cuda"
        else torch.cuda.get_device_name(run.device),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "config": _jsonable(asdict(profile)), "methods": {},
    }

    grids = {m: (tuple(profile.lambdas[_FAMILY[m]]) if m in _FAMILY else (0.0,)) for m in order}
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
    shared_seconds = time.perf_counter() - start
    if bar is not None:
        bar.update(1)
    curvature0, fit0_seconds = {}, {}
    for family in dict.fromkeys(_FAMILY[m] for m in order if m in _FAMILY):
        if T > 1:  # the Fisher of task 0, shared by the per-task and online variants
            fit_start = time.perf_counter()
            curvature0[family] = run.fit_curvature(family, 0)
            fit0_seconds[family] = time.perf_counter() - fit_start

    for method in order:
        family = _FAMILY.get(method)
        online = method.endswith("_online")
        sweep = []
        method_start = time.perf_counter()
        for lam in grids[method]:
            run_start = time.perf_counter()
            linker.load_state_dict(after0)
            state = curvature0.get(family)
            rows = [row0]
            for t in range(1, T):
                if bar is not None:
                    bar.set_description(f"{method} λ={lam:g} · {tasks[t].name}", refresh=False)
                run.train_task(t, method, lam, state.penalty if state is not None else None)
                rows.append(run.evaluate_row(t))
                if bar is not None:
                    bar.update(1)
                if family is not None and t < T - 1:
                    new = run.fit_curvature(family, t)
                    state = state.merge(new, profile.gamma) if online else state + new
            R_dev = _matrix(rows, "dev@1")
            sweep.append({
                "lambda": lam,
                "dev_final_avg_accuracy": metrics.final_average_accuracy(R_dev),
                "dev_avg_forgetting": _clean(metrics.average_forgetting(R_dev)),
                "dev_plasticity": metrics.plasticity(R_dev),
                "accuracy_matrix": _matrix(rows, "test@1"),
                "accuracy_matrix_at5": _matrix(rows, "test@5"),
                "dev_accuracy_matrix": _matrix(rows, "dev@1"),
                "curvature_bytes": int(state.memory_bytes()) if state is not None else 0,
                "seconds": shared_seconds + fit0_seconds.get(family, 0.0)
                + time.perf_counter() - run_start,
                "parameter_sha1": parameter_checksum(linker),
            })
        best = max(sweep, key=lambda s: (s["dev_final_avg_accuracy"], -s["lambda"]))
        R = best["accuracy_matrix"]
        entry = {
            "accuracy_matrix": R,
            "accuracy_matrix_at5": best["accuracy_matrix_at5"],
            "dev_accuracy_matrix": best["dev_accuracy_matrix"],
            **metrics.summarize(R),
            "lambda": best["lambda"],
            "seconds": best["seconds"],
            "sweep_seconds": shared_seconds + fit0_seconds.get(family, 0.0)
            + time.perf_counter() - method_start,
            "peak_memory_mb": _peak_memory_mb(run.device),
            "curvature_bytes": best["curvature_bytes"],
            "parameter_sha1": best["parameter_sha1"],
        }
        if family is not None:
            entry["lambda_sweep"] = [
                {**s, **{f"test_{k}": v for k, v in metrics.summarize(s["accuracy_matrix"]).items()
                         if k in ("avg_forgetting", "plasticity", "final_avg_accuracy")}}
                for s in sweep
            ]
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
        entry["forgetting_reduction"] = _clean(metrics.forgetting_reduction(
            entry["avg_forgetting"] if entry["avg_forgetting"] is not None else float("nan"),
            base["avg_forgetting"] if base["avg_forgetting"] is not None else float("nan")))


def _clean(x):
    return None if x is None or not np.isfinite(x) else float(x)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
