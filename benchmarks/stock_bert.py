"""Cost of fitting a stock Hugging Face BERT with every parameter trainable.

A MiniLM-sized ``BertModel`` (random weights, built offline from a config) with a CLS
head, 4 batches of 32 sequences of 32 tokens, default inputs (so BERT calls its
position embedding with ``(1, T)`` ids broadcast over the batch). Reports seconds for
one plain forward+backward over the batches, ``KFAC.fit`` and ``EWC.fit`` (first fit
of a fresh model included: the probes run), and their ratios, in wall-clock seconds
and in CPU seconds of the process (``time.process_time``: less sensitive to a machine
shared with other jobs). Rounds are interleaved and medians reported.

``--tree PATH`` (repeatable) times the package of each checkout ``PATH`` instead of the
importable one: every round runs each tree in a fresh subprocess with
``PYTHONPATH=PATH`` (this file is the worker), the trees alternating in order from round
to round, so a before/after comparison shares the machine's load.

    PYTHONPATH=$PWD python -m benchmarks.stock_bert --rounds 3 --threads 1
    python -m benchmarks.stock_bert --rounds 6 --threads 1 --tree /path/to/before --tree $PWD
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn


class ClsHead(nn.Module):
    """``BertModel`` + linear head on the CLS token; takes the tokenizer's dict."""

    def __init__(self, config, classes: int):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, classes)

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.head(self.bert(**inputs).last_hidden_state[:, 0])


def build(seed: int = 0, classes: int = 20, batches: int = 4, batch_size: int = 32, length: int = 32):
    from transformers import BertConfig

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        attn_implementation="eager",
    )
    model = ClsHead(config, classes).eval()
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(batches):
        ids = torch.randint(1000, 30000, (batch_size, length), generator=g)
        mask = torch.ones(batch_size, length, dtype=torch.long)
        mask[: batch_size // 2, length * 3 // 4 :] = 0
        data.append(({"input_ids": ids, "attention_mask": mask}, torch.randint(0, classes, (batch_size,), generator=g)))
    return model, data


def plain(model, data) -> tuple[float, float]:
    """Wall and CPU seconds of one plain forward+backward over ``data``."""
    t0, c0 = time.perf_counter(), time.process_time()
    for inputs, y in data:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(inputs), y).backward()
    return time.perf_counter() - t0, time.process_time() - c0


def timed_fit(cls, model, data) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    cls.fit(model, data, fisher="mc", progress=False)
    return time.perf_counter() - t0, time.process_time() - c0


def run_rounds(rounds: range, threads: int) -> dict:
    """Wall and CPU seconds per round of plain, KFAC and EWC (in this process)."""
    import kfac_tutorial as kt

    torch.set_num_threads(threads)
    wall = {"plain": [], "KFAC": [], "EWC": []}
    cpu = {k: [] for k in wall}
    for r in rounds:
        for name in ("plain", "KFAC", "EWC"):  # a fresh model each time: first fits
            model, data = build(seed=r)
            plain(model, data[:1])  # warm-up of the kernels, not of the package
            w, c = plain(model, data) if name == "plain" else timed_fit(getattr(kt, name), model, data)
            wall[name].append(w)
            cpu[name].append(c)
    return {"package": kt.__file__, "wall_s": wall, "cpu_s": cpu}


def summary(runs: dict) -> dict:
    out = {"package": runs["package"]}
    for unit in ("wall_s", "cpu_s"):
        med = {k: statistics.median(v) for k, v in runs[unit].items()}
        out[f"median_{unit}"] = med
        for m in ("KFAC", "EWC"):
            out[f"ratio_{m}_{unit[:-2]}"] = med[m] / med["plain"]
            pairs = [a / b for a, b in zip(runs[unit][m], runs[unit]["plain"])]
            out[f"ratio_{m}_{unit[:-2]}_round_median"] = statistics.median(pairs)
    out["runs"] = runs
    return out


def run_trees(trees: list[str], rounds: int, threads: int) -> dict:
    """Each round: each tree in a fresh subprocess (order rotating), one round each."""
    runs = {t: {"wall_s": {}, "cpu_s": {}} for t in trees}
    for r in range(rounds):
        k = r % len(trees)
        for tree in trees[k:] + trees[:k]:
            env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": str(threads)}
            cmd = [sys.executable, os.path.abspath(__file__), "--worker-round", str(r), "--threads", str(threads)]
            res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
            runs[tree]["package"] = res["package"]
            for unit in ("wall_s", "cpu_s"):
                for m, v in res[unit].items():
                    runs[tree][unit].setdefault(m, []).extend(v)
            print(tree, {m: round(v[0], 2) for m, v in res["wall_s"].items()}, file=sys.stderr, flush=True)
    return {tree: summary(run) for tree, run in runs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tree", action="append", default=[], help="a checkout to time (repeatable; see above)")
    parser.add_argument("--worker-round", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_round is not None:  # one round in this process, raw JSON for run_trees
        print(json.dumps(run_rounds(range(args.worker_round, args.worker_round + 1), args.threads)))
        return
    if args.tree:
        out = {"threads": args.threads, "rounds": args.rounds, "trees": run_trees(args.tree, args.rounds, args.threads)}
        if len(args.tree) == 2:
            before, after = (out["trees"][t] for t in args.tree)
            out["after_over_before"] = {
                k: after[k] / before[k] for k in after if k.startswith("ratio_") and not k.endswith("round_median")
            }
    else:
        out = summary(run_rounds(range(args.rounds), args.threads))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
