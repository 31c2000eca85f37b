#!/usr/bin/env bash
# Set up a fresh machine (or Colab) for kfac-tutorial: idempotent.
# - installs the CPU wheel torch==2.13.0 only where no torch is present;
# - never replaces an existing torch (e.g. Colab's CUDA build): every later pip call
#   is constrained to the installed torch version, so a dependency that wants another
#   torch fails loudly instead of silently pulling a multi-GB build;
# - installs this package in editable mode with its test and book extras, and the test
#   cross-check curvlinops without its dependencies (see pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] no torch found: installing the CPU wheel torch==2.13.0"
    "${PIP[@]}" "torch==2.13.0"
fi
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PY" -c "import torch; print('torch==' + torch.__version__)" > "$CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" -e ".[test,book]"
"${PIP[@]}" --no-deps "curvlinops-for-pytorch>=2.0"
"$PY" -c "import torch, kfac_tutorial; print(f'[setup] torch {torch.__version__}, kfac_tutorial {kfac_tutorial.__version__}')"
