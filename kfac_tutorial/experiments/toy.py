"""Tiny synthetic linking tasks for tests and the ``test`` profile (no data files).

A toy task has ``n_concepts`` concepts whose preferred names are made-up words built
from a syllable set of its own (``toy-a`` and ``toy-b`` use different syllables, so
that learning one disturbs the other), and mentions that are noisy rewrites of the
name (dropped, doubled or swapped letters, abbreviations). Deterministic in
``(name, seed)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from zlib import crc32

__all__ = ["TOY_TASKS", "Task", "toy_task"]

_SYLLABLES = {
    "a": ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pu", "ga", "do"],
    "b": ["bre", "chi", "fla", "gro", "kri", "plu", "sto", "thy", "vra", "zho", "qua", "dri"],
    "c": ["ox", "ul", "ep", "ar", "im", "os", "en", "ix", "ab", "ud", "ec", "iv"],
}

TOY_TASKS = tuple(f"toy-{k}" for k in _SYLLABLES)


@dataclass
class Task:
    """A linking task: ``concepts`` (id → preferred name) and (mention, id) splits."""

    name: str
    concepts: dict
    train: list = field(default_factory=list)
    dev: list = field(default_factory=list)
    test: list = field(default_factory=list)


def _noisy(word: str, rng: random.Random) -> str:
    chars = list(word)
    op = rng.randrange(4)
    i = rng.randrange(len(chars))
    if op == 0 and len(chars) > 3:
        del chars[i]
    elif op == 1:
        chars.insert(i, chars[i])
    elif op == 2 and i + 1 < len(chars):
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    else:
        return " ".join(w[:4] for w in word.split())
    return "".join(chars)


def toy_task(name: str = "toy-a", n_concepts: int = 20, seed: int = 0, train_per_concept: int = 3) -> Task:
    """A synthetic task; ``name`` ends in the syllable set (``toy-a``, ``toy-b``, ``toy-c``)."""
    flavour = name.rsplit("-", 1)[-1]
    syllables = _SYLLABLES.get(flavour, _SYLLABLES["a"])
    rng = random.Random(crc32(f"{name}:{seed}".encode()))
    concepts: dict = {}
    while len(concepts) < n_concepts:
        words = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))) for _ in range(rng.randint(1, 2))]
        label = " ".join(words)
        if label not in concepts.values():
            concepts[f"{name.upper()}:{len(concepts):04d}"] = label
    train, dev, test = [], [], []
    for cid, label in concepts.items():
        variants: list[str] = []
        while len(variants) < train_per_concept + 2:
            v = _noisy(label, rng)
            if v != label and v not in variants:
                variants.append(v)
        train += [(v, cid) for v in variants[:train_per_concept]]
        dev.append((variants[-2], cid))
        test.append((variants[-1], cid))
    return Task(name, concepts, train, dev, test)
