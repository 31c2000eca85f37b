"""PubTator corpora (NCBI-disease, BC5CDR, MedMentions ST21pv) as linking tasks: the
corpus policy (splits, composite mentions, concept names) over :mod:`.format`.

Format (one document per block, blocks separated by blank lines)::

    PMID|t|title
    PMID|a|abstract
    PMID<TAB>start<TAB>end<TAB>mention<TAB>type<TAB>ids[<TAB>part texts]
    PMID<TAB>CID<TAB>id1<TAB>id2            (BC5CDR relations: skipped, counted)

Offsets index ``title + " " + abstract``. A *mention* here is an annotated span of
a PubMed title/abstract, linked to a MeSH/OMIM id (NCBI-disease, BC5CDR) or a UMLS
CUI (MedMentions). Ids: ``MESH:``/``UMLS:`` prefixes are removed (``OMIM:`` is kept);
several ids are separated by ``|`` or ``+``; ``-1`` (no concept) is skipped and
counted. A composite mention (``"breast and ovarian cancer"``, ids
``D001943|D010051``) becomes one example per part when the line lists the part texts
(BC5CDR's 7th column), else it follows ``multi_id`` (default: skipped, counted).

Splits are by document: one file per split (NCBI-disease, BC5CDR), a PMID list per
split (MedMentions' ``corpus_pubtator_pmids_trng.txt``), or, for a single file with
neither, a hash of the PMID. Within a corpus a mention string naturally recurs across
splits (``"DM"`` in train and test): that is the corpus's own difficulty, so it is
kept and *counted* (``test_mentions_seen_in_train``); ``exclude_seen=True`` drops
such dev/test examples instead (the "unseen mentions" evaluation). Mention strings
linked to several concepts are kept (the context disambiguates) and counted.

Concept names: a names file/mapping (``CUI<TAB>name``, needed for MedMentions since
UMLS names need a UMLS licence) wins; else, for MeSH ids, the name the offline
disease/drug vocabularies give, *only if* a training mention of the concept confirms
it (those packages' MeSH ids are unreliable, see
:mod:`kfac_tutorial.data.vocabularies`); else the most frequent training mention.
Concepts with neither a name nor a training mention cannot be named without reading
the test set: their dev/test examples are dropped and counted
(``unnamed_concept_mentions_dropped``), so scores are over nameable concepts.

Downloads happen only for ``http(s)`` sources (cached under ``$KFAC_CACHE``); ``.gz``
files are read transparently, ``archive.zip#member`` reads a member of a zip file.
Licences: NCBI-disease is freely available from NCBI (cite Doğan et al. 2014);
BC5CDR is free for research (cite Li et al. 2016); MedMentions is CC0 (cite Mohan &
Li 2019). The corpora are not redistributed here.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..normalize import normalize_mention
from ..splits import SPLITS, unit_hash
from ..task import LinkingTask, MentionContext

from .format import PathOrURL, PubTatorDocument, PubTatorFormatError, _normalise_id, _open_text, read_pubtator

__all__ = ["PUBTATOR_CORPORA", "load_pubtator", "load_pubtator_corpus"]


_NCBI = "https://www.ncbi.nlm.nih.gov/CBBresearch/Dogan/DISEASE/"
_CDR = "https://github.com/JHnlp/BioCreative-V-CDR-Corpus/raw/master/CDR_Data.zip"
_CDR_DIR = "CDR_Data/CDR.Corpus.v010516/"
_MM = "https://github.com/chanzuckerberg/MedMentions/raw/master/"

#: Known corpora: ``files`` (one PubTator file per split) or ``corpus`` + ``pmids``.
PUBTATOR_CORPORA: dict[str, dict[str, Any]] = {
    "ncbi_disease": {
        "files": {
            "train": _NCBI + "NCBItrainset_corpus.zip#NCBItrainset_corpus.txt",
            "dev": _NCBI + "NCBIdevelopset_corpus.zip#NCBIdevelopset_corpus.txt",
            "test": _NCBI + "NCBItestset_corpus.zip#NCBItestset_corpus.txt",
        },
        "description": "NCBI-disease: 793 PubMed abstracts, disease mentions linked "
        "to MeSH and OMIM (Dogan, Leaman and Lu 2014).",
        "licence": "freely available from NCBI; cite Dogan et al., J Biomed Inform 47:1-10 (2014)",
    },
    "bc5cdr": {
        "files": {
            "train": _CDR + "#" + _CDR_DIR + "CDR_TrainingSet.PubTator.txt",
            "dev": _CDR + "#" + _CDR_DIR + "CDR_DevelopmentSet.PubTator.txt",
            "test": _CDR + "#" + _CDR_DIR + "CDR_TestSet.PubTator.txt",
        },
        "description": "BC5CDR: 1,500 PubMed abstracts, chemical and disease mentions linked to MeSH (Li et al. 2016).",
        "licence": "free for research use; cite Li et al., Database baw068 (2016)",
    },
    "medmentions_st21pv": {
        "corpus": _MM + "st21pv/data/corpus_pubtator.txt.gz",
        "pmids": {
            "train": _MM + "full/data/corpus_pubtator_pmids_trng.txt",
            "dev": _MM + "full/data/corpus_pubtator_pmids_dev.txt",
            "test": _MM + "full/data/corpus_pubtator_pmids_test.txt",
        },
        "description": "MedMentions ST21pv: 4,392 PubMed abstracts, mentions of 21 "
        "semantic types linked to UMLS 2017AA CUIs (Mohan and Li 2019).",
        "licence": "CC0 1.0; cite Mohan and Li, AKBC 2019",
    },
}


def _read_pmids(source: PathOrURL | Iterable[str]) -> set[str]:
    if isinstance(source, (str, os.PathLike)):
        handle, display = _open_text(source)
        out = set()
        with handle:
            for line_no, line in enumerate(handle, start=1):
                line = line.strip()
                if not line:
                    continue
                if not re.fullmatch(r"[\w.-]+", line):
                    raise PubTatorFormatError(display, line_no, "one PMID per line", line)
                out.add(line)
        return out
    return {str(p).strip() for p in source}


def _read_names(names: PathOrURL | Mapping[str, str]) -> dict[str, str]:
    if isinstance(names, Mapping):
        return {_normalise_id(str(k)): str(v) for k, v in names.items()}
    handle, display = _open_text(names)
    out: dict[str, str] = {}
    with handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
                raise PubTatorFormatError(display, line_no, "'concept_id<TAB>name'", line)
            out.setdefault(_normalise_id(fields[0]), fields[1].strip())
    return out


# --------------------------------------------------------------------------- task
@dataclass
class _Example:
    mention: str
    cid: str
    context: MentionContext


def _examples(
    doc: PubTatorDocument,
    *,
    entity_types: set[str] | None,
    multi_id: str,
    context_chars: int,
    counts: Counter,
) -> Iterator[_Example]:
    text = doc.text
    for a in doc.annotations:
        if entity_types is not None and not (set(a.entity_type.split(",")) & entity_types):
            counts["other_type_skipped"] += 1
            continue
        counts["annotations"] += 1
        ctx = MentionContext(
            pmid=doc.pmid,
            start=a.start,
            end=a.end,
            left=text[max(0, a.start - context_chars) : a.start],
            right=text[a.end : a.end + context_chars],
            entity_type=a.entity_type,
            text=a.text,
        )
        valid = [i for i in a.ids if i and i != "-1"]
        if not a.ids:
            counts["no_id_skipped"] += 1
            continue
        if len(valid) < len(a.ids):
            counts["minus_one_ids_skipped"] += len(a.ids) - len(valid)
        if not valid:
            continue
        if len(a.ids) == 1:
            yield _Example(a.text, valid[0], ctx)
        elif a.parts and len(a.parts) == len(a.ids):
            counts["composite_split"] += 1
            for part, cid in zip(a.parts, a.ids):
                if cid and cid != "-1" and part:
                    yield _Example(part, cid, ctx)
        elif multi_id == "first":
            counts["multi_id_first_kept"] += 1
            yield _Example(a.text, valid[0], ctx)
        elif multi_id == "all":
            counts["multi_id_all_kept"] += 1
            for cid in valid:
                yield _Example(a.text, cid, ctx)
        else:
            counts["multi_id_skipped"] += 1


def _doc_splits(
    source: PathOrURL | Mapping[str, PathOrURL],
    pmids: Mapping[str, PathOrURL | Iterable[str]] | None,
    seed: int,
    dev_fraction: float,
    test_fraction: float,
    counts: Counter,
) -> dict[str, list[PubTatorDocument]]:
    out: dict[str, list[PubTatorDocument]] = {s: [] for s in SPLITS}
    if isinstance(source, Mapping):
        unknown = set(source) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; use {SPLITS}")
        owner: dict[str, str] = {}
        for split, path in source.items():
            for doc in read_pubtator(path, counts=counts):
                if owner.setdefault(doc.pmid, split) != split:
                    raise ValueError(
                        f"PMID {doc.pmid} is in the {owner[doc.pmid]} and the {split} files: the document-level split would leak"
                    )
                out[split].append(doc)
        return out
    docs = read_pubtator(source, counts=counts)
    if pmids is not None:
        lists = {s: _read_pmids(p) for s, p in pmids.items()}
        unknown = set(lists) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; use {SPLITS}")
        for a in lists:
            for b in lists:
                if a < b and lists[a] & lists[b]:
                    raise ValueError(f"PMID lists of {a} and {b} overlap")
        for doc in docs:
            split = next((s for s, ids in lists.items() if doc.pmid in ids), None)
            if split is None:
                counts["documents_without_split"] += 1
            else:
                out[split].append(doc)
        return out
    for doc in docs:
        u = unit_hash(seed, "pubtator-doc", doc.pmid)
        split = "test" if u < test_fraction else ("dev" if u < test_fraction + dev_fraction else "train")
        out[split].append(doc)
    return out


def _name_concepts(
    examples: Mapping[str, list[_Example]],
    names: Mapping[str, str],
    use_vocabulary_names: bool,
    counts: Counter,
) -> dict[str, str]:
    train_mentions: dict[str, Counter] = defaultdict(Counter)
    for ex in examples["train"]:
        train_mentions[ex.cid][ex.mention] += 1
    all_ids = {ex.cid for s in SPLITS for ex in examples[s]}
    vocab: Mapping[str, tuple[str, ...]] = {}
    if use_vocabulary_names and any(re.fullmatch(r"[CD]\d{6,9}", c) for c in all_ids):
        from ..vocabularies import mesh_names

        vocab = mesh_names()
    concepts: dict[str, str] = {}
    for cid in sorted(all_ids):
        if cid in names:
            concepts[cid] = names[cid]
            counts["names_from_names_file"] += 1
            continue
        seen = train_mentions.get(cid)
        if not seen:
            continue  # unnameable without the test set: dropped by the caller
        if cid in vocab:
            keys = {normalize_mention(m) for m in seen}
            if keys & {normalize_mention(v) for v in vocab[cid]}:
                concepts[cid] = vocab[cid][0]
                counts["names_from_vocabulary"] += 1
                continue
            counts["vocabulary_names_rejected"] += 1
        concepts[cid] = min(seen, key=lambda m: (-seen[m], m))
        counts["names_from_train_mentions"] += 1
    return concepts


def load_pubtator(
    path_or_url: PathOrURL | Mapping[str, PathOrURL],
    *,
    pmids: Mapping[str, PathOrURL | Iterable[str]] | None = None,
    names: PathOrURL | Mapping[str, str] | None = None,
    use_vocabulary_names: bool = True,
    entity_types: Sequence[str] | None = None,
    multi_id: str = "skip",
    exclude_seen: bool = False,
    context_chars: int = 100,
    seed: int = 0,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    name: str | None = None,
    description: str = "",
    licence: str = "see the corpus's own licence",
) -> LinkingTask:
    """Read a PubTator corpus into a :class:`LinkingTask` with mention contexts.

    ``path_or_url``: one file (split by ``pmids``, a mapping split -> PMID file/URL or
    iterable of PMIDs, else by a hash of the PMID with ``dev_fraction`` and
    ``test_fraction``) or a mapping ``{"train": ..., "dev": ..., "test": ...}`` of files.
    ``names``: ``CUI<TAB>name`` file or mapping. ``entity_types``: keep only these
    types (BC5CDR ``["Disease"]``; MedMentions ``T047`` etc.). ``multi_id`` for a
    mention with several ids and no part texts: ``"skip"``, ``"first"`` or ``"all"``
    (one example per id). ``exclude_seen``: drop dev/test examples whose normalised
    mention was a training mention of the same concept. ``task.contexts[split]`` is
    parallel to ``task.<split>``. Counts of everything skipped are in ``task.stats``.
    """
    if multi_id not in ("skip", "first", "all"):
        raise ValueError(f"multi_id must be 'skip', 'first' or 'all', got {multi_id!r}")
    counts: Counter = Counter()
    docs = _doc_splits(path_or_url, pmids, seed, dev_fraction, test_fraction, counts)
    types = set(entity_types) if entity_types is not None else None
    examples = {
        s: [
            ex
            for doc in docs[s]
            for ex in _examples(doc, entity_types=types, multi_id=multi_id, context_chars=context_chars, counts=counts)
        ]
        for s in SPLITS
    }
    for s in SPLITS:
        counts[f"documents_{s}"] = len(docs[s])
    concepts = _name_concepts(
        examples,
        _read_names(names) if names is not None else {},
        use_vocabulary_names,
        counts,
    )
    unnamed = {ex.cid for s in ("dev", "test") for ex in examples[s]} - set(concepts)
    counts["unnamed_concepts"] = len(unnamed)
    train_keys = {(normalize_mention(ex.mention), ex.cid) for ex in examples["train"]}
    kept: dict[str, list[_Example]] = {"train": examples["train"]}
    for s in ("dev", "test"):
        kept[s] = []
        for ex in examples[s]:
            if ex.cid not in concepts:
                counts["unnamed_concept_mentions_dropped"] += 1
                continue
            if (normalize_mention(ex.mention), ex.cid) in train_keys:
                counts[f"{s}_mentions_seen_in_train"] += 1
                if exclude_seen:
                    continue
            kept[s].append(ex)
    owners: dict[str, set[str]] = defaultdict(set)
    for s in SPLITS:
        for ex in kept[s]:
            owners[normalize_mention(ex.mention)].add(ex.cid)
    ambiguous = {k for k, cs in owners.items() if len(cs) > 1}
    counts["ambiguous_strings"] = len(ambiguous)
    counts["ambiguous_mentions"] = sum(normalize_mention(ex.mention) in ambiguous for s in SPLITS for ex in kept[s])
    display = (
        os.fspath(path_or_url) if not isinstance(path_or_url, Mapping) else ", ".join(os.fspath(p) for p in path_or_url.values())
    )
    if name is None:
        first = path_or_url if not isinstance(path_or_url, Mapping) else next(iter(path_or_url.values()))
        name = Path(os.fspath(first).split("#")[-1]).name.split(".")[0] or "pubtator"
    return LinkingTask(
        name=name,
        description=description or f"PubTator corpus {name}",
        source=display,
        licence=licence,
        concepts=concepts,
        train=[(ex.mention, ex.cid) for ex in kept["train"]],
        dev=[(ex.mention, ex.cid) for ex in kept["dev"]],
        test=[(ex.mention, ex.cid) for ex in kept["test"]],
        stats=dict(sorted(counts.items())),
        seed=seed,
        contexts={s: [ex.context for ex in kept[s]] for s in SPLITS},
    )


def load_pubtator_corpus(name: str, **kwargs: Any) -> LinkingTask:
    """Download (once, into the cache) and load a corpus of :data:`PUBTATOR_CORPORA`.

    ``kwargs`` go to :func:`load_pubtator` (e.g. ``entity_types=["Disease"]`` for
    BC5CDR, ``names="umls_names.tsv"`` for MedMentions).
    """
    if name not in PUBTATOR_CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known corpora: {', '.join(PUBTATOR_CORPORA)}")
    entry = PUBTATOR_CORPORA[name]
    kwargs.setdefault("name", name)
    kwargs.setdefault("description", entry["description"])
    kwargs.setdefault("licence", entry["licence"])
    if "files" in entry:
        return load_pubtator(entry["files"], **kwargs)
    return load_pubtator(entry["corpus"], pmids=entry["pmids"], **kwargs)
