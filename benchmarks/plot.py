"""One figure of the benchmark results (``plot_benchmarks(results, path)``), loadable
from the committed JSON by a book chapter:

>>> import json; from benchmarks.plot import plot_benchmarks                       # doctest: +SKIP
>>> plot_benchmarks(json.load(open("benchmarks/results/benchmarks.json")), "b.png")  # doctest: +SKIP
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_benchmarks(results: dict, path=None):
    """Four panels: estimation time per method and model (failures marked; ``linear``:
    only Linear/Conv weights trainable, the like-for-like comparison with peers, hatched),
    training step over a plain step, state bytes over parameter bytes, growth."""
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    axes = axes.ravel()
    est = [
        dict(r, method=r["method"] + (" [linear]" if r.get("variant") == "linear" else ""))
        for r in results.get("estimation", [])
        if r.get("method") != "_notes"
    ]
    ax = axes[0]
    workloads = list(dict.fromkeys(r["workload"] for r in est))
    methods = list(dict.fromkeys(r["method"] for r in est))
    width = 0.8 / max(len(workloads), 1)
    for i, wl in enumerate(workloads):
        for j, m in enumerate(methods):
            r = next((r for r in est if r["workload"] == wl and r["method"] == m), None)
            if r is None:
                continue
            y = j + (i - (len(workloads) - 1) / 2) * width
            if r["ok"]:
                ax.barh(
                    y,
                    r.get("over_plain_fwd_bwd", float("nan")),
                    height=width,
                    color=f"C{i}",
                    hatch="//" if "[linear]" in m else None,
                    label=wl if j == 0 else None,
                )
            else:
                ax.text(0.05, y, "✗ failed", va="center", fontsize=7, color=f"C{i}")
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(1.5, color="r", ls="--", lw=0.8)
    ax.set_xlabel("estimation time / one plain forward+backward (median)")
    ax.set_title("Curvature estimation (MC, 1 sample)")
    ax.legend(fontsize=7)
    ax = axes[1]
    rows = (results.get("step") or {}).get("rows", [])
    ax.bar([r["variant"].replace(" low-rank ", "\nlow-rank ") for r in rows], [r["over_plain"] for r in rows], color="C2")
    ax.axhline(1.3, color="r", ls="--", lw=0.8, label="target KFAC 1.3×")
    ax.set_ylabel("step time / plain step (median)")
    ax.set_title(f"Training step, {results.get('step', {}).get('workload', '')}")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)
    ax = axes[2]
    st = results.get("state", {})
    names = list(st)
    for k, (key, lab) in enumerate(
        (("full", "in memory"), ("file", "file (packed)"), ("low_rank_tol=0.01", "low-rank tol 0.01"))
    ):
        vals = []
        for n in names:
            e = st[n]["full"] if key == "file" else st[n].get(key)
            vals.append(
                float("nan")
                if e is None
                else e["file_curvature_over_parameters"]
                if key == "file"
                else e["state_over_parameters"]
            )
        ax.bar([i + (k - 1) * 0.27 for i in range(len(names))], vals, width=0.27, label=lab)
    ax.axhline(1.0, color="k", lw=0.8, label="EWC (1×)")
    ax.axhline(1.5, color="r", ls="--", lw=0.8, label="target 1.5×")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("KFAC state bytes / parameter bytes")
    ax.set_title("Curvature state")
    ax.legend(fontsize=7)
    ax = axes[3]
    gr = results.get("growth", {})
    if gr.get("sequence_length"):
        r = gr["sequence_length"]
        ax.plot([x["length"] for x in r], [x["fit_over_plain"] for x in r], "o-", label="fit / plain vs sequence length")
    if gr.get("vocabulary"):
        r = gr["vocabulary"]
        ax.plot(
            [x["vocab"] / 1000 for x in r], [x["fit_over_plain"] for x in r], "s-", label="fit / plain vs vocabulary (thousands)"
        )
    ax.set_xlabel("sequence length  |  vocabulary size / 1000")
    ax.set_ylabel("KFAC fit / plain fwd+bwd (2-layer BERT-base)")
    if gr.get("tasks"):
        ax2 = ax.twinx()
        r = gr["tasks"]
        ax2.plot(
            [x["tasks"] for x in r],
            [x["sum_state_bytes"] / 2**20 for x in r],
            "^--",
            color="C3",
            label="per-task sum: state MiB vs tasks",
        )
        ax2.plot(
            [x["tasks"] for x in r],
            [x["online_state_bytes"] / 2**20 for x in r],
            "v--",
            color="C4",
            label="online: state MiB vs tasks",
        )
        ax2.set_ylabel("state MiB (MiniLM linker)")
        ax2.legend(fontsize=7, loc="lower right")
    ax.set_title("Growth")
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(results.get("machine", ""), fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
