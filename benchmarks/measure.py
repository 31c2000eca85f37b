"""Timing and peak-memory helpers (CPU: resident set size sampled by a thread; CUDA:
the allocator's peak above the memory allocated at the start, timings synchronised)."""

from __future__ import annotations

import gc
import statistics
import threading
import time
import traceback

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        gc.collect()
        self.start = _rss_bytes()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def delta(self) -> int:
        return self.peak - self.start


class PeakCUDA:
    """Peak CUDA memory allocated above the level at entry."""

    def __enter__(self):
        torch.cuda.synchronize()
        self.start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.delta = torch.cuda.max_memory_allocated() - self.start


def timed(fn, device: str | torch.device = "cpu") -> tuple[float, object]:
    """``(seconds, fn())``: wall time of one call (CUDA: synchronised before and after). The
    benchmarks' one timer."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def measure(fn, repeats: int = 3, device: str = "cpu") -> dict:
    """Run ``fn()`` ``repeats`` times: median/min seconds, max peak-memory delta (MiB; CPU:
    resident set size, CUDA: allocated), or the error it raised (type and first line of
    the message)."""
    cuda = torch.device(device).type == "cuda"
    seconds, peaks = [], []
    for _ in range(repeats):
        try:
            with PeakCUDA() if cuda else PeakRSS() as mem:
                elapsed, out = timed(fn, device)
                seconds.append(elapsed)
            peaks.append(mem.delta)
            del out
        except Exception as err:  # a peer that cannot run the model: that is a result
            msg = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            return {
                "ok": False,
                "error": f"{type(err).__name__}: {msg}",
                "where": traceback.extract_tb(err.__traceback__)[-1].filename.split("site-packages/")[-1],
            }
        gc.collect()
    return {
        "ok": True,
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "runs_s": seconds,
        "peak_mib": max(peaks) / 2**20,
    }
