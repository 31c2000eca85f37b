"""Every chapter opens Colab-ready, and chapters run in an environment built like Colab's.

1. Headers (fast, always): each chapter's badge, install cell and banner are what
   ``scripts/sync_chapter_headers.py`` writes from ``kfac_tutorial/_release.py`` (one
   repository address and release for all), no chapter imports ``myst_nb`` (absent on
   Colab), and ``_config.yml`` names the same repository and release.
2. Simulation (minutes, needs the package registries; ``KFAC_COLAB_TEST=1``, as
   scripts/test.sh sets): a fresh virtual environment holding only what Colab brings
   (its own torch, here the CPU wheel torch==2.13.0, and a Jupyter kernel), a stub
   ``google.colab`` imported at start-up as on Colab, no checkout on ``sys.path`` and the
   working directory a temporary folder. Chapters 1, 3 and 12 run top to bottom in the
   ``ci`` profile; their first cell's own install command installs the package, with the
   release address replaced by a copy of this checkout's package. Afterwards torch must
   be the environment's original one and ``kfac_tutorial`` the installed copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import sync_chapter_headers as sync  # noqa: E402

from kfac_tutorial import _release  # noqa: E402

CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
COLAB_CHAPTERS = ["01_introduction", "03_diagonal_vs_kronecker", "12_kfac_on_your_own_model"]
COLAB_TORCH = "torch==2.13.0"  # stands for Colab's own torch: a local CPU wheel here


def _source(cell) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("notebook", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_header_matches_the_release(notebook: Path):
    nb = json.loads(notebook.read_text())
    run_times = json.loads(sync.RUN_TIMES.read_text()) if sync.RUN_TIMES.is_file() else {}
    expected = sync.sync_notebook(json.loads(notebook.read_text()), notebook.relative_to(ROOT).as_posix(), run_times)
    assert nb == expected, f"run: python3 scripts/sync_chapter_headers.py {notebook.relative_to(ROOT)}"
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert _release.INSTALL_TARGET in _source(first_code) and "google.colab" in _source(first_code)
    assert _release.colab_url(notebook.relative_to(ROOT).as_posix()) in _source(nb["cells"][0])
    assert not any("myst_nb" in _source(c) for c in nb["cells"] if c["cell_type"] == "code")


def test_config_names_the_release():
    text = (ROOT / "_config.yml").read_text()
    assert sync.sync_config(text) == text, "run: python3 scripts/sync_chapter_headers.py"
    assert f"url: {_release.REPOSITORY}" in text and f"branch: {_release.RELEASE}" in text


def test_release_is_the_package_version():
    import kfac_tutorial

    assert _release.RELEASE == f"v{kfac_tutorial.__version__}"
    assert _release.INSTALL_TARGET.endswith(f"@{_release.RELEASE}")


def _run(cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def colab_like(tmp_path_factory):
    """A venv with Colab's torch, a kernel and a stub google.colab; a copy of the package to install."""
    if os.environ.get("KFAC_COLAB_TEST") != "1":
        pytest.skip("the Colab simulation needs KFAC_COLAB_TEST=1 (scripts/test.sh sets it) and the package registries")
    base = tmp_path_factory.mktemp("colab")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", COLAB_TORCH, "ipykernel"])
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    stub = base / "stub" / "google" / "colab"  # namespace package google (no __init__): protobuf still imports
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('"""Stub of Colab\'s google.colab module (tests/test_colab.py)."""\n')
    (site / "colab_stub.pth").write_text(f"{base / 'stub'}\nimport google.colab\n")  # imported at start-up, as on Colab
    release = base / "release"  # what the tag holds, as far as pip is concerned
    release.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, release / name)
    shutil.copytree(ROOT / "kfac_tutorial", release / "kfac_tutorial", ignore=shutil.ignore_patterns("__pycache__"))
    kernels = base / "jupyter"
    _run([str(python), "-m", "ipykernel", "install", "--prefix", str(kernels), "--name", "colab-sim"])
    torch_before = _run([str(python), "-c", "import torch; print(torch.__version__)"]).strip()
    return {"python": python, "release": release, "jupyter": kernels / "share" / "jupyter", "base": base, "torch": torch_before}


@pytest.mark.parametrize("stem", COLAB_CHAPTERS)
def test_chapter_runs_in_a_colab_like_environment(colab_like, stem, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "book" / f"{stem}.ipynb", as_version=4)
    install = next(c for c in nb.cells if c.cell_type == "code")
    remote = f"git+{_release.REPOSITORY}@{_release.RELEASE}"
    assert remote in install.source
    install.source = install.source.replace(remote, colab_like["release"].as_uri())
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import importlib.util, kfac_tutorial, torch\n"
            "print(torch.__version__)\nprint(kfac_tutorial.__file__)\n"
            "print(importlib.util.find_spec('myst_nb') is None)"
        )
    )
    workdir = colab_like["base"] / f"run-{stem}"
    workdir.mkdir()
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(colab_like["jupyter"]))
    monkeypatch.setenv("KFAC_PROFILE", "ci")
    monkeypatch.setenv("KFAC_CACHE", str(colab_like["base"] / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    start = time.perf_counter()
    NotebookClient(nb, timeout=1200, kernel_name="colab-sim", resources={"metadata": {"path": str(workdir)}}).execute()
    print(f"{stem}: {time.perf_counter() - start:.0f} s in the Colab-like environment (profile ci)")
    # a kernel may deliver one print in several stream messages: join stdout first
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout")
    torch_version, package_file, no_myst = printed.split()
    assert torch_version == colab_like["torch"], "the install cell replaced the environment's torch"
    assert Path(package_file).resolve().is_relative_to(colab_like["base"] / "venv"), package_file
    assert no_myst == "True", "myst_nb is installed: the glue fallback was not exercised"


def test_glue_falls_back_to_display_without_myst_nb(monkeypatch):
    import IPython.display

    from kfac_tutorial import book

    shown = []
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # import myst_nb now raises ImportError, as on Colab
    monkeypatch.setattr(IPython.display, "display", shown.append)
    book.glue("answer", 42)
    book.glue("hidden", 7, display=False)
    assert shown == [42]
    assert book.GLUED["answer"] == 42 and book.GLUED["hidden"] == 7
