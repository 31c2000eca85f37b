"""Glue between the chapters and wherever they run (the book build, Jupyter, Colab).

:func:`glue` is ``myst_nb.glue`` when myst_nb is installed (the HTML book: a glued value
appears in the text through ``{glue:}``); without it (Colab, a plain Jupyter) it stores
the value in :data:`GLUED` and, when ``display`` is true, shows it like any cell output,
so that a chapter runs unchanged without the book's tool chain.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GLUED", "glue"]

GLUED: dict[str, Any] = {}  # every value glued in this kernel, by name (both paths)


def glue(name: str, variable: Any, display: bool = True) -> None:
    """Record ``variable`` under ``name`` for the book's ``{glue:}`` roles.

    Args:
        name: the key used in the chapter's text, e.g. ``{glue:}`acc_a```.
        variable: any Python object (a number, a table, a figure).
        display: also show the value as this cell's output.
    """
    GLUED[name] = variable
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # no book tool chain (Colab): show it like an ordinary output
        if display:
            from IPython.display import display as show

            show(variable)
        return
    myst_glue(name, variable, display=display)
