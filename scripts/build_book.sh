#!/usr/bin/env bash
# The book command of the README: set up, then build the HTML book, executing every
# chapter in the offline CPU profile. The result is in _build/html/index.html.
#
# The kernels must draw their figures inline: MPLBACKEND is unset, because a kernel that
# inherits a non-interactive backend (e.g. MPLBACKEND=Agg) shows no figure and the HTML
# book would have none (tests/test_book_html.py checks the built pages).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KFAC_PROFILE=${KFAC_PROFILE:-cpu}
unset MPLBACKEND
# experiments shared by several chapters (7, 8 and 10) are trained once per build
export KFAC_RESULTS_CACHE="${KFAC_RESULTS_CACHE:-$(mktemp -d)}"
mkdir -p _build && jupyter-book build . -W -n --keep-going 2>&1 | tee _build/build_log.txt
echo "[build_book] each chapter's time is in _build/build_log.txt; to put the times in the chapters' banners:"
echo "            python3 scripts/record_run_times.py _build/build_log.txt"
