"""Tests of the PubTator reader on small fixture files written here (no downloads)."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import pytest

from kfac_tutorial.data import (
    PUBTATOR_CORPORA,
    PubTatorFormatError,
    load_pubtator,
    load_pubtator_corpus,
    read_pubtator,
)


def document(pmid: str, title: str, abstract: str, annotations) -> str:
    """A PubTator block; each annotation is (mention, type, ids[, parts]) and its
    offsets are those of its next occurrence in title + " " + abstract."""
    text = title + " " + abstract
    lines = [f"{pmid}|t|{title}", f"{pmid}|a|{abstract}"]
    cursor = 0
    for mention, etype, ids, *parts in annotations:
        start = text.index(mention, cursor)
        cursor = start + len(mention)
        lines.append("\t".join([pmid, str(start), str(cursor), mention, etype, ids, *parts]))
    return "\n".join(lines) + "\n"


# BC5CDR-like: composite with part texts, relation line, -1, chemical + disease.
DOC_A = (
    document(
        "1001",
        "Breast and ovarian cancer after tamoxifen.",
        "Melanoma and breast and ovarian cancer were seen; the melanoma was excised. Toxicity was unlinked.",
        [
            ("Breast and ovarian cancer", "Disease", "D001943|D010051", "Breast cancer|ovarian cancer"),
            ("tamoxifen", "Chemical", "D013629"),
            ("Melanoma", "Disease", "MESH:D008545"),
            ("breast and ovarian cancer", "Disease", "D001943|D010051"),
            ("melanoma", "Disease", "D008545"),
            ("Toxicity", "Disease", "-1"),
        ],
    )
    + "1001\tCID\tD013629\tD001943\n"
)
# NCBI-disease-like: OMIM ids, "+" composite without parts.
DOC_B = document(
    "1002",
    "Myotonic dystrophy (DM) and colorectal neoplasms.",
    "DM patients with colorectal neoplasms. Copper toxicosis was seen.",
    [
        ("Myotonic dystrophy", "SpecificDisease", "D009223"),
        ("DM", "SpecificDisease", "D009223"),
        ("colorectal neoplasms", "DiseaseClass", "D003110+D009369"),
        ("DM", "Modifier", "D009223"),
        ("Copper toxicosis", "SpecificDisease", "OMIM:215600"),
    ],
)
# MedMentions-like: UMLS CUIs, semantic type ids.
DOC_C = document(
    "1003",
    "Melanoma risk in DM.",
    "We studied melanoma and DM in a cohort.",
    [
        ("Melanoma", "T191", "UMLS:C0025202"),
        ("DM", "T047", "UMLS:C0011849"),
        ("melanoma", "T191", "UMLS:C0025202"),
        ("DM", "T047", "UMLS:C0011849"),
        ("cohort", "T098", "UMLS:C0599755"),
    ],
)


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


@pytest.fixture
def split_files(tmp_path):
    return {
        "train": write(tmp_path / "train.txt", DOC_A + "\n" + DOC_C),
        "dev": write(tmp_path / "dev.txt", DOC_B),
        "test": write(tmp_path / "test.txt", DOC_C.replace("1003", "1004")),
    }


def test_composite_mention_with_part_texts_becomes_one_example_per_part(tmp_path):
    task = load_pubtator(write(tmp_path / "a.txt", DOC_A), dev_fraction=0, test_fraction=0)
    assert ("Breast cancer", "D001943") in task.train
    assert ("ovarian cancer", "D010051") in task.train
    assert task.stats["composite_split"] == 1
    assert not any("and" in m for m, _ in task.train)  # the unsplit one was skipped
    assert task.stats["multi_id_skipped"] == 1


def test_multiple_ids_follow_the_multi_id_policy(tmp_path):
    path = write(tmp_path / "b.txt", DOC_B)
    skip = load_pubtator(path, dev_fraction=0, test_fraction=0)
    first = load_pubtator(path, dev_fraction=0, test_fraction=0, multi_id="first")
    both = load_pubtator(path, dev_fraction=0, test_fraction=0, multi_id="all")
    pair = "colorectal neoplasms"
    assert [c for m, c in skip.train if m == pair] == []
    assert skip.stats["multi_id_skipped"] == 1
    assert [c for m, c in first.train if m == pair] == ["D003110"]
    assert [c for m, c in both.train if m == pair] == ["D003110", "D009369"]
    with pytest.raises(ValueError, match="multi_id"):
        load_pubtator(path, multi_id="most")


def test_minus_one_ids_are_skipped_and_counted(tmp_path):
    task = load_pubtator(write(tmp_path / "a.txt", DOC_A), dev_fraction=0, test_fraction=0)
    assert "Toxicity" not in {m for m, _ in task.train}
    assert "-1" not in task.concepts
    assert task.stats["minus_one_ids_skipped"] == 1


def test_id_prefixes_mesh_and_umls_are_removed_but_omim_is_kept(split_files):
    task = load_pubtator(split_files)
    assert ("Melanoma", "D008545") in task.train
    assert ("Melanoma", "C0025202") in task.train
    assert not any(c.startswith(("MESH:", "UMLS:")) for c in task.concepts)


def test_relation_lines_are_skipped_and_counted(tmp_path):
    docs = read_pubtator(write(tmp_path / "a.txt", DOC_A))
    task = load_pubtator(tmp_path / "a.txt", dev_fraction=0, test_fraction=0)
    assert len(docs) == 1 and len(docs[0].annotations) == 6
    assert task.stats["relation_lines_skipped"] == 1


NAMES = {"D009223": "Myotonic Dystrophy", "OMIM:215600": "Copper toxicosis"}


def test_separate_split_files_give_a_document_level_split(split_files):
    task = load_pubtator(split_files, names=NAMES)
    assert {c.pmid for c in task.contexts["train"]} == {"1001", "1003"}
    assert {c.pmid for c in task.contexts["dev"]} == {"1002"}
    assert {c.pmid for c in task.contexts["test"]} == {"1004"}
    assert (task.stats["documents_train"], task.stats["documents_dev"], task.stats["documents_test"]) == (2, 1, 1)


def test_a_pmid_in_two_split_files_is_an_error(tmp_path):
    files = {"train": write(tmp_path / "t.txt", DOC_A), "test": write(tmp_path / "s.txt", DOC_A)}
    with pytest.raises(ValueError, match="1001"):
        load_pubtator(files)


def test_pmid_list_files_split_a_single_corpus(tmp_path):
    corpus = write(tmp_path / "corpus_pubtator.txt", DOC_A + "\n" + DOC_B + "\n" + DOC_C)
    pmids = {
        "train": write(tmp_path / "corpus_pubtator_pmids_trng.txt", "1001\n1003\n"),
        "dev": write(tmp_path / "corpus_pubtator_pmids_dev.txt", "\n"),
        "test": write(tmp_path / "corpus_pubtator_pmids_test.txt", "1002\r\n"),
    }
    task = load_pubtator(corpus, pmids=pmids, names=NAMES)
    assert {c.pmid for c in task.contexts["train"]} == {"1001", "1003"}
    assert {c.pmid for c in task.contexts["test"]} == {"1002"}
    assert task.dev == []
    # a document listed nowhere is left out and counted
    partial = load_pubtator(corpus, pmids={"train": ["1001"], "test": ["1002"]})
    assert partial.stats["documents_without_split"] == 1


def test_blank_lines_and_missing_final_newline_are_tolerated(tmp_path):
    messy = "\n\n" + DOC_A + "\n\n\n" + DOC_B + "\n" + DOC_C.rstrip("\n")
    docs = read_pubtator(write(tmp_path / "messy.txt", messy))
    assert [d.pmid for d in docs] == ["1001", "1002", "1003"]
    assert [len(d.annotations) for d in docs] == [6, 5, 5]


def test_crlf_line_endings_give_the_same_task(tmp_path):
    text = DOC_A + "\n" + DOC_B + "\n" + DOC_C
    unix = load_pubtator(write(tmp_path / "lf.txt", text), seed=3)
    windows = load_pubtator(write(tmp_path / "crlf.txt", text, newline="\r\n"), seed=3)
    assert windows.splits == unix.splits and windows.concepts == unix.concepts
    assert windows.stats.get("offset_mismatches", 0) == 0
    assert windows.contexts == unix.contexts


def test_gzip_and_zip_member_files_are_read_transparently(tmp_path):
    text = DOC_A + "\n" + DOC_B
    plain = load_pubtator(write(tmp_path / "c.txt", text), seed=1)
    gz = tmp_path / "c.txt.gz"
    gz.write_bytes(gzip.compress(text.encode("utf-8")))
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("Corpus/c.txt", text)
        z.writestr("Corpus/readme.md", "not this one")
    from_gz = load_pubtator(gz, seed=1)
    from_zip = load_pubtator(f"{archive}#Corpus/c.txt", seed=1)
    assert from_gz.splits == plain.splits == from_zip.splits
    assert from_gz.concepts == plain.concepts == from_zip.concepts


def test_contexts_are_parallel_to_examples_and_point_at_the_span(split_files):
    task = load_pubtator(split_files, context_chars=12)
    for split in ("train", "dev", "test"):
        assert len(task.contexts[split]) == len(task.split(split))
    docs = {d.pmid: d for d in read_pubtator(split_files["train"])}
    for (mention, _), ctx in zip(task.train, task.contexts["train"]):
        text = docs[ctx.pmid].text
        assert text[ctx.start : ctx.end] == ctx.text
        # a composite's part ("Breast cancer") takes its words from the whole span
        assert set(mention.lower().split()) <= set(ctx.text.lower().split())
        assert ctx.left == text[max(0, ctx.start - 12) : ctx.start]
        assert ctx.right == text[ctx.end : ctx.end + 12]


def test_offset_mismatches_are_counted(tmp_path):
    bad = DOC_C.replace("1003\t0\t8\tMelanoma", "1003\t1\t9\tMelanoma")
    task = load_pubtator(write(tmp_path / "bad.txt", bad), dev_fraction=0, test_fraction=0)
    assert task.stats["offset_mismatches"] == 1


def test_entity_types_filter_keeps_only_those_types(tmp_path):
    task = load_pubtator(write(tmp_path / "a.txt", DOC_A), dev_fraction=0, test_fraction=0, entity_types=["Chemical"])
    assert task.train == [("tamoxifen", "D013629")]
    assert task.stats["other_type_skipped"] == 5


def test_mesh_names_come_from_the_vocabulary_only_when_train_mentions_confirm_them(
    tmp_path,
):
    confirmed = load_pubtator(write(tmp_path / "a.txt", DOC_A), dev_fraction=0, test_fraction=0)
    assert confirmed.concepts["D008545"] == "Melanoma"  # MeSH heading, not a mention
    # the same id with mentions that do not match the vocabulary's entry: the
    # vocabulary name is rejected and the most frequent mention names the concept
    odd = document(
        "2001",
        "Nevus X in DM.",
        "A nevus X and a nevus X again.",
        [("Nevus X", "Disease", "D008545"), ("nevus X", "Disease", "D008545"), ("nevus X", "Disease", "D008545")],
    )
    rejected = load_pubtator(write(tmp_path / "odd.txt", odd), dev_fraction=0, test_fraction=0)
    assert rejected.concepts["D008545"] == "nevus X"  # 2 of 3 mentions
    assert rejected.stats["vocabulary_names_rejected"] >= 1


def test_unnamed_concepts_seen_only_in_test_are_dropped_unless_a_names_file_names_them(split_files, tmp_path):
    task = load_pubtator(split_files)
    assert "OMIM:215600" not in task.concepts  # only in dev, no name, not in train
    assert task.stats["unnamed_concept_mentions_dropped"] >= 1
    names = write(tmp_path / "names.tsv", "# CUI\tname\nOMIM:215600\tCopper toxicosis, Bedlington\n")
    named = load_pubtator(split_files, names=names)
    assert named.concepts["OMIM:215600"] == "Copper toxicosis, Bedlington"
    assert ("Copper toxicosis", "OMIM:215600") in named.dev


def test_most_frequent_train_mention_names_a_concept_without_a_name(split_files):
    task = load_pubtator(split_files, use_vocabulary_names=False)
    assert task.concepts["C0025202"] == "Melanoma"  # 1:1 tie with "melanoma": sorted
    assert task.concepts["C0599755"] == "cohort"


def test_seen_mentions_are_counted_and_can_be_excluded(split_files):
    kept = load_pubtator(split_files)
    assert kept.stats["test_mentions_seen_in_train"] == len(kept.test) > 0
    unseen = load_pubtator(split_files, exclude_seen=True)
    assert unseen.test == []


def test_ambiguous_mention_strings_are_counted(tmp_path):
    # "DM" is myotonic dystrophy in one document and diabetes in another
    task = load_pubtator(write(tmp_path / "x.txt", DOC_B + "\n" + DOC_C), dev_fraction=0, test_fraction=0)
    assert task.stats["ambiguous_strings"] >= 1
    assert task.stats["ambiguous_mentions"] >= 4


@pytest.mark.parametrize(
    "text, line_no, expected",
    [
        (DOC_A + "this line is not pubtator\n", 10, "blank line"),
        (DOC_A.replace("1001\t32\t", "1001\tabc\t"), 4, "integer start and end"),
        ("1001\t0\t4\tBrca\tDisease\tD1\n", 1, "title line"),
        (DOC_B + "\n1003|a|abstract without title\n", 9, "before the abstract"),
        (DOC_A + "9999\t0\t4\tBrca\tDisease\tD1\n", 10, "current document"),
        (DOC_A.replace("1001\t32\t41", "1001\t41\t32"), 4, "start <= end"),
    ],
)
def test_malformed_file_error_names_the_file_line_and_expectation(tmp_path, text, line_no, expected):
    path = write(tmp_path / "broken_corpus.txt", text)
    with pytest.raises(PubTatorFormatError) as err:
        load_pubtator(path)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert "broken_corpus.txt" in message
    assert f"line {line_no}:" in message
    assert expected in message
    assert err.value.line_no == line_no


def test_malformed_pmid_and_names_files_are_reported_with_their_line(tmp_path):
    corpus = write(tmp_path / "c.txt", DOC_A)
    pmids = write(tmp_path / "pmids.txt", "1001\nnot a pmid\n")
    with pytest.raises(PubTatorFormatError, match=r"pmids\.txt, line 2:"):
        load_pubtator(corpus, pmids={"train": pmids})
    names = write(tmp_path / "names.tsv", "D008545 Melanoma without a tab\n")
    with pytest.raises(PubTatorFormatError, match=r"names\.tsv, line 1:"):
        load_pubtator(corpus, names=names)


def test_registry_knows_the_three_corpora_by_url_and_rejects_unknown_names():
    assert set(PUBTATOR_CORPORA) == {"ncbi_disease", "bc5cdr", "medmentions_st21pv"}
    for entry in PUBTATOR_CORPORA.values():
        urls = list(entry.get("files", {}).values()) + [entry.get("corpus", "https://")]
        urls += list(entry.get("pmids", {}).values())
        assert all(u.startswith("https://") for u in urls)
        assert set(entry.get("files", entry.get("pmids"))) == {"train", "dev", "test"}
    with pytest.raises(ValueError, match="ncbi_disease"):
        load_pubtator_corpus("i2b2")
