#!/usr/bin/env bash
# Set up a fresh machine (or Colab) for kfac-tutorial: idempotent.
# - installs the CPU wheel torch==2.13.0 only where no torch is present (never
#   replaces an existing torch, e.g. Colab's CUDA build);
# - installs this package in editable mode with its test and book extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] no torch found: installing the CPU wheel torch==2.13.0"
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,book]"
# curvlinops (a test dependency) pulls in backpack, which pulls in a torchvision from
# PyPI that does not match a locally installed torch and then breaks `transformers`.
# Remove torchvision only where it is installed but cannot be imported.
if "$PY" -m pip show torchvision >/dev/null 2>&1 && ! "$PY" -c "import torchvision" >/dev/null 2>&1; then
    echo "[setup] removing a torchvision that does not match the installed torch"
    "$PY" -m pip uninstall --quiet -y torchvision
fi
"$PY" -c "import torch, kfac_tutorial; print(f'[setup] torch {torch.__version__}, kfac_tutorial {kfac_tutorial.__version__}')"
