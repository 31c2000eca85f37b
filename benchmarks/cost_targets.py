"""Issue 14's cost targets, as ratios, for one or several checkouts side by side.

    PYTHONPATH=$PWD python -m benchmarks.cost_targets --tree /path/to/before --tree $PWD \\
        [--rounds 3] [--threads 1] [--out benchmarks/results/cost_targets_cpu.json]

Every measurement runs in a fresh process whose ``PYTHONPATH`` is the checkout (so its
``kfac_tutorial`` and ``benchmarks.workloads`` are used); the checkouts alternate within
each round, so a load on the machine hits them alike. Each worker times the operation and
its baseline in the same process (warm-up first, then interleaved) and reports the
median ratio. Only APIs that every checkout has are called (the default fit: no
``storage`` argument), so an older checkout measures its own default.

Targets (issue 14; the ratio and its goal):

* ``stock_bert_kfac`` / ``stock_bert_ewc``: ``KFAC.fit`` / ``EWC.fit`` of a stock
  MiniLM-sized ``BertModel`` + CLS head, every parameter trainable, default inputs, the
  *first* fit of a fresh model (probes included), over one plain forward+backward on the
  same 4 batches of 32: ≤ 1.5.
* ``cnn_kfac``: KFAC estimation of the ``ci`` CNN linker (256 mentions) over one plain
  forward+backward with sampled labels (the package's ``plain_fwd_bwd``): ≤ 1.5.
* ``step_64`` / ``step_256``: a training step with the default KFAC penalty over a plain
  step, MiniLM linker, batch 32, the Fisher from 64 / 256 mentions: ≤ 1.3.
* ``minilm_vs_curvlinops``: curvlinops' KFAC seconds over ours, MiniLM linker with only
  Linear weights trainable, one batch of 32 (``benchmarks.like_for_like``): ≥ 1.0.
* ``bert_base_state``: bytes of the default KFAC state in memory over the trainable
  parameter bytes, BERT-base-sized model, Fisher from 32 examples: ≤ 1.5 (deterministic:
  one round).
* ``bert_base_state_full_rank``: the same with full factors (``storage="dense"`` where the
  checkout has the keyword), in the most compact exact form the checkout holds in memory
  (``KFAC.packed()`` where it exists): ≤ 1.5 (deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOALS = {
    "stock_bert_kfac": ("<=", 1.5),
    "stock_bert_ewc": ("<=", 1.5),
    "cnn_kfac": ("<=", 1.5),
    "step_64": ("<=", 1.3),
    "step_256": ("<=", 1.3),
    "minilm_vs_curvlinops": (">=", 1.0),
    "bert_base_state": ("<=", 1.5),
    "bert_base_state_full_rank": ("<=", 1.5),
}
DETERMINISTIC = {"bert_base_state", "bert_base_state_full_rank"}


# -- workers (run inside one checkout) ------------------------------------------------------
def _pair_ratio(times: dict, top: str, bottom: str) -> float:
    return statistics.median(a / b for a, b in zip(times[top], times[bottom]))


def _stock_bert_fit(method: str, seed: int) -> dict:
    from torch import nn

    import kfac_tutorial as kt
    from benchmarks.stock_bert import build  # the checkout's own stock model and batches

    def plain(model, data):
        for inputs, y in data:
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(inputs), y).backward()

    fit_s, plain_s = [], []
    for k in range(3):  # a fresh model for every fit: first fits, probes included
        model, data = build(seed=seed * 10 + k)
        plain(model, data[:1])  # warm-up of the kernels, not of the package
        t0 = time.perf_counter()
        plain(model, data)
        plain_s.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        getattr(kt, method).fit(model, data, fisher="mc", progress=False)
        fit_s.append(time.perf_counter() - t0)
        del model
    return {"ratio": statistics.median(a / b for a, b in zip(fit_s, plain_s)), "fit_s": fit_s, "plain_s": plain_s}


def _cnn_kfac(seed: int) -> dict:
    from benchmarks.peers import ours_kfac, plain_fwd_bwd
    from benchmarks.workloads import workload
    from kfac_tutorial.experiments.cost import _timed  # warm-up, then interleaved rounds (every checkout has it)

    w = workload("cnn")
    times = _timed({"plain": plain_fwd_bwd(w, "all"), "KFAC": ours_kfac(w, "all")}, 3)
    return {"ratio": _pair_ratio(times, "KFAC", "plain"), "times_s": times}


def _step(examples: int, seed: int) -> dict:
    import kfac_tutorial as kt
    from benchmarks.workloads import workload
    from kfac_tutorial.experiments import time_penalty_steps

    w = workload("minilm", examples=examples)
    modules = dict(w.model.named_modules())
    kfac = kt.KFAC.fit(
        w.model,
        w.batches,
        fisher="mc",
        weight_sharing=w.weight_sharing,
        diagonal_modules=tuple(m for m in w.kfac_diagonal if m in modules),
        progress=False,
    )
    inputs, targets = w.batches[0]
    steps = time_penalty_steps(w.model, inputs, targets, {"plain": None, "KFAC": kfac}, repeats=5)
    roots = sum(bool(getattr(f, "A_root", False)) + bool(getattr(f, "G_root", False)) for f in kfac.factors.values())
    return {"ratio": steps["KFAC"]["over_plain"], "steps": steps, "roots": roots, "factors": 2 * len(kfac.factors)}


def _minilm_vs_curvlinops(seed: int) -> dict:
    import io
    from contextlib import redirect_stdout

    from benchmarks import like_for_like

    with redirect_stdout(io.StringIO()):
        res = like_for_like.main(32, 5)
    return {
        "ratio": 1.0 / res["ours_over_curvlinops_pairs_median"],
        "ours_s": res["ours KFAC"],
        "curvlinops_s": res["curvlinops KFAC"],
    }


def _bert_base_state(seed: int) -> dict:
    import kfac_tutorial as kt
    from benchmarks.workloads import workload

    w = workload("bert-base", examples=32, batch_size=16)
    kfac = kt.KFAC.fit(w.model, w.batches, fisher="mc", weight_sharing=w.weight_sharing, progress=False)
    params = sum(p.numel() * p.element_size() for p in w.model.parameters() if p.requires_grad)
    return {"ratio": kfac.memory_bytes() / params, "state_bytes": kfac.memory_bytes(), "parameter_bytes": params}


def _bert_base_state_full_rank(seed: int) -> dict:
    """Full factors (as a Fisher over more examples than every factor is wide gives them;
    their bytes do not depend on the data), in the most compact exact form the checkout
    holds in memory: packed upper triangles where ``KFAC.packed`` exists, else dense."""
    import inspect

    import kfac_tutorial as kt
    from benchmarks.workloads import workload

    w = workload("bert-base", examples=32, batch_size=16)
    dense = {"storage": "dense"} if "storage" in inspect.signature(kt.KFAC.fit).parameters else {}
    kfac = kt.KFAC.fit(w.model, w.batches, fisher="mc", weight_sharing=w.weight_sharing, progress=False, **dense)
    form = "dense"
    if hasattr(kfac, "packed"):
        kfac, form = kfac.packed(), "packed"
    params = sum(p.numel() * p.element_size() for p in w.model.parameters() if p.requires_grad)
    return {"ratio": kfac.memory_bytes() / params, "form": form, "state_bytes": kfac.memory_bytes(), "parameter_bytes": params}


WORKERS = {
    "stock_bert_kfac": lambda seed: _stock_bert_fit("KFAC", seed),
    "stock_bert_ewc": lambda seed: _stock_bert_fit("EWC", seed),
    "cnn_kfac": _cnn_kfac,
    "step_64": lambda seed: _step(64, seed),
    "step_256": lambda seed: _step(256, seed),
    "minilm_vs_curvlinops": _minilm_vs_curvlinops,
    "bert_base_state": _bert_base_state,
    "bert_base_state_full_rank": _bert_base_state_full_rank,
}


def _worker(target: str, seed: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    out = WORKERS[target](seed)
    print("RESULT " + json.dumps(out))


# -- the driver --------------------------------------------------------------------------------
def _run(tree: Path, target: str, seed: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", target, "--seed", str(seed), "--threads", str(threads)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"ok": False, "error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
    return {"ok": True, "wall_s": time.time() - t0, **json.loads(lines[-1][len("RESULT ") :])}


def _git(tree: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cost_targets", description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", required=True, help="a checkout (repeatable; first = before)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--targets", default=",".join(WORKERS), help="comma-separated subset of: " + ", ".join(WORKERS))
    p.add_argument("--out")
    args = p.parse_args(argv)
    trees = [Path(t).resolve() for t in args.tree]
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in WORKERS]
    if unknown:
        p.error(f"unknown target(s) {unknown}; choose from {', '.join(WORKERS)}")
    runs: dict = {t: {str(tree): [] for tree in trees} for t in targets}
    for r in range(args.rounds):
        for target in targets:
            if target in DETERMINISTIC and r > 0:
                continue
            order = trees if r % 2 == 0 else trees[::-1]
            for tree in order:
                res = _run(tree, target, r, args.threads)
                runs[target][str(tree)].append(res)
                shown = f"{res['ratio']:.3f}" if res["ok"] else f"FAILED {res['error']}"
                print(f"round {r} {target:<22} {tree.name:<12} {shown}", flush=True)
    summary = {}
    for target in targets:
        op, goal = GOALS[target]
        summary[target] = {"goal": f"{op} {goal}"}
        for tree in trees:
            ratios = [x["ratio"] for x in runs[target][str(tree)] if x["ok"]]
            med = statistics.median(ratios) if ratios else None
            met = None if med is None else (med <= goal if op == "<=" else med >= goal)
            summary[target][str(tree)] = {"median_ratio": med, "ratios": ratios, "met": met}
    out = {
        "trees": {
            str(t): {"commit": _git(t, "rev-parse", "HEAD"), "describe": _git(t, "log", "-1", "--format=%h %s")[:120]}
            for t in trees
        },
        "threads": args.threads,
        "rounds": args.rounds,
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "summary": summary,
        "runs": runs,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    if "--worker" in sys.argv:
        a = argparse.ArgumentParser()
        a.add_argument("--worker")
        a.add_argument("--seed", type=int, default=0)
        a.add_argument("--threads", type=int, default=1)
        ns = a.parse_args()
        _worker(ns.worker, ns.seed, ns.threads)
    else:
        main()
