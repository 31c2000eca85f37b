"""Like-for-like estimation timing on a configuration the peers support: the MiniLM
linker with only Linear weights trainable (embeddings, LayerNorm frozen), ours KFAC
(restricted to the same Linear layers) vs curvlinops KFAC vs one plain forward+backward,
interleaved repeats (load on a shared machine hits all alike).

    /tmp/peervenv/bin/python -m benchmarks.like_for_like [examples] [repeats] [out.json]

``BENCH_THREADS=1`` sets torch's thread count (default: torch's own);
``BENCH_WORKLOAD=bert-base`` times the BERT-base-sized model instead (batches of 16).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from .peers import curvlinops_kfac, only_linear, ours_kfac, plain_fwd_bwd, versions
from .workloads import workload


def main(examples: int = 32, repeats: int = 2, out: str | None = None) -> dict:
    import torch

    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    name = os.environ.get("BENCH_WORKLOAD", "minilm")
    w = workload(name, examples=examples, **({"batch_size": 16} if name == "bert-base" else {}))
    res = {
        "threads": torch.get_num_threads(),
        "workload": w.name,
        "variant": "linear",
        "examples": examples,
        "versions": versions(),
        "runs_s": {},
    }
    with only_linear(w.model, True):
        fns = {
            "plain fwd+bwd": plain_fwd_bwd(w, "linear"),
            "ours KFAC": ours_kfac(w, "linear"),
            "curvlinops KFAC": curvlinops_kfac(w, "linear"),
        }
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
                print(k, f"{times[k][-1]:.2f}s", flush=True)
    res["runs_s"] = times
    for k, v in times.items():
        res[k] = {
            "median_s": statistics.median(v),
            "min_s": min(v),
            "over_plain_pairs_median": statistics.median(a / b for a, b in zip(v, times["plain fwd+bwd"])),
        }
    res["ours_over_curvlinops_pairs_median"] = statistics.median(
        a / b for a, b in zip(times["ours KFAC"], times["curvlinops KFAC"])
    )
    res["ours_over_curvlinops_min"] = min(times["ours KFAC"]) / min(times["curvlinops KFAC"])
    print(json.dumps({k: v for k, v in res.items() if k != "versions"}, indent=1))
    if out:
        json.dump(res, open(out, "w"), indent=1)
    return res


if __name__ == "__main__":
    a = sys.argv[1:]
    main(int(a[0]) if a else 32, int(a[1]) if len(a) > 1 else 2, a[2] if len(a) > 2 else None)
