#!/usr/bin/env bash
# The test command of the README: set up, then
#   0. ruff check and ruff format --check (lint rules and format in pyproject.toml) over
#      the package, benchmarks, tests and scripts,
#   1. the package tests (pytest, brute-force oracles; fast), including that every
#      chapter's Colab header matches kfac_tutorial/_release.py,
#   2. the Colab simulation (tests/test_colab.py): a fresh virtual environment with its
#      own torch and a stub google.colab runs chapters 1, 3 and 12 from their install
#      cell, pointed at this checkout (needs the package registries; a few minutes),
#   3. every chapter under nbval: the key results (# NBVAL_CHECK_OUTPUT cells) must
#      match the committed cpu-profile outputs,
#   4. the book build, every chapter executed (raise_on_error), any warning fails;
#      experiments already run under nbval are loaded from $KFAC_RESULTS_CACHE
#      (kfac_tutorial.experiments.run_or_load) instead of trained twice,
#   5. the built pages show every figure their chapters draw, MathJax served locally
#      (tests/test_book_html.py).
# Kernels (nbval, the book build) run without MPLBACKEND so that figures are drawn inline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset MPLBACKEND
python3 -m ruff check kfac_tutorial benchmarks tests scripts
python3 -m ruff format --check kfac_tutorial benchmarks tests scripts
MPLBACKEND=Agg KFAC_PROFILE=${KFAC_PROFILE:-ci} python3 -m pytest tests -q
KFAC_COLAB_TEST=1 python3 -m pytest tests/test_colab.py -q -p no:cacheprovider
# nbval executes every chapter and stores each experiment's results in a fresh cache;
# the book build executes them again and reuses them (same inputs, same numbers).
export KFAC_RESULTS_CACHE="$(mktemp -d)"
KFAC_PROFILE=cpu python3 -m pytest --nbval-lax book/[0-9][0-9]_*.ipynb --sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider -q
KFAC_PROFILE=cpu jupyter-book build . -W -n --keep-going
KFAC_BOOK_HTML=_build/html python3 -m pytest tests/test_book_html.py -q -p no:cacheprovider
