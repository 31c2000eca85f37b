"""EWC and KFAC consolidation: a quadratic penalty that keeps what earlier tasks learned.

After task ``A`` (parameters ``θ*``), training on task ``B`` minimises

    L_B(θ) + λ · penalty(θ),        penalty(θ) = ½ (θ − θ*)ᵀ F̂ (θ − θ*),

the Laplace approximation of task ``A``'s posterior. ``F̂`` approximates the **mean**
per-example Fisher of task ``A`` (``(1/N) Σ_n E_y[∇log p(y|x_n) ∇log p(y|x_n)ᵀ]``): the
dataset size ``N`` is *not* folded in; it belongs to the strength ``λ`` (``λ = N``
recovers the plain Laplace posterior).

* :class:`EWC` keeps ``diag(F)`` (one number per parameter; Kirkpatrick et al. 2017).
* :class:`KFAC` keeps per layer ``F_layer ≈ G ⊗ A`` (Martens & Grosse 2015; KFC for
  Conv1d, Grosse & Martens 2016; a diagonal ``A`` for embeddings) and a diagonal for
  every other parameter (LayerNorm, ...). Layers are independent (block diagonal).
  Penalty per layer: ``½ tr(ΔWᵀ G ΔW A) = ½ sum(ΔW ⊙ (G ΔW A))`` with
  ``ΔW = [W | b] − [W* | b*]``, never forming ``G ⊗ A``. Vec order: row-major
  ``vec([W | b])`` (PyTorch's flattening) pairs with ``G ⊗ A``.

Several tasks:

* per-task sum, ``ewc_a + ewc_b`` or ``kfac_a + kfac_b``: a :class:`ConsolidationSum`
  whose penalty is the sum of the terms, each around its own anchor (exact; memory
  grows with the number of tasks);
* online (Schwarz et al. 2018), ``old.merge(new, gamma)``: one term around the newest
  anchor. EWC: ``F ← γ F_old + F_new`` (exact). KFAC: a sum of Kronecker products is
  not a Kronecker product, so the factors are merged,
  ``A ← (γ A_old + A_new) / (1 + γ)``, ``G ← γ G_old + G_new``, which equals
  ``γ F_old + F_new`` when both tasks have the same factors and otherwise replaces part
  of each task's term by cross terms ``A_old ⊗ G_new``, ``A_new ⊗ G_old``.

Damping ``δ`` adds ``½ δ ‖θ − θ*‖²`` (``F̂ + δ I``).

Storage. State files hold each symmetric factor as its upper triangle (exact, half the
bytes); ``kfac.packed()`` (or ``KFAC.fit(storage="packed")``, opt-in, exact) holds them
that way in memory too, the penalty bit for bit the dense state's. ``kfac.low_rank(tol)`` (opt-in) replaces a factor ``M`` by a root ``R``
(``d × r``, ``M ≈ R Rᵀ`` from its eigendecomposition) wherever ``r ≤ d/2``: ``tol=0``
keeps the numerical rank (exact to rounding: a ``reduce`` factor from ``N`` examples has
rank ≤ ``N``), ``tol > 0`` drops the smallest eigenvalues holding at most ``tol/2`` of
each factor's trace (so ``tr(G_r ⊗ A_r) ≥ (1 − tol) tr(G ⊗ A)``). The penalty then
costs ``O(d_out d_in r)`` instead of ``O(d_out d_in (d_out + d_in))`` per layer.

Modules: :mod:`.base` (anchor, diagonal, penalty, dense matrix, persistence),
:mod:`.ewc`, :mod:`.kfac`, :mod:`.sums` (per-task sums), :mod:`.loader` (any state
file); the factor algebra lives with the factor types in
:mod:`kfac_tutorial.curvature.factors`.
"""

from .base import Consolidation
from .ewc import EWC
from .kfac import KFAC
from .loader import load
from .sums import ConsolidationSum

__all__ = ["Consolidation", "ConsolidationSum", "EWC", "KFAC", "load"]
