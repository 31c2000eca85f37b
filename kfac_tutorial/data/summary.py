"""Dataset summaries: counts per split, ambiguity, anti-leakage, mention lengths.

:func:`summarize` returns a flat ``dict`` for one task (so it prints and serialises
simply); :func:`summary_table` stacks several into a :class:`pandas.DataFrame`, one
row per task, for the data chapter.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable

from .splits import SPLITS
from .task import LinkingTask

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["summarize", "summary_table"]


def _length_stats(prefix: str, mentions: list[str]) -> dict[str, float]:
    if not mentions:
        return {f"{prefix}_chars_mean": 0.0, f"{prefix}_words_mean": 0.0}
    chars = [len(m) for m in mentions]
    words = [len(m.split()) for m in mentions]
    return {
        f"{prefix}_chars_mean": round(statistics.fmean(chars), 2),
        f"{prefix}_chars_median": float(statistics.median(chars)),
        f"{prefix}_chars_max": max(chars),
        f"{prefix}_words_mean": round(statistics.fmean(words), 2),
        f"{prefix}_words_median": float(statistics.median(words)),
        f"{prefix}_words_max": max(words),
    }


def summarize(task: LinkingTask) -> dict[str, Any]:
    """Counts and length statistics of one task.

    Keys: ``task``, ``concepts``, ``train``/``dev``/``test`` (mentions),
    ``concepts_in_<split>``, ``train_mentions_per_concept_mean``/``_max``, the
    anti-leakage and ambiguity counts of ``task.stats`` (``rewrite_of_name_to_train``,
    ``held_out_rewrites_dropped``, ``ambiguous_variants``, ``ambiguous_strings``, and
    for PubTator corpora the skipped-id counts), and ``<split>_chars_*`` /
    ``<split>_words_*`` mention lengths for train and test.
    """
    out: dict[str, Any] = {"task": task.name, "concepts": len(task.concepts)}
    for s in SPLITS:
        out[s] = len(task.split(s))
    for s in SPLITS:
        out[f"concepts_in_{s}"] = len({c for _, c in task.split(s)})
    per_concept = Counter(c for _, c in task.train)
    counts = [per_concept.get(c, 0) for c in task.concepts] or [0]
    out["train_mentions_per_concept_mean"] = round(statistics.fmean(counts), 2)
    out["train_mentions_per_concept_max"] = max(counts)
    test_per_concept = Counter(c for _, c in task.test)
    out["test_mentions_per_test_concept_mean"] = round(
        statistics.fmean(test_per_concept.values()) if test_per_concept else 0.0, 2
    )
    for key, value in task.stats.items():
        if key != "variants":
            out[key] = value
    for s in ("train", "test"):
        out.update(_length_stats(s, [m for m, _ in task.split(s)]))
    return out


def summary_table(tasks: Iterable[LinkingTask]) -> pd.DataFrame:
    """One row per task (index: task name) of :func:`summarize`; missing counts are 0."""
    import pandas as pd

    rows = [summarize(t) for t in tasks]
    frame = pd.DataFrame(rows).set_index("task")
    for col in frame.columns:
        if frame[col].dtype.kind in "if":
            values = frame[col].fillna(0)
            integral = bool((values == values.round()).all())
            is_stat = not col.endswith(("_mean", "_median"))
            frame[col] = values.astype(int) if integral and is_stat else values
    return frame


__all__ += ["plot_task_summary"]


def plot_task_summary(tasks: Iterable[LinkingTask], *, max_mentions: int = 20, max_words: int = 20, title: str | None = None):
    """Three panels comparing tasks: split sizes, training mentions per concept and
    mention length in words; returns the :class:`matplotlib.figure.Figure`.

    ``tasks``: :class:`LinkingTask` objects (or a mapping name -> task). Mentions per
    concept count every training mention, the preferred name included, and are
    clipped at ``max_mentions`` (the last bar is "that many or more"); lengths count
    whitespace-separated words of every mention of every split, clipped at
    ``max_words``. Distributions are proportions within each task, so tasks of
    different sizes compare directly.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import seaborn as sns

    if hasattr(tasks, "values"):
        tasks = tasks.values()
    tasks = list(tasks)
    if not tasks:
        raise ValueError("plot_task_summary needs at least one task")
    names = [t.name for t in tasks]
    sizes = pd.DataFrame(
        [(t.name, s, len(t.split(s))) for t in tasks for s in SPLITS],
        columns=["task", "split", "mentions"],
    )
    rows = []
    for t in tasks:
        counts = Counter(cid for _, cid in t.train)
        rows.extend((t.name, min(counts.get(cid, 0), max_mentions)) for cid in t.concepts)
    per_concept = pd.DataFrame(rows, columns=["task", "mentions"])
    lengths = pd.DataFrame(
        [(t.name, min(len(m.split()), max_words)) for t in tasks for s in SPLITS for m, _ in t.split(s)],
        columns=["task", "words"],
    )

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    sns.barplot(data=sizes, x="task", y="mentions", hue="split", order=names, hue_order=list(SPLITS), ax=ax)
    ax.set_yscale("log")
    ax.set_ylim(max(1, min(10, sizes["mentions"].min() / 2)), sizes["mentions"].max() * 100)
    for bars in ax.containers:
        ax.bar_label(bars, fmt="{:,.0f}", fontsize=7, rotation=90, padding=2)
    ax.set_title("Split sizes per task")
    ax.set_xlabel("task")
    ax.set_ylabel("mentions (log scale)")
    ax.legend(title="split", fontsize=8, ncol=3, loc="upper center")

    common = dict(
        hue="task",
        hue_order=names,
        stat="proportion",
        common_norm=False,
        discrete=True,
        element="step",
        fill=False,
        linewidth=1.6,
    )
    ax = axes[1]
    sns.histplot(data=per_concept, x="mentions", ax=ax, **common)
    ax.set_yscale("log")
    ax.set_xlim(0.5, max_mentions + 0.5)
    ax.set_xticks(np.arange(1, max_mentions + 1, 2 if max_mentions > 10 else 1))
    ax.set_title("Training mentions per concept")
    ax.set_xlabel(f"training mentions, preferred name included (last bin: {max_mentions}+)")
    ax.set_ylabel("fraction of the concepts (log scale)")

    ax = axes[2]
    sns.histplot(data=lengths, x="words", ax=ax, **common)
    ax.set_xlim(0.5, max_words + 0.5)
    ax.set_xticks(np.arange(1, max_words + 1, 2 if max_words > 10 else 1))
    ax.set_title("Mention length")
    ax.set_xlabel(f"words per mention, all splits (last bin: {max_words}+)")
    ax.set_ylabel("fraction of the mentions")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
