"""Progress bars inside a headless Jupyter kernel (nbval, papermill, the book build)
must refresh rarely: each refresh is a kernel message, and a flood of them makes nbval
fail a cell that ran fine ("Timeout ... waiting for output")."""

import io
import sys
import types

from kfac_tutorial.progress import KERNEL_INTERVAL, progress_bar


def test_terminal_bars_keep_tqdm_defaults(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    bar = progress_bar(total=2, file=io.StringIO())
    assert bar.mininterval == 0.1
    bar.close()


def test_kernel_bars_refresh_at_most_every_interval(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.delenv("KFAC_PROGRESS_INTERVAL", raising=False)
    bar = progress_bar(total=2, file=io.StringIO())
    assert bar.mininterval == KERNEL_INTERVAL >= 10
    bar.close()
    monkeypatch.setenv("KFAC_PROGRESS_INTERVAL", "2.5")
    bar = progress_bar(total=2, file=io.StringIO(), leave=False)
    assert bar.mininterval == 2.5
    bar.close()
