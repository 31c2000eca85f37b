"""kfac_tutorial: Kronecker-factored (KFAC) and diagonal (EWC) Fisher consolidation
against catastrophic forgetting, with medical entity linkers and data.

>>> import kfac_tutorial as kt
>>> kfac = kt.KFAC.fit(model, batches, fisher="mc", mc_samples=1)   # doctest: +SKIP
>>> loss = task_loss + lam * kfac.penalty(model)                    # doctest: +SKIP
"""

__version__ = "0.5.0"

from .consolidation import EWC, KFAC, Consolidation, ConsolidationSum, load  # noqa: E402
from .persistence import StateFileError, StateMismatchError  # noqa: E402

__all__ = ["EWC", "KFAC", "Consolidation", "ConsolidationSum", "load", "StateFileError", "StateMismatchError", "__version__"]
