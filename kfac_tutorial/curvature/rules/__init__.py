"""One rule per layer type (see :mod:`.registry` for what a rule holds).

Adding a layer type
-------------------
1. Write ``rules/<type>.py``: the functions of a :class:`LayerRule` (inputs as
   positions, output gradients, per-example gradients; optionally a padding mask) and
   one ``register(MyLayer, LayerRule(..., factors=LayerFactors))`` call; pick the factor
   type of :mod:`..factors` whose layout fits the weight (or write a subclass).
   Every module of this package is imported (and so registered) automatically.
   A layer that applies its matrix functionally inside its forward also names the
   matrix's attributes (``weight=``, ``bias=``) and how the recorder sees its calls
   (``attach=``; see :mod:`.attention`).
2. Add one entry to ``LAYER_CASES`` in ``tests/cases.py``: the oracle tests (KFAC factors
   against brute force, the diagonal Fisher, the penalty, save/load) then run on it.

Nothing in estimation or consolidation changes.
"""

import importlib
import pkgutil

from .registry import RULES, LayerRule, lookup, register, rule_for, why_no_rule
from .sparse import SparseRows

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")  # each rule module registers its rules

__all__ = ["RULES", "LayerRule", "SparseRows", "lookup", "register", "rule_for", "why_no_rule"]
