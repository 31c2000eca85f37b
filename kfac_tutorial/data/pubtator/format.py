"""The PubTator file format: reading documents and their annotated mentions.

Format (one document per block, blocks separated by blank lines)::

    PMID|t|title
    PMID|a|abstract
    PMID<TAB>start<TAB>end<TAB>mention<TAB>type<TAB>ids[<TAB>part texts]
    PMID<TAB>CID<TAB>id1<TAB>id2            (BC5CDR relations: skipped, counted)

Offsets index ``title + " " + abstract``. Ids: ``MESH:``/``UMLS:`` prefixes are
removed (``OMIM:`` is kept); several ids are separated by ``|`` or ``+``. Sources are
paths or ``http(s)`` URLs (downloaded and cached under ``$KFAC_CACHE``); ``.gz`` files
are read transparently, ``archive.zip#member`` reads a member of a zip file. No
corpus policy here: see :mod:`.corpora`.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Union

from ..cache import fetch

__all__ = ["PathOrURL", "PubTatorAnnotation", "PubTatorDocument", "PubTatorFormatError", "read_pubtator"]

PathOrURL = Union[str, "os.PathLike[str]"]


class PubTatorFormatError(ValueError):
    """Malformed PubTator input; the message names the file, the line and what was
    expected there."""

    def __init__(self, path: str, line_no: int, expected: str, line: str | None = None):
        self.path, self.line_no, self.expected = path, line_no, expected
        got = "" if line is None else f"; got {line[:80]!r}"
        super().__init__(f"{path}, line {line_no}: expected {expected}{got}")


@dataclass(frozen=True)
class PubTatorAnnotation:
    """One annotation line: span, type, ids as written, composite part texts."""

    start: int
    end: int
    text: str
    entity_type: str
    ids: tuple[str, ...]  # normalised (prefix removed), "-1"/empty included
    parts: tuple[str, ...] = ()  # individual texts of a composite mention (BC5CDR)
    line_no: int = 0


@dataclass
class PubTatorDocument:
    pmid: str
    title: str = ""
    abstract: str = ""
    annotations: list[PubTatorAnnotation] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.title + " " + self.abstract if self.abstract else self.title


# --------------------------------------------------------------------------- input
def _is_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def _resolve(source: PathOrURL) -> tuple[Path, str | None, str]:
    """(local file, zip member or None, display name)."""
    text = os.fspath(source)
    member = None
    if _is_url(text):
        url, _, member = text.partition("#")
        return fetch(url), member or None, text
    if "#" in text and not os.path.exists(text):
        head, _, tail = text.partition("#")
        if head.endswith(".zip"):
            text, member = head, tail
    return Path(text), member, os.fspath(source)


def _zip_member(archive: zipfile.ZipFile, member: str | None, display: str) -> str:
    names = [n for n in archive.namelist() if not n.endswith("/")]
    if member is None:
        txt = [n for n in names if n.endswith(".txt") and "__MACOSX" not in n]
        if len(txt) != 1:
            raise ValueError(f"{display}: name the member of the zip file as 'file.zip#member'; members: {', '.join(names[:20])}")
        return txt[0]
    if member in names:
        return member
    matches = [n for n in names if os.path.basename(n) == os.path.basename(member)]
    if len(matches) != 1:
        raise ValueError(f"{display}: no member {member!r} in the zip file")
    return matches[0]


def _open_text(source: PathOrURL) -> tuple[IO[str], str]:
    """Open a PubTator (or PMID list) file as text: gzip/zip aware, any newline."""
    path, member, display = _resolve(source)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:  # corpora are small: read the member
            raw: IO[bytes] = io.BytesIO(archive.read(_zip_member(archive, member, display)))
    else:
        with open(path, "rb") as f:
            magic = f.read(2)
        raw = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline=None), display


_TITLE_OR_ABSTRACT = re.compile(r"^([^|\t]+)\|([ta])\|(.*)$")
_ID_SPLIT = re.compile(r"[|+]")
_ANNOTATION = "an annotation 'PMID<TAB>start<TAB>end<TAB>mention<TAB>type<TAB>ids'"


def _normalise_id(raw: str) -> str:
    raw = raw.strip()
    for prefix in ("MESH:", "MeSH:", "UMLS:"):
        if raw.startswith(prefix):
            return raw[len(prefix) :]
    return raw


def _parse(lines: Iterable[str], display: str, counts: Counter) -> list[PubTatorDocument]:
    docs: list[PubTatorDocument] = []
    doc: PubTatorDocument | None = None
    for line_no, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            doc = None
            continue
        m = _TITLE_OR_ABSTRACT.match(line)
        if m:
            pmid, kind, body = m.group(1).strip(), m.group(2), m.group(3)
            if kind == "t":
                if doc is not None and doc.pmid == pmid:
                    raise PubTatorFormatError(display, line_no, f"one title line for PMID {pmid}", line)
                doc = PubTatorDocument(pmid=pmid, title=body)
                docs.append(doc)
            else:
                if doc is None or doc.pmid != pmid:
                    raise PubTatorFormatError(display, line_no, f"'{pmid}|t|title' before the abstract", line)
                doc.abstract = body
            continue
        fields = line.split("\t")
        if len(fields) == 4 and not fields[1].strip().lstrip("-").isdigit():
            counts["relation_lines_skipped"] += 1  # BC5CDR: PMID CID chemical disease
            continue
        if len(fields) < 5:
            raise PubTatorFormatError(
                display,
                line_no,
                f"'PMID|t|title', 'PMID|a|abstract', {_ANNOTATION} or a blank line",
                line,
            )
        pmid = fields[0].strip()
        if doc is None or doc.pmid != pmid:
            where = "no document" if doc is None else f"document {doc.pmid}"
            raise PubTatorFormatError(
                display,
                line_no,
                f"{_ANNOTATION} of the current document (this line is in {where}; a title line 'PMID|t|title' must come first)",
                line,
            )
        try:
            start, end = int(fields[1]), int(fields[2])
        except ValueError:
            raise PubTatorFormatError(display, line_no, f"integer start and end offsets in {_ANNOTATION}", line) from None
        if not 0 <= start <= end:
            raise PubTatorFormatError(display, line_no, "0 <= start <= end", line)
        ids = tuple(_normalise_id(x) for x in _ID_SPLIT.split(fields[5])) if (len(fields) > 5 and fields[5].strip()) else ()
        parts = tuple(p.strip() for p in fields[6].split("|")) if (len(fields) > 6 and fields[6].strip()) else ()
        text = doc.text
        if text[start:end] != fields[3]:
            counts["offset_mismatches"] += 1
        doc.annotations.append(
            PubTatorAnnotation(
                start=start,
                end=end,
                text=fields[3],
                entity_type=fields[4].strip(),
                ids=ids,
                parts=parts,
                line_no=line_no,
            )
        )
    return docs


def read_pubtator(path_or_url: PathOrURL, *, counts: Counter | None = None) -> list[PubTatorDocument]:
    """Parse a PubTator file (local path, ``.gz``, ``file.zip#member`` or URL).

    Raises :class:`PubTatorFormatError` naming the file and line of malformed input.
    ``counts`` (optional) receives ``relation_lines_skipped`` and
    ``offset_mismatches`` (annotation text differing from the document at its
    offsets; the annotation's own text is kept).
    """
    counts = Counter() if counts is None else counts
    handle, display = _open_text(path_or_url)
    with handle:
        docs = _parse(handle, display, counts)
    seen: set[str] = set()
    for d in docs:
        if d.pmid in seen:
            counts["duplicate_documents"] += 1
        seen.add(d.pmid)
    return docs
