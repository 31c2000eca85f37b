"""Curvature estimation: Fisher flavours, per-layer rules, Kronecker factors, diagonals.

* :mod:`.flavours`: which vectors are back-propagated (exact / mc / empirical Fisher).
* :mod:`.capture`: recording every call of a layer (inputs, outputs, padding masks).
* :mod:`.layers`: one rule per layer type (Linear, Conv1d, Embedding, LayerNorm).
* :mod:`.estimate`: one pass over the data accumulating ``A``, ``G`` and diagonals.
* :mod:`.memory`: the bytes a state holds per layer, against the parameters.
"""

from .estimate import Estimate, LayerFactors, WeightSharing, estimate
from .flavours import FisherType, Likelihood, backprop_vectors
from .layers import RULES, LayerRule, register
from .memory import memory_report

__all__ = [
    "Estimate",
    "FisherType",
    "LayerFactors",
    "LayerRule",
    "Likelihood",
    "RULES",
    "WeightSharing",
    "backprop_vectors",
    "estimate",
    "memory_report",
    "register",
]
