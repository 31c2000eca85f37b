"""Curvature estimation: Fisher flavours, per-layer rules, Kronecker factors, diagonals.

* :mod:`.flavours`: which vectors are back-propagated (exact / mc / empirical Fisher).
* :mod:`.rules`: one rule per layer type (Linear, HF Conv1D, Conv1d, Conv2d, Embedding,
  LayerNorm), found through the class hierarchy.
* :mod:`.factors`: the factor types (dense ``A``, transposed weight, diagonal ``A``) and
  their algebra.
* :mod:`.capture` and :mod:`.model_io`: recording every call of a layer; calling stock
  models.
* :mod:`.plan`, :mod:`.probes`, :mod:`.accumulate`, :mod:`.estimate`: one pass over the
  data accumulating ``A``, ``G`` and diagonals.
* :mod:`.memory`: the bytes a state holds per layer, against the parameters.
"""

from .accumulate import Storage, WeightSharing
from .estimate import DiagonalFallbackWarning, Estimate, estimate
from .factors import DiagonalInputFactors, LayerFactors, TransposedFactors, make_factors
from .flavours import FisherType, Likelihood, backprop_vectors
from .memory import memory_report
from .rules import RULES, LayerRule, register

__all__ = [
    "DiagonalFallbackWarning",
    "DiagonalInputFactors",
    "Estimate",
    "FisherType",
    "LayerFactors",
    "LayerRule",
    "Likelihood",
    "RULES",
    "TransposedFactors",
    "Storage",
    "WeightSharing",
    "backprop_vectors",
    "estimate",
    "make_factors",
    "memory_report",
    "register",
]
