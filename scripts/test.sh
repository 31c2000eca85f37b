#!/usr/bin/env bash
# The test command of the README: set up, then
#   1. the package tests (pytest, brute-force oracles; fast),
#   2. every chapter under nbval: the key results (# NBVAL_CHECK_OUTPUT cells) must
#      match the committed cpu-profile outputs,
#   3. the book build, every chapter executed (raise_on_error), any warning fails;
#      experiments already run under nbval are loaded from $KFAC_RESULTS_CACHE
#      (kfac_tutorial.experiments.run_or_load) instead of trained twice.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
KFAC_PROFILE=${KFAC_PROFILE:-ci} python3 -m pytest tests -q
# nbval executes every chapter and stores each experiment's results in a fresh cache;
# the book build executes them again and reuses them (same inputs, same numbers).
export KFAC_RESULTS_CACHE="$(mktemp -d)"
KFAC_PROFILE=cpu python3 -m pytest --nbval-lax book/[0-9][0-9]_*.ipynb --sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider -q
KFAC_PROFILE=cpu jupyter-book build . -W -n --keep-going
