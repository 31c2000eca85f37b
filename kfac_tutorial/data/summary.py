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
