"""Sphinx extension: serve MathJax 3 from the book itself instead of a CDN.

The PyPI package ``django-static-mathjax`` (module ``mathjax``, no dependencies) ships
MathJax 3's ``es5`` bundle. When it is installed, the build copies that bundle into
``_static/mathjax`` and points ``mathjax_path`` at it, so that a book built here reads
the same without network. Without the package the build keeps the CDN (and says so).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)


def _bundle() -> Path | None:
    try:
        import mathjax  # django-static-mathjax
    except ImportError:
        return None
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    return es5 if (es5 / "tex-chtml.js").is_file() else None


def _configure(app, config) -> None:
    if _bundle() is None:
        logger.info("offline_mathjax: django-static-mathjax not installed; MathJax comes from the CDN")
        return
    config.mathjax_path = "mathjax/tex-chtml.js"  # relative: served from _static/


def _copy(app, exception) -> None:
    es5 = _bundle()
    if exception is None and es5 is not None and app.builder.format == "html":
        shutil.copytree(es5, Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True)


def setup(app):
    app.connect("config-inited", _configure)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
