#!/usr/bin/env bash
# Isolated virtual environment for the peer libraries of the benchmarks.
#
# Never install these into the main environment: backpack-for-pytorch, nngeometry and
# laplace-torch pull torchvision, which can replace the local CPU torch with a CUDA
# build and break transformers. The venv sees the main site-packages (torch,
# transformers, kfac_tutorial) and pins torch to the installed version. The torchvision
# wheel that PyPI offers for torch 2.13 is a CUDA build whose operators do not load
# against torch+cpu ("operator torchvision::nms does not exist"); no peer needs it at
# run time (only backpack.utils.examples imports it), so it is removed again.
#
#   bash benchmarks/setup_peers.sh [VENV]        (default /tmp/peervenv)
set -euo pipefail
VENV="${1:-/tmp/peervenv}"
PY="${PYTHON:-python3}"
TORCH="$("$PY" -c 'import torch; print(torch.__version__)')"
"$PY" -m venv --system-site-packages "$VENV"
CONSTRAINTS="$(mktemp)"
echo "torch==$TORCH" > "$CONSTRAINTS"
"$VENV/bin/pip" install -q -c "$CONSTRAINTS" \
    "backpack-for-pytorch>=1.6" "nngeometry>=0.3" "laplace-torch>=0.2" "curvlinops-for-pytorch>=2"
"$VENV/bin/pip" uninstall -q -y torchvision || true
rm -f "$CONSTRAINTS"
"$VENV/bin/python" -c 'import torch, backpack, nngeometry, laplace, curvlinops; print("peers ready with torch", torch.__version__)'
