"""Command line of the sequential-training experiments.

    python -m kfac_tutorial.experiments --model bert --methods finetune,ewc,kfac \\
        --tasks diseases,drugs,phenotypes --profile ci --seeds 0,1,2 --out results.json

Several processes (DDP; batches sliced over the ranks, the Fisher summed over them,
evaluation repeated on every rank, the JSON and the printout from rank 0 only)::

    torchrun --nproc_per_node 2 -m kfac_tutorial.experiments --model cnn --profile test ...

The JSON: the first seed's results plus, per method, ``seeds``/``mean``/``ci95`` and the
paired-bootstrap ``comparisons`` (:mod:`kfac_tutorial.experiments.seeds`); it records the
command, the package version and the git commit it ran at.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from .harness import METHODS, MODELS, SETTINGS, validate
from .seeds import run_seeds
from .profiles import PROFILE_NAMES, get_profile
from .results import write_json_atomic
from .toy import TOY_TASKS


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kfac_tutorial.experiments",
        description="Train one linker on tasks in order; measure forgetting per method.",
    )
    p.add_argument("--model", choices=MODELS, default="cnn")
    p.add_argument("--methods", default="finetune,ewc,kfac", help=f"comma-separated, from: {','.join(METHODS)}")
    p.add_argument(
        "--tasks",
        default="diseases,drugs,phenotypes",
        help="comma-separated: diseases, drugs, phenotypes, icd10cm (kfac_tutorial.data) or toy-a, toy-b, toy-c (synthetic)",
    )
    p.add_argument("--profile", choices=PROFILE_NAMES, default="ci")
    p.add_argument(
        "--setting",
        choices=SETTINGS,
        default="growing",
        help="growing: one concept table over every task (main); per_task: bi-encoder against each task's own names (contrast)",
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds, e.g. 0,1,2: the whole comparison once per seed "
        "(task subsets, initialisation, batch order), with bootstrap intervals",
    )
    p.add_argument("--seed", type=int, default=0, help="one seed (ignored with --seeds)")
    p.add_argument("--checkpoint", default=None, help="BERT checkpoint (hub name or path); default: offline MiniLM")
    p.add_argument(
        "--lambda",
        dest="lambdas",
        action="append",
        default=[],
        metavar="FAMILY=L1,L2",
        help="replace the profile's λ grid of a family (ewc, kfac or l2; the online "
        "variants use their family's), e.g. --lambda kfac=1e4,1e5; repeatable",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default="results.json")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def init_distributed() -> tuple[int, int]:
    """``(rank, world size)``; under ``torchrun`` (``WORLD_SIZE > 1`` in the environment)
    the default process group is initialised first (NCCL on GPUs, one per
    ``LOCAL_RANK``; gloo on CPUs). One process: ``(0, 1)``, nothing initialised."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.checkpoint is None:  # the default MiniLM is a local path: never the hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    rank, world = init_distributed()
    try:
        return _main(args, argv, rank, world)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _main(args, argv, rank: int, world: int) -> int:
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
    try:
        seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    provenance = run_provenance(argv)
    if world > 1:
        provenance["processes"] = world

    def write(results):
        if rank == 0:
            write_json_atomic(args.out, {**results, **provenance})

    results = run_seeds(
        args.model,
        names,
        methods,
        profile,
        seeds,
        setting=args.setting,
        progress=not args.no_progress and rank == 0,
        checkpoint=args.checkpoint,
        on_update=write,
    )
    write(results)
    if rank != 0:
        return 0
    for name, m in results["methods"].items():
        mean, ci = m.get("mean", {}), m.get("ci95", {})
        red, red_ci = mean.get("forgetting_reduction"), ci.get("forgetting_reduction", [None, None])
        lams = ",".join(f"{s['lambda']:g}" for s in m.get("seeds", [m]))
        print(
            f"{name:12s} λ={lams:<16s} final={mean.get('final_avg_accuracy', float('nan')):.3f} "
            f"forgetting={mean.get('avg_forgetting', float('nan')):.3f} "
            f"plasticity={mean.get('plasticity', float('nan')):.3f}"
            + (f" reduction={red:.1%} [{red_ci[0]:.1%}, {red_ci[1]:.1%}]" if red is not None and red_ci[0] is not None else "")
        )
    for c in results.get("comparisons", []):
        if c["metric"] == "forgetting_reduction" and c["ci95"][0] is not None:
            print(f"{c['a']} − {c['b']}: reduction {c['diff']:+.1%} [{c['ci95'][0]:+.1%}, {c['ci95'][1]:+.1%}] → {c['verdict']}")
    print(f"wrote {args.out}")
    return 0


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``; a clear error for anything else."""
    try:
        seeds = [int(x) for x in _split(text)]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if not seeds:
        raise ValueError("--seeds: give at least one seed, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: a seed is listed twice")
    return seeds


def run_provenance(argv=None) -> dict:
    """The command, the package version and the git commit (when run from a checkout)."""
    from .. import __version__

    args = list(sys.argv[1:] if argv is None else argv)
    commit = None
    root = Path(__file__).resolve().parents[2]
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if commit and dirty:
            commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "command": "python -m kfac_tutorial.experiments " + shlex.join(args),
        "kfac_tutorial_version": __version__,
        "git_commit": commit,
    }


def parse_lambda_grids(items: list[str]) -> dict[str, tuple[float, ...]]:
    """``["kfac=1e4,1e5", "ewc=1e6"]`` → ``{"kfac": (1e4, 1e5), "ewc": (1e6,)}``."""
    grids: dict[str, tuple[float, ...]] = {}
    for item in items:
        family, sep, values = item.partition("=")
        family = family.strip()
        if not sep or family not in ("ewc", "kfac", "l2"):
            raise ValueError(f"--lambda {item!r}: expected FAMILY=L1,L2,... with FAMILY ewc, kfac or l2")
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
