#!/usr/bin/env bash
# The test command of the README: set up, then run the package tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 KFAC_PROFILE=${KFAC_PROFILE:-ci}
python3 -m pytest tests -q
