"""The tasks of an experiment: loaded by name and cut to a profile (concepts, mentions per
concept, a seeded sample of dev and test examples)."""

from __future__ import annotations

import random
from typing import Sequence

from .profiles import Profile
from .toy import Task, toy_task

__all__ = ["load_tasks", "prepare_task"]


def load_tasks(names: Sequence[str], profile: Profile, seed: int = 0) -> list[Task]:
    """Load tasks by name: ``toy-a``, ``toy-b``, ``toy-c`` (synthetic) or a vocabulary of
    :func:`kfac_tutorial.data.load_task` (diseases, drugs, phenotypes, icd10cm)."""
    tasks = []
    for name in names:
        if name.startswith("toy"):
            n = profile.concepts_for(name) or 20
            task = toy_task(name, n_concepts=n, seed=seed)
        else:
            from ..data import load_task

            fractions = {}
            if profile.split_fractions is not None:
                fractions = dict(zip(("dev_fraction", "test_fraction"), profile.split_fractions))
            task = load_task(name, seed=seed, max_concepts=profile.concepts_for(name), require_test=True, **fractions)
        tasks.append(task)
    return tasks


def _stable_shuffle(items: list, seed: int, salt: str) -> list:
    rng = random.Random(f"{seed}:{salt}")
    items = list(items)
    rng.shuffle(items)
    return items


def prepare_task(task, profile: Profile, seed: int = 0) -> Task:
    """Cut a task to the profile: at most ``profile.concepts_for(name)`` concepts (the first ones),
    ``max_train_per_concept`` mentions each (plus the preferred name when
    ``train_on_names``), ``max_eval`` dev and test examples (a seeded sample)."""
    name = getattr(task, "name", "task")
    n_concepts = profile.concepts_for(name)
    ids = list(task.concepts)[:n_concepts] if n_concepts else list(task.concepts)
    keep = set(ids)
    concepts = {c: task.concepts[c] for c in ids}
    train_ex, per = [], {}
    for mention, cid in task.train:
        if cid in keep and (profile.max_train_per_concept is None or per.get(cid, 0) < profile.max_train_per_concept):
            per[cid] = per.get(cid, 0) + 1
            train_ex.append((mention, cid))
    if profile.train_on_names:
        train_ex += [(concepts[c], c) for c in ids]

    def cut(examples, split):
        kept = [(m, c) for m, c in examples if c in keep]
        if profile.max_eval is not None and len(kept) > profile.max_eval:
            kept = _stable_shuffle(kept, seed, f"{name}:{split}")[: profile.max_eval]
        return kept

    return Task(name, concepts, train_ex, cut(task.dev, "dev"), cut(task.test, "test"))
