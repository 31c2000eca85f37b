"""The built HTML book shows every figure its chapters draw, and its math renders offline.

Runs on a built book only: ``KFAC_BOOK_HTML=_build/html python3 -m pytest tests/test_book_html.py``
(scripts/test.sh does this right after the book build; without the variable the tests skip).

A chapter page's figures are the ``_images/…`` pictures inside it. The number expected
is what the committed notebook carries (image outputs of ``scripts/regenerate_notebooks.sh``,
which runs an ordinary inline kernel) and, independently, at least one picture per cell
that calls ``plt.show()`` at its top level. A kernel started with a non-interactive backend (for instance
``MPLBACKEND=Agg`` exported by the build script) draws into nothing, so the page has no
image and this test fails.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = os.environ.get("KFAC_BOOK_HTML")
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))

pytestmark = pytest.mark.skipif(
    not HTML, reason="set KFAC_BOOK_HTML=<built html folder> (scripts/test.sh does, after the book build)"
)


def committed_images(notebook: Path) -> int:
    """Image outputs (PNG or SVG) of the committed notebook."""
    cells = json.loads(notebook.read_text())["cells"]
    return sum(
        1
        for c in cells
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if {"image/png", "image/svg+xml"} & set(o.get("data", {}))
    )


def cells_showing_figures(notebook: Path) -> int:
    """Code cells that call ``plt.show()`` unconditionally (at the cell's top level, not
    inside an ``if``): each draws at least one figure."""
    cells = json.loads(notebook.read_text())["cells"]
    return sum(
        1
        for c in cells
        if c["cell_type"] == "code" and any(line.startswith("plt.show()") for line in "".join(c["source"]).splitlines())
    )


def page_images(page: Path) -> int:
    """Pictures a page shows from the book's own ``_images`` folder (not badges or logos)."""
    return len(re.findall(r'<img[^>]+src="[^"]*_images/[^"]+"', page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_figure_of_a_chapter_is_on_its_page(notebook: Path):
    page = Path(HTML) / "book" / f"{notebook.stem}.html"
    assert page.is_file(), f"{page} missing: was the book built (scripts/build_book.sh)?"
    expected = max(committed_images(notebook), cells_showing_figures(notebook))
    shown = page_images(page)
    assert shown >= expected, (
        f"{page.name} shows {shown} figure(s), the chapter draws {expected}: "
        "are the kernels started with a non-interactive MPLBACKEND?"
    )


def test_math_is_served_from_the_book():
    page = Path(HTML) / "book" / "02_fisher_and_laplace.html"
    text = page.read_text(encoding="utf-8")
    assert "_static/mathjax/tex-chtml.js" in text, "MathJax is fetched from a CDN: is django-static-mathjax installed?"
    assert (Path(HTML) / "_static" / "mathjax" / "tex-chtml.js").is_file()
