"""The linking-task object and :func:`load_task` for the four offline vocabularies.

A linking example is ``(mention, concept_id)``: the mention is a string a text could
contain (entry term, synonym, brand name, inclusion term, or an annotated span of a
PubTator corpus), the concept id names an entry of ``task.concepts``, whose
preferred name is what the linker ranks against. Sources and licences: see
:mod:`kfac_tutorial.data.vocabularies`; split rules: :mod:`kfac_tutorial.data.splits`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import cache as _cache
from .splits import SPLIT_VERSION, SPLITS, build_splits, subsample
from .vocabularies import VOCABULARY_READERS, source_version

__all__ = ["TASK_NAMES", "LinkingTask", "MentionContext", "load_task", "cache_path"]

#: The offline tasks, in the order the book trains them.
TASK_NAMES: tuple[str, ...] = tuple(VOCABULARY_READERS)


@dataclass(frozen=True)
class MentionContext:
    """Where a PubTator mention occurs: document, character offsets, surrounding text."""

    pmid: str
    start: int
    end: int
    left: str
    right: str
    entity_type: str
    text: str  # the annotated span as written (a composite mention's whole span)


@dataclass(frozen=True)
class LinkingTask:
    """A concept inventory with train/dev/test linking examples.

    ``concepts``: concept id -> preferred name (the inventory the linker ranks).
    ``train``/``dev``/``test``: lists of ``(mention, concept_id)``; every id is a key
    of ``concepts``. ``stats``: counts of what the anti-leakage and ambiguity rules
    moved or dropped (see :mod:`kfac_tutorial.data.splits`) and source notes.
    ``contexts``: for PubTator corpora, per split a list parallel to the examples.
    """

    name: str
    description: str
    source: str
    licence: str
    concepts: dict[str, str]
    train: list[tuple[str, str]]
    dev: list[tuple[str, str]]
    test: list[tuple[str, str]]
    stats: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    contexts: dict[str, list[MentionContext]] | None = None

    def split(self, name: str) -> list[tuple[str, str]]:
        """The examples of ``"train"``, ``"dev"`` or ``"test"``."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def splits(self) -> dict[str, list[tuple[str, str]]]:
        return {s: getattr(self, s) for s in SPLITS}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in SPLITS)
        return f"LinkingTask({self.name!r}, concepts={len(self.concepts)}, {sizes})"


def _check_name(name: str) -> None:
    if name not in VOCABULARY_READERS:
        raise ValueError(f"unknown task {name!r}; valid task names: {', '.join(TASK_NAMES)}")


def _cache_key(name: str, **args: Any) -> dict[str, Any]:
    return {
        "task": name,
        "source_version": source_version(name),
        "split_version": SPLIT_VERSION,
        **args,
    }


_MEMO: dict[str, dict[str, Any]] = {}


def cache_path(
    name: str,
    seed: int = 0,
    *,
    dev_fraction: float = 0.15,
    test_fraction: float = 0.15,
    ambiguous: str = "train",
) -> Path:
    """The cache file of a full task split (it may not exist yet)."""
    _check_name(name)
    key = _cache_key(name, seed=seed, dev_fraction=dev_fraction, test_fraction=test_fraction, ambiguous=ambiguous)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return _cache.cache_dir() / "tasks" / f"{name}-{key['source_version']}-{digest}.json"


def _cached_without_source(name: str, missing: str, **args: Any) -> dict[str, Any]:
    """The cached split of ``name`` for ``args`` when its source package is absent.

    A cache folder copied to a machine without the vocabulary packages (a GPU node, a
    container) still serves the splits built where they were installed: the match is on
    every key field except the source version, which the warning names.
    """
    want = {"task": name, "split_version": SPLIT_VERSION, **args}
    folder = _cache.cache_dir() / "tasks"
    found = []
    for path in sorted(folder.glob(f"{name}-*.json")):
        try:
            data = _cache.read_json(path)
        except (OSError, ValueError):
            continue
        key = dict(data.get("key") or {})
        version = key.pop("source_version", None)
        if key == want:
            found.append((path.stat().st_mtime, str(version), path, data))
    if not found:
        raise ModuleNotFoundError(
            f"task {name!r} needs the package {missing!r} (pip install {missing}), or a "
            f"cached split built where it is installed, copied to {folder} "
            f"(none there matches seed/fractions {args})"
        )
    _, version, path, data = max(found, key=lambda f: f[0])
    warnings.warn(
        f"{missing} is not installed: task {name!r} uses the cached split built from {name} {version} ({path.name})", stacklevel=3
    )
    return data


def _built(name: str, *, use_cache: bool, **args: Any) -> dict[str, Any]:
    try:
        key = _cache_key(name, **args)
    except importlib.metadata.PackageNotFoundError as err:
        if not use_cache:
            raise
        return _cached_without_source(name, str(err.name or err), **args)
    text = json.dumps(key, sort_keys=True)
    if text in _MEMO:
        return _MEMO[text]
    path = cache_path(name, **args)
    data = None
    if use_cache and path.exists():
        try:
            data = _cache.read_json(path)
        except (OSError, ValueError):
            data = None  # unreadable or truncated by hand: rebuild
        if data is not None and data.get("key") != key:
            data = None
    if data is None:
        vocab = VOCABULARY_READERS[name]()
        data = build_splits(vocab, **args)
        data["key"] = key
        data["meta"] = {
            "description": vocab.description,
            "source": vocab.source,
            "licence": vocab.licence,
        }
        if use_cache:
            _cache.atomic_write_json(path, data)
    if len(_MEMO) >= 4:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[text] = data
    return data


def load_task(
    name: str,
    seed: int = 0,
    *,
    max_concepts: int | None = None,
    require_test: bool = False,
    max_mentions: int | None = None,
    dev_fraction: float = 0.15,
    test_fraction: float = 0.15,
    ambiguous: str = "train",
    use_cache: bool = True,
) -> LinkingTask:
    """Load one of :data:`TASK_NAMES` as a :class:`LinkingTask`.

    The full split for ``(name, seed, dev_fraction, test_fraction, ambiguous)`` is
    built once and cached as JSON under ``$KFAC_CACHE/tasks`` (default
    ``~/.cache/kfac_tutorial``); the file name carries the source package version
    and a hash of the arguments. ``max_concepts``/``require_test``/``max_mentions``
    then pick a deterministic subset (see :func:`kfac_tutorial.data.splits.subsample`):
    e.g. ``load_task("drugs", max_concepts=300, require_test=True)`` for CI.
    ``stats`` counts refer to the returned (possibly subsampled) concepts.
    """
    _check_name(name)
    data = _built(
        name,
        use_cache=use_cache,
        seed=seed,
        dev_fraction=dev_fraction,
        test_fraction=test_fraction,
        ambiguous=ambiguous,
    )
    part = subsample(
        data,
        task=name,
        seed=seed,
        max_concepts=max_concepts,
        require_test=require_test,
        max_mentions=max_mentions,
    )
    stats = dict(part["stats"])
    for k, v in data["source_notes"].items():
        stats["source_" + k] = v
    meta: Mapping[str, str] = data["meta"]
    return LinkingTask(
        name=name,
        description=meta["description"],
        source=meta["source"],
        licence=meta["licence"],
        concepts=dict(part["concepts"]),
        train=[(m, c) for m, c in part["train"]],
        dev=[(m, c) for m, c in part["dev"]],
        test=[(m, c) for m, c in part["test"]],
        stats=stats,
        seed=seed,
    )
