"""Where the book's repository is published, and which release the chapters install.

One place for every address a reader's notebook uses: the Colab badge of each chapter,
its install cell (``pip install "kfac-tutorial @ git+<REPOSITORY>@<RELEASE>"``) and the
recorded results that a chapter reads when it runs without a checkout (Colab). The
release is the git tag of this package's version, so that a chapter opened from the
badge installs the code it was written against. ``scripts/sync_chapter_headers.py``
rewrites every chapter's header from these values; ``tests/test_colab.py`` checks it.

For the badges to resolve, the repository must be published at :data:`REPOSITORY` with
the tag :data:`RELEASE` pushed (``git tag v0.5.0 && git push origin v0.5.0``).
"""

from __future__ import annotations

from . import __version__

__all__ = ["GITHUB_SLUG", "REPOSITORY", "RELEASE", "RAW_URL", "INSTALL_TARGET", "colab_url", "raw_url"]

GITHUB_SLUG = "kfac-tutorial/kfac-tutorial"  # owner/name on GitHub
REPOSITORY = f"https://github.com/{GITHUB_SLUG}"
RELEASE = f"v{__version__}"  # the git tag the chapters install and read recorded results from
RAW_URL = f"https://raw.githubusercontent.com/{GITHUB_SLUG}/{RELEASE}"
INSTALL_TARGET = f"kfac-tutorial @ git+{REPOSITORY}@{RELEASE}"


def colab_url(notebook: str) -> str:
    """The Colab address of ``notebook`` (a path in the repository, e.g. ``book/01_introduction.ipynb``) at the release."""
    return f"https://colab.research.google.com/github/{GITHUB_SLUG}/blob/{RELEASE}/{notebook}"


def raw_url(relpath: str) -> str:
    """The address of a file of the repository (e.g. ``benchmarks/results/cpu_idle.json``) at the release."""
    return f"{RAW_URL}/{relpath.lstrip('/')}"
