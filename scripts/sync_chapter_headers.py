#!/usr/bin/env python3
"""Rewrite every chapter's header from one place, kfac_tutorial/_release.py.

For each chapter (default: book/NN_*.ipynb) it writes

* the Colab badge under the title (the chapter at the pinned release);
* the banner under the badge: the chapter's profile and its measured run time, read from
  book/run_times.json (written by scripts/regenerate_notebooks.sh);
* the first code cell, the Colab install cell: only when ``google.colab`` is imported,
  ``pip install`` the package at the pinned release, with Colab's own torch pinned in the
  same command so that pip never replaces it;
* ``from myst_nb import glue`` → ``from kfac_tutorial.book import glue`` (myst_nb is the
  book's tool chain, absent on Colab; the package's glue falls back to display);
* the ``repository`` url and branch of _config.yml (the book's Colab launch button).

    python3 scripts/sync_chapter_headers.py                 # every chapter
    python3 scripts/sync_chapter_headers.py book/03_*.ipynb # some chapters
    python3 scripts/sync_chapter_headers.py --check         # exit 1 if anything would change

Only sources change (no outputs), so nbval's committed outputs stay valid.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kfac_tutorial import _release  # noqa: E402

RUN_TIMES = ROOT / "book" / "run_times.json"
BADGE_PREFIX = "[![Open in Colab]"
BANNER_PREFIX = "> **Profile"
INSTALL_MARKER = "# Set-up: runs only on Colab."
GLUE_IMPORT = "from myst_nb import glue"
GLUE_FALLBACK = "from kfac_tutorial.book import glue"


def badge(notebook: str) -> str:
    """The Colab badge line of ``notebook`` (its path in the repository)."""
    return f"{BADGE_PREFIX}(https://colab.research.google.com/assets/colab-badge.svg)]({_release.colab_url(notebook)})"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 90:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


def banner(stem: str, run_times: dict) -> str:
    """The banner line: profile and measured run time of chapter ``stem``."""
    rec = run_times.get(stem, {})
    cpu = rec.get("cpu")
    gpu = rec.get("colab_gpu")
    measured = (
        f"**Profile `cpu`: about {_duration(cpu['seconds'])} on {cpu['machine']}** (measured {cpu['date']}, "
        f"{cpu.get('source', 'scripts/regenerate_notebooks.sh')})"
        if cpu
        else "**Profile `cpu`** (run time not measured yet)"
    )
    colab = (
        f"about {_duration(gpu['seconds'])} in the `{gpu['profile']}` profile on {gpu['machine']}"
        if gpu
        else "on a Colab GPU: not recorded"
    )
    return (
        f"{BANNER_PREFIX}{measured[len('**Profile') :]}; {colab}. Other sizes: `KFAC_PROFILE=ci|full`, or "
        f"`papermill … -p PROFILE full` (chapter 10)."
    )


def install_cell() -> str:
    """The source of every chapter's first code cell."""
    return f'''{INSTALL_MARKER} Installs this book's helper package at release
# {_release.RELEASE} (the code this chapter was written against) from {_release.REPOSITORY};
# Colab's own torch is named in the same command (not imported: numpy may not be there
# yet), so pip keeps it. Written by scripts/sync_chapter_headers.py from _release.py.
import sys

if "google.colab" in sys.modules:
    import subprocess
    from importlib.metadata import version

    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", f"torch=={{version('torch')}}",
                    "{_release.INSTALL_TARGET}"], check=True)'''


def _lines(cell) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _set(cell, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def sync_notebook(nb: dict, notebook: str, run_times: dict) -> dict:
    """``nb`` (a notebook as JSON) with its header rewritten; ``notebook`` is its repository path."""
    cells = nb["cells"]
    first = cells[0]
    if first["cell_type"] != "markdown" or not _lines(first).startswith("# "):
        raise ValueError(f"{notebook}: the first cell must be the markdown title ('# N. Title')")
    title, *rest = _lines(first).split("\n")
    rest = [line for line in rest if not line.startswith((BADGE_PREFIX, BANNER_PREFIX))]
    while rest and not rest[0].strip():
        rest.pop(0)
    _set(first, "\n".join([title, "", badge(notebook), "", banner(Path(notebook).stem, run_times), "", *rest]))
    code = [c for c in cells if c["cell_type"] == "code"]
    if not code:
        raise ValueError(f"{notebook}: no code cell for the Colab install cell")
    if not _lines(code[0]).startswith(INSTALL_MARKER):
        new = {"cell_type": "code", "execution_count": None, "id": "colab-install", "metadata": {}, "outputs": [], "source": []}
        cells.insert(cells.index(code[0]), new)
        code.insert(0, new)
    _set(code[0], install_cell())
    for c in code[1:]:
        text = _lines(c)
        if GLUE_IMPORT in text:
            _set(c, re.sub(rf"^{re.escape(GLUE_IMPORT)}$", GLUE_FALLBACK, text, flags=re.M))
    return nb


def sync_config(text: str) -> str:
    """_config.yml with the repository url and branch of kfac_tutorial/_release.py."""
    text = re.sub(r"(?m)^(repository:\n  url: ).*$", rf"\g<1>{_release.REPOSITORY}", text)
    return re.sub(r"(?m)^(  branch: ).*$", rf"\g<1>{_release.RELEASE}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
    run_times = json.loads(RUN_TIMES.read_text()) if RUN_TIMES.is_file() else {}
    stale = []
    for path in paths:
        old = path.read_text()
        nb = sync_notebook(json.loads(old), path.relative_to(ROOT).as_posix(), run_times)
        new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        if new != old:
            stale.append(path.relative_to(ROOT).as_posix())
            if not args.check:
                path.write_text(new)
    config = ROOT / "_config.yml"
    if sync_config(config.read_text()) != config.read_text():
        stale.append("_config.yml")
        if not args.check:
            config.write_text(sync_config(config.read_text()))
    verb = "out of date" if args.check else "rewritten"
    print(f"{len(stale)} file(s) {verb}" + (": " + ", ".join(stale) if stale else ""))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
