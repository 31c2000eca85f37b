"""Command line of the sequential-training experiments.

    python -m kfac_tutorial.experiments --model bert --methods finetune,ewc,kfac \\
        --tasks diseases,drugs,phenotypes --profile ci --seed 0 --out results.json
"""

from __future__ import annotations

import argparse
import os
import sys

from .harness import METHODS, MODELS, SETTINGS, load_tasks, run_experiment, validate
from .profiles import PROFILE_NAMES, get_profile
from .results import write_json_atomic
from .toy import TOY_TASKS


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kfac_tutorial.experiments",
        description="Train one linker on tasks in order; measure forgetting per method.")
    p.add_argument("--model", choices=MODELS, default="cnn")
    p.add_argument("--methods", default="finetune,ewc,kfac",
                   help=f"comma-separated, from: {','.join(METHODS)}")
    p.add_argument("--tasks", default="diseases,drugs,phenotypes",
                   help="comma-separated: diseases, drugs, phenotypes, icd10cm "
                        "(kfac_tutorial.data) or toy-a, toy-b, toy-c (synthetic)")
    p.add_argument("--profile", choices=PROFILE_NAMES, default="ci")
    p.add_argument("--setting", choices=SETTINGS, default="growing",
                   help="growing: one concept table over every task (main); "
                        "per_task: bi-encoder against each task's own names (contrast)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None,
                   help="BERT checkpoint (hub name or path); default: offline MiniLM")
    p.add_argument("--lambda", dest="lambdas", action="append", default=[], metavar="FAMILY=L1,L2",
                   help="replace the profile's λ grid of a family (ewc or kfac; the online "
                        "variants use their family's), e.g. --lambda kfac=1e4,1e5; repeatable")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default="results.json")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.checkpoint is None:  # the default MiniLM is a local path: never the hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    methods, names = _split(args.methods), _split(args.tasks)
    try:
        validate(args.model, methods, [_Named(n) for n in names], args.setting)
        _check_task_names(names)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    profile = get_profile(args.model, args.profile)
    try:
        grids = parse_lambda_grids(args.lambdas)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if grids:
        profile = profile.with_overrides(lambdas={**profile.lambdas, **grids})
    tasks = load_tasks(names, profile, seed=args.seed)
    results = run_experiment(
        args.model, tasks, methods, profile, seed=args.seed, setting=args.setting,
        progress=not args.no_progress, checkpoint=args.checkpoint,
        on_update=lambda r: write_json_atomic(args.out, r))
    write_json_atomic(args.out, results)
    for name, m in results["methods"].items():
        red = m.get("forgetting_reduction")
        print(f"{name:12s} λ={m['lambda']:<8g} final={m['final_avg_accuracy']:.3f} "
              f"forgetting={m['avg_forgetting']:.3f} plasticity={m['plasticity']:.3f}"
              + (f" reduction={red:.1%}" if red is not None else "")
              + f" ({m['seconds']:.0f}s)")
    print(f"wrote {args.out}")
    return 0


def parse_lambda_grids(items: list[str]) -> dict[str, tuple[float, ...]]:
    """``["kfac=1e4,1e5", "ewc=1e6"]`` → ``{"kfac": (1e4, 1e5), "ewc": (1e6,)}``."""
    grids: dict[str, tuple[float, ...]] = {}
    for item in items:
        family, sep, values = item.partition("=")
        family = family.strip()
        if not sep or family not in ("ewc", "kfac"):
            raise ValueError(f"--lambda {item!r}: expected FAMILY=L1,L2,... with FAMILY ewc or kfac")
        try:
            grid = tuple(float(v) for v in _split(values))
        except ValueError:
            raise ValueError(f"--lambda {item!r}: the values must be numbers, e.g. kfac=1e4,1e5") from None
        if not grid or any(not (v > 0) for v in grid):
            raise ValueError(f"--lambda {item!r}: give at least one positive λ")
        grids[family] = grid
    return grids


def _check_task_names(names: list[str]) -> None:
    from ..data import TASK_NAMES

    unknown = [n for n in names if n not in TASK_NAMES and n not in TOY_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid: {', '.join(TASK_NAMES + TOY_TASKS)}")


class _Named:
    """A placeholder that passes the up-front checks (names are checked, data later)."""

    def __init__(self, name):
        self.name = name
        self.concepts = self.train = self.dev = self.test = [None]


if __name__ == "__main__":
    sys.exit(main())
