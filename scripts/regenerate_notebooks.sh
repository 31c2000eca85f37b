#!/usr/bin/env bash
# Re-execute the book's chapters in place, in the offline CPU profile, so that the
# committed notebooks carry the outputs nbval checks (`# NBVAL_CHECK_OUTPUT` cells).
#
#   bash scripts/regenerate_notebooks.sh                      # every chapter, book/NN_*.ipynb
#   bash scripts/regenerate_notebooks.sh book/02_*.ipynb      # some chapters
#
# Each notebook runs top to bottom in a fresh kernel with its working directory in book/
# (as in the book build), with figures drawn inline (MPLBACKEND unset); cell timing
# metadata is not recorded, so that diffs show only real changes. Each chapter's
# execution time is printed and recorded in book/run_times.json (with the machine's core
# count and the date); scripts/sync_chapter_headers.py then writes it into the chapter's
# banner. Run `bash scripts/setup.sh` first on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export KFAC_PROFILE=cpu HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset MPLBACKEND
# experiments shared by several chapters run once (kfac_tutorial.experiments.run_or_load)
export KFAC_RESULTS_CACHE="${KFAC_RESULTS_CACHE:-$(mktemp -d)}"
# the chapters import kfac_tutorial from this checkout, whatever else is installed
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$#" -eq 0 ]; then
    set -- book/[0-9][0-9]_*.ipynb
fi
python3 - "$@" <<'PYEOF'
import datetime
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

times_file = Path("book/run_times.json")
for path in sys.argv[1:]:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=1800, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": "book"}}).execute()
    nbformat.write(nb, path)
    seconds = time.perf_counter() - start
    print(f"{path}: executed in {seconds:.0f} s (profile cpu)", flush=True)
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    times.setdefault(Path(path).stem, {})["cpu"] = {
        "seconds": round(seconds), "machine": f"{os.cpu_count()} CPU cores (1-min load average {os.getloadavg()[0]:.0f})",
        "date": datetime.date.today().isoformat(),
        "source": "scripts/regenerate_notebooks.sh"}
    times_file.write_text(json.dumps(dict(sorted(times.items())), indent=1) + "\n")
PYEOF
python3 scripts/sync_chapter_headers.py "$@"
