"""Honest, deterministic train/dev/test splits of a vocabulary by held-out variants.

A linking example is ``(mention, concept_id)``. The split works per concept:

1. The preferred name is always a **training** mention (the linker also sees it
   through ``task.concepts``).
2. A variant whose normalised form (case, accents, punctuation, plural, word order
   and ``NOS`` undone: :func:`~kfac_tutorial.data.normalize.normalize_mention`)
   also belongs to *another* concept, as a name or a variant, is **ambiguous**.
   Ambiguous variants never enter dev/test; by default (``ambiguous="train"``) they
   stay in train for every concept that lists them, with ``ambiguous="drop"`` they
   are removed. Counted as ``ambiguous_variants`` (mentions) and
   ``ambiguous_strings`` (distinct normalised strings).
3. A variant that is a *trivial rewrite* of the preferred name (same normalised
   form) is a training mention. Counted as ``rewrite_of_name_to_train``.
4. The remaining variants are grouped by normalised form (a group holds the trivial
   rewrites of one another, e.g. ``"acute abdomen"``/``"acute abdomens"``). Each group
   goes to train, dev or test according to a hash of ``(seed, task, concept, key)``
   (``test_fraction``, ``dev_fraction``, rest train). A concept with at least two
   groups keeps at least one in train. A held-out group contributes one member (the
   one with the smallest hash); its other members are dropped rather than put in
   train, where they would leak (``held_out_rewrites_dropped``).

Consequence, checked by the tests: no dev or test mention has the normalised form of
*any* training mention or preferred name, of its own concept or of another one, and
dev and test share no normalised form.

Hashes are :mod:`hashlib` BLAKE2b digests of UTF-8 text, so splits do not depend on
``PYTHONHASHSEED``, dict order or platform. Subsampling (``max_concepts``,
``max_mentions``) happens after the split, so a subsampled task is a subset of the
full one, and a smaller ``max_concepts`` gives a subset of a larger one.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping

from .normalize import normalize_mention
from .vocabularies import Vocabulary

__all__ = ["SPLIT_VERSION", "SPLITS", "unit_hash", "build_splits", "subsample"]

#: Bump when the split algorithm changes: it is part of every cache key.
SPLIT_VERSION = 1
SPLITS = ("train", "dev", "test")
#: Per-concept counters kept so that a subsampled task reports its own counts.
STAT_KEYS = (
    "variants",
    "empty_variants_dropped",
    "rewrite_of_name_to_train",
    "held_out_rewrites_dropped",
    "ambiguous_variants",
)


def unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (BLAKE2b of their text)."""
    text = "\x1f".join(str(p) for p in parts)
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def build_splits(
    vocab: Vocabulary,
    *,
    seed: int = 0,
    dev_fraction: float = 0.15,
    test_fraction: float = 0.15,
    ambiguous: str = "train",
) -> dict[str, Any]:
    """Split a vocabulary; returns a JSON-able dict (see the module docstring)."""
    if ambiguous not in ("train", "drop"):
        raise ValueError(f"ambiguous must be 'train' or 'drop', got {ambiguous!r}")
    if not (0 <= dev_fraction and 0 <= test_fraction and dev_fraction + test_fraction < 1):
        raise ValueError("need 0 <= dev_fraction, test_fraction and their sum < 1")

    name_key = {cid: normalize_mention(name) for cid, name in vocab.concepts.items()}
    variant_keys = {cid: [(v, normalize_mention(v)) for v in vocab.variants.get(cid, ())] for cid in vocab.concepts}
    owners: dict[str, set[str]] = defaultdict(set)
    for cid, key in name_key.items():
        owners[key].add(cid)
    for cid, pairs in variant_keys.items():
        for _, key in pairs:
            if key:
                owners[key].add(cid)

    out: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    concept_stats: dict[str, list[int]] = {}
    ambiguous_keys: dict[str, list[str]] = {}
    for cid in sorted(vocab.concepts):
        stats = Counter()
        out["train"].append([vocab.concepts[cid], cid])
        groups: dict[str, list[str]] = defaultdict(list)
        amb: set[str] = set()
        for v, key in variant_keys[cid]:
            stats["variants"] += 1
            if not key:
                stats["empty_variants_dropped"] += 1
            elif len(owners[key]) > 1:
                stats["ambiguous_variants"] += 1
                amb.add(key)
                if ambiguous == "train":
                    out["train"].append([v, cid])
            elif key == name_key[cid]:
                stats["rewrite_of_name_to_train"] += 1
                out["train"].append([v, cid])
            else:
                groups[key].append(v)
        u = {key: unit_hash(seed, vocab.name, cid, key) for key in groups}
        where = {
            key: "test" if h < test_fraction else "dev" if h < test_fraction + dev_fraction else "train" for key, h in u.items()
        }
        if len(groups) >= 2 and "train" not in where.values():
            where[max(u, key=u.__getitem__)] = "train"
        for key in sorted(groups):
            members = groups[key]
            if where[key] == "train":
                out["train"].extend([v, cid] for v in members)
            else:
                keep = min(members, key=lambda v: (unit_hash(seed, "member", v), v))
                out[where[key]].append([keep, cid])
                stats["held_out_rewrites_dropped"] += len(members) - 1
        if any(stats.values()):
            concept_stats[cid] = [stats[k] for k in STAT_KEYS]
        if amb:
            ambiguous_keys[cid] = sorted(amb)
    for s in SPLITS:
        out[s].sort(key=lambda mc: (mc[1], mc[0]))
    return {
        "concepts": dict(sorted(vocab.concepts.items())),
        **out,
        "concept_stats": concept_stats,
        "ambiguous_keys": ambiguous_keys,
        "source_notes": dict(vocab.notes),
    }


