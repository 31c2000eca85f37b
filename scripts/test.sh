#!/usr/bin/env bash
# The test command of the README: set up, then
#   1. the package tests (pytest, brute-force oracles; fast),
#   2. every chapter under nbval: the key results (# NBVAL_CHECK_OUTPUT cells) must
#      match the committed cpu-profile outputs,
#   3. the book build, every chapter executed (raise_on_error), any warning fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
KFAC_PROFILE=${KFAC_PROFILE:-ci} python3 -m pytest tests -q
KFAC_PROFILE=cpu python3 -m pytest --nbval-lax book/[0-9][0-9]_*.ipynb --sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider -q
KFAC_PROFILE=cpu jupyter-book build . -W -n --keep-going
