"""PubTator corpora as linking tasks: :mod:`.format` reads the files, :mod:`.corpora`
turns a corpus into a :class:`~kfac_tutorial.data.task.LinkingTask` (see there for the
policy: splits by document, composite mentions, concept names, licences)."""

from .corpora import PUBTATOR_CORPORA, load_pubtator, load_pubtator_corpus
from .format import PubTatorAnnotation, PubTatorDocument, PubTatorFormatError, read_pubtator

__all__ = [
    "PUBTATOR_CORPORA",
    "PubTatorFormatError",
    "PubTatorAnnotation",
    "PubTatorDocument",
    "read_pubtator",
    "load_pubtator",
    "load_pubtator_corpus",
]