def _stats_for(data: Mapping[str, Any], concepts: Iterable[str]) -> dict[str, int]:
    totals = Counter()
    amb: set[str] = set()
    cstats, akeys = data["concept_stats"], data["ambiguous_keys"]
    for cid in concepts:
        if cid in cstats:
            totals.update(dict(zip(STAT_KEYS, cstats[cid])))
        amb.update(akeys.get(cid, ()))
    stats = {k: int(totals[k]) for k in STAT_KEYS}
    stats["ambiguous_strings"] = len(amb)
    return stats


def subsample(
    data: Mapping[str, Any],
    *,
    task: str,
    seed: int = 0,
    max_concepts: int | None = None,
    require_test: bool = False,
    max_mentions: int | None = None,
) -> dict[str, Any]:
    """Restrict built splits to a hash-chosen subset of concepts and/or mentions.

    ``max_concepts``: keep the ``max_concepts`` concepts with the smallest
    ``unit_hash(seed, task, "concept", id)`` (among those with a test mention when
    ``require_test``). ``max_mentions``: keep at most that many mentions *per split*,
    again the smallest hashes. Both are nested: with the other argument fixed, a
    smaller limit keeps a subset of what a larger one keeps.
    """
    concepts: Mapping[str, str] = data["concepts"]
    chosen = list(concepts)
    if require_test:
        with_test = {cid for _, cid in data["test"]}
        chosen = [cid for cid in chosen if cid in with_test]
    if max_concepts is not None:
        if max_concepts < 1:
            raise ValueError(f"max_concepts must be >= 1, got {max_concepts}")
        chosen = sorted(chosen, key=lambda c: (unit_hash(seed, task, "concept", c), c))
        chosen = chosen[:max_concepts]
    keep = set(chosen)
    out: dict[str, Any] = {"concepts": {cid: name for cid, name in concepts.items() if cid in keep}}
    for s in SPLITS:
        pairs = [(m, c) for m, c in data[s] if c in keep]
        if max_mentions is not None and len(pairs) > max_mentions:
            ranked = sorted(pairs, key=lambda mc: (unit_hash(seed, task, s, *mc), mc))
            pairs = sorted(ranked[:max_mentions], key=lambda mc: (mc[1], mc[0]))
        out[s] = pairs
    out["stats"] = _stats_for(data, keep)
    return out
