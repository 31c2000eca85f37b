#!/usr/bin/env python3
"""Record each chapter's execution time from a book-build log into book/run_times.json.

    python3 scripts/record_run_times.py _build/build_log.txt   # after scripts/build_book.sh

myst-nb logs ``<chapter>.ipynb: Executed notebook in <s> seconds`` for every chapter it
executes. The times are stored under ``cpu`` with the machine's core count, the date and
the source (the book build: experiments shared by chapters 7, 8 and 10 are trained once,
so chapter 10 then reuses them), then ``scripts/sync_chapter_headers.py`` writes them into
the banners of the chapters timed (commit both). Only the ``cpu`` profile is recorded (the build's profile).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMES = ROOT / "book" / "run_times.json"
PATTERN = re.compile(r"(\d\d_[\w-]+)\.ipynb: Executed notebook in ([\d.]+) seconds")


def parse(log: str) -> dict[str, float]:
    """``{chapter stem: seconds}`` from a build log."""
    return {stem: float(sec) for stem, sec in PATTERN.findall(log)}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    profile = os.environ.get("KFAC_PROFILE", "cpu")
    found = parse(Path(argv[0]).read_text(errors="replace"))
    if profile != "cpu" or not found:
        print(f"record_run_times: nothing recorded (profile {profile}, {len(found)} chapter times in the log)")
        return 0
    times = json.loads(TIMES.read_text()) if TIMES.is_file() else {}
    for stem, seconds in found.items():
        times.setdefault(stem, {})["cpu"] = {
            "seconds": round(seconds),
            "machine": f"{os.cpu_count()} CPU cores (1-min load average {os.getloadavg()[0]:.0f} when recorded)",
            "date": datetime.date.today().isoformat(),
            "source": "book build",
        }
    TIMES.write_text(json.dumps(dict(sorted(times.items())), indent=1) + "\n")
    print(f"record_run_times: {len(found)} chapter times written to {TIMES.relative_to(ROOT)}")
    import subprocess

    chapters = [str(ROOT / "book" / f"{stem}.ipynb") for stem in sorted(found)]
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_chapter_headers.py"), *chapters]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
