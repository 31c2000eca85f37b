"""Progress bars that work everywhere: notebook widgets where ipywidgets is installed
(Colab, Jupyter), plain text bars elsewhere (scripts, papermill, nbval, the book build).

Inside a Jupyter kernel, every bar update is one message on the kernel's output
channel. A headless runner (nbval, papermill, the book build) reads those messages
only after a cell ends, and the channel drops messages beyond its high-water mark
(1000), including, eventually, the one that says the cell finished: nbval then fails
the cell with "Timeout ... waiting for output" although it ran fine. So inside a
kernel the bars refresh at most every ``KFAC_PROGRESS_INTERVAL`` seconds (default 10);
in a terminal, tqdm's usual 0.1 s.
"""

from __future__ import annotations

import importlib.util
import os
import sys

__all__ = ["progress_bar"]

KERNEL_INTERVAL = 10.0


def _tqdm_class():
    if "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def progress_bar(*args, **kwargs):
    """``tqdm(*args, **kwargs)`` of the right kind for where the code runs, with a
    refresh interval that a headless notebook runner can keep up with."""
    if "ipykernel" in sys.modules:
        interval = float(os.environ.get("KFAC_PROGRESS_INTERVAL", KERNEL_INTERVAL))
        kwargs.setdefault("mininterval", interval)
        kwargs.setdefault("maxinterval", max(interval, 10.0))
    return _tqdm_class()(*args, **kwargs)
