#!/usr/bin/env bash
# The benchmarks in one command: peers from the isolated venv when it exists (see
# benchmarks/setup_peers.sh), else ours only (peers recorded as not installed).
#
#   bash benchmarks/run.sh [--quick] [--out PATH] [--sections estimation,step,state,growth]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PEER_VENV:-/tmp/peervenv}"
PY=python
if [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"; fi
# laplace-torch's diagonal needs >20 GB resident on the BERT workloads (killed by the OOM killer
# on a 24 GB machine): left out unless asked for (--skip-methods "" runs it)
exec "$PY" -m benchmarks --skip-methods "laplace diag" "$@"
