#!/usr/bin/env bash
# The book command of the README: set up, then build the HTML book, executing every
# chapter in the offline CPU profile. The result is in _build/html/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg KFAC_PROFILE=${KFAC_PROFILE:-cpu}
jupyter-book build . -W -n --keep-going
