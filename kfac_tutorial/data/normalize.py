"""String normalisation behind the anti-leakage rule of the linking splits.

Two mention strings are *trivial rewrites* of each other when they have the same
:func:`normalize_mention` key.  The key undoes exactly the rewrites the tutorial
treats as trivial:

* case and accents (``"Acétaminophène"`` -> ``"acetaminophene"``),
* punctuation (every character that is not a letter or digit separates words:
  ``"Prader-Willi"`` == ``"prader willi"``) and the possessive ``'s``
  (``"Paget's disease"`` == ``"Paget disease"``),
* plural/singular (a deliberately greedy English stemmer, see :func:`singularize`:
  ``"acute abdomens"`` == ``"acute abdomen"``),
* word order (the key is the sorted multiset of words:
  ``"abdomen, acute"`` == ``"acute abdomen"``),
* the ICD qualifier ``NOS`` ("not otherwise specified"), which adds no meaning.

The stemmer over-merges on purpose (``"disease"`` and ``"diseases"`` both become
``"diseas"``): merging too much only moves more strings to the training split, so a
mistake errs on the side of an easier training set, never a leaky test set.
Anything else (synonyms, abbreviations, brand names, ``"cancer of the lung"`` vs
``"lung cancer"``) is *not* trivial and may be held out.
"""

from __future__ import annotations

import functools
import re
import unicodedata

__all__ = ["normalize_mention", "singularize", "tokenize"]

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_POSSESSIVE = re.compile(r"(?<=\w)['\u2019]s\b")
_IRREGULAR = {
    "feet": "foot",
    "teeth": "tooth",
    "children": "child",
    "men": "man",
    "women": "woman",
    "mice": "mouse",
    "lice": "louse",
    "geese": "goose",
    "oxen": "ox",
}
_DROPPED_WORDS = frozenset({"nos"})


def tokenize(text: str) -> list[str]:
    """Lower-case, strip accents and possessive 's, split on non-letters/digits."""
    if text.isascii():
        text = _POSSESSIVE.sub("", text.lower())
    else:
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
        text = _ascii_fold(_POSSESSIVE.sub("", text))
    return [w for w in _NON_ALNUM.split(text) if w and w not in _DROPPED_WORDS]


def _ascii_fold(text: str) -> str:
    # Letters without an ASCII decomposition (Greek, ...) become the word 'u<hex>', so
    # that "beta-alanine" written with a Greek beta and "alanine" stay different.
    return "".join(ch if ch.isascii() or not ch.isalnum() else f" u{ord(ch):x} " for ch in text)


@functools.lru_cache(maxsize=1 << 16)
def singularize(word: str) -> str:
    """A greedy stem under which an English singular and its plural coincide.

    It is not a linguistic singular: it maps *both* forms to one stem (``"headache"``
    and ``"headaches"`` -> ``"headach"``). Short words and words with digits are kept.
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("omata"):  # carcinomata -> carcinoma
        word = word[:-2]
    elif word.endswith("ies") and len(word) > 4:  # injuries -> injury
        word = word[:-3] + "y"
    elif word.endswith("sses"):  # abscesses -> abscess
        word = word[:-2]
    elif word.endswith(("ss", "us", "is")):  # abscess, virus, sepsis: not plurals
        return word
    elif word.endswith(("xes", "zes", "ches", "shes")):  # reflexes, branches
        word = word[:-2]
    elif word.endswith("s"):
        word = word[:-1]
    elif word.endswith("ae"):  # vertebrae -> vertebra
        word = word[:-1]
    if word.endswith("e") and len(word) > 4:  # headache / headach(es), disease(s)
        word = word[:-1]
    return word


def normalize_mention(text: str) -> str:
    """The anti-leakage key of a mention: sorted singularised words joined by spaces.

    >>> normalize_mention("Abdomen, Acute") == normalize_mention("acute abdomens")
    True
    >>> normalize_mention("Typhoid fever NOS") == normalize_mention("typhoid-fever")
    True
    >>> normalize_mention("lung cancer") == normalize_mention("cancer of the lung")
    False

    The empty string means the text has no letters or digits.
    """
    return " ".join(sorted(singularize(w) for w in tokenize(text)))
