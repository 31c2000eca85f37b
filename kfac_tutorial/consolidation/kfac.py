"""KFAC: per layer ``F_layer ≈ G ⊗ A`` (the layer's rule picks the factor type), a
diagonal elsewhere; online merge of the factors; opt-in low-rank roots; opt-in packed
upper triangles (exact)."""

from __future__ import annotations

from typing import ClassVar, Iterable, Optional, Sequence

from torch import nn

from ..curvature import LayerFactors
from ..curvature.factors import FACTOR_TYPES
from ..curvature.accumulate import Storage
from ..curvature.model_io import unwrap
from ..persistence import StateFileError, StateMismatchError
from .base import Consolidation, check_gamma

#: ``KFAC.fit``'s storage choices: the estimate's (``auto``, ``dense``) and ``packed``
#: (``auto``'s roots, the other symmetric 2-D factors as packed upper triangles).
PACKED = "packed"
STORAGE_CHOICES = (*Storage.CHOICES, PACKED)


class KFAC(Consolidation):
    """Kronecker-factored consolidation: per layer ``G ⊗ A``, diagonal elsewhere.

    Attributes:
        factors: ``{module name: LayerFactors}`` (see
            :mod:`kfac_tutorial.curvature.factors` for the layouts).
    """

    kind: ClassVar[str] = "KFAC"

    def __init__(self, anchor, diagonal, factors: Optional[dict[str, LayerFactors]] = None, *, damping=0.0, info=None):
        super().__init__(anchor, diagonal, damping=damping, info=info)
        self.factors = dict(factors or {})

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        batches: Iterable,
        fisher: str = "mc",
        mc_samples: int = 1,
        *,
        likelihood: str = "categorical",
        weight_sharing: str = "reduce",
        storage: str = "auto",
        diagonal_modules: Sequence[str] = (),
        seed: int = 0,
        damping: float = 0.0,
        progress: bool = True,
        strict: bool = False,
        distributed: bool = True,
        process_group=None,
    ) -> "KFAC":
        """Estimate Kronecker factors for every layer with a rule (Linear, HF Conv1D,
        Conv1d, Conv2d, Embedding, and their subclasses), a diagonal elsewhere.

        ``A`` and ``G`` follow :mod:`kfac_tutorial.curvature.estimate`; ``weight_sharing``
        chooses ``"reduce"`` (default: a mention linker pools its tokens into one vector
        before the loss, the reduce setting of Eschenhagen et al. 2023) or ``"expand"``
        (one prediction per position). ``storage`` chooses how a factor is held:
        ``"auto"`` (default) keeps a 2-D factor of side ``d ≥ 64`` (``A`` of a Linear,
        Conv or Conv1D layer, every ``G``) as its exact root ``R`` (``d × r``, factor
        ``= R Rᵀ``, ``A_root`` / ``G_root``) when the fit's contributing rows number
        ``r ≤ d/2`` (e.g. ``A``: examples under ``reduce``, valid positions under
        ``expand``; ``G``: examples × backprop vectors), built from those rows without an
        eigendecomposition and without the ``d × d`` matrix; the state then equals the
        dense one up to rounding. ``"dense"`` always holds ``d × d`` matrices.
        ``"packed"``: ``"auto"``'s roots, and every other symmetric 2-D factor held as its
        upper triangle (``d(d+1)/2`` numbers, exact; see :meth:`packed`).
        Embedding ``A`` vectors, cross-attention's grouped factors and distributed fits
        stay dense. Modules named in ``diagonal_modules`` (or below
        them) and diagonal-only layers (LayerNorm) get diagonal entries. Any other module
        that falls back to a diagonal (no rule for its type, an unsupported
        configuration, a weight used functionally or shared) is named in one
        ``DiagonalFallbackWarning``; ``strict=True`` raises a ``ValueError`` instead.
        Other arguments (``distributed``, ``process_group``: several processes; wrapped
        models) as :meth:`EWC.fit`; across ranks, symmetric factors are summed as packed
        upper triangles.
        """
        if storage not in STORAGE_CHOICES:
            raise ValueError(f"storage={storage!r} is not valid; choose one of {STORAGE_CHOICES}")
        est, anchor, info = cls._estimate(
            model,
            batches,
            fisher=fisher,
            mc_samples=mc_samples,
            likelihood=likelihood,
            seed=seed,
            damping=damping,
            progress=progress,
            kronecker=True,
            weight_sharing=weight_sharing,
            storage=Storage.AUTO if storage == PACKED else storage,
            diagonal_modules=diagonal_modules,
            strict=strict,
            distributed=distributed,
            process_group=process_group,
        )
        state = cls(anchor, est.diagonal, est.factors, damping=damping, info=info)
        return state.packed() if storage == PACKED else state

    # -- penalty, dense matrix, bytes --------------------------------------------------------
    def _quadratic(self, params):
        total = super()._quadratic(params)
        for f in self.factors.values():
            term = f.quadratic(params, self.anchor)
            total = term if total is None else total + term
        return total

    def _add_blocks(self, dense, offsets, params):
        for f in self.factors.values():
            block, idx = f.dense_block(offsets, params)
            dense[idx.unsqueeze(1), idx.unsqueeze(0)] += block

    def _curvature_tensors(self):
        return super()._curvature_tensors() + [t for f in self.factors.values() for t in (f.A, f.G)]  # roots as stored

    # -- several tasks -------------------------------------------------------------------------
    def merge(self, new: "KFAC", gamma: float = 1.0) -> "KFAC":
        """Online KFAC around ``new``'s anchor: ``A ← (γ A_self + A_new)/(1+γ)``,
        ``G ← γ G_self + G_new``; diagonals ``γ d_self + d_new`` (see the package docstring)."""
        gamma = check_gamma(gamma)
        if not isinstance(new, KFAC):
            raise TypeError(f"can only merge a KFAC state into a KFAC state, got {type(new).__name__}")
        if set(new.factors) != set(self.factors) or set(new.diagonal) != set(self.diagonal):
            raise StateMismatchError("the two KFAC states have different layer structures (factors or diagonal parameters)")
        factors = {name: self.factors[name].merged(f, gamma) for name, f in new.factors.items()}
        diagonal = {n: gamma * self.diagonal[n] + new.diagonal[n] for n in new.diagonal}
        return KFAC(
            {n: a.clone() for n, a in new.anchor.items()},
            diagonal,
            factors,
            damping=new.damping,
            info=self._merged_info(new, gamma),
        )

    # -- low-rank storage (opt-in) ---------------------------------------------------------
    def low_rank(self, tol: float = 0.0, max_fraction: float = 0.5) -> "KFAC":
        """A copy whose factors are held as roots ``R`` (``M ≈ R Rᵀ``, ``d × r``) wherever
        the kept rank ``r ≤ max_fraction · d``; other factors stay full.

        ``tol=0``: keep eigenvalues above the factor's rounding level (numerical rank;
        the penalty is unchanged to rounding). ``tol>0``: drop the smallest eigenvalues
        holding at most ``tol/2`` of each factor's trace (an approximation: the trace of
        every layer's ``G ⊗ A`` keeps at least ``1 − tol`` of its mass). The anchor and
        diagonal entries are shared with ``self``. ``info["low_rank_tol"]`` records ``tol``.
        """
        if tol < 0 or tol >= 1:
            raise ValueError(f"tol must be in [0, 1), got {tol}")
        factors = {m: f.low_rank(tol / 2, max_fraction) for m, f in self.factors.items()}
        return KFAC(self.anchor, self.diagonal, factors, damping=self.damping, info={**self.info, "low_rank_tol": tol})

    # -- packed upper triangles (opt-in, exact) -------------------------------------------
    def packed(self) -> "KFAC":
        """A copy whose full symmetric 2-D factors are held packed: the upper triangle,
        ``d(d+1)/2`` numbers instead of ``d²`` (``A_packed`` / ``G_packed``). Roots, the
        embedding's ``A`` vector, non-symmetric and grouped factors stay as held; the anchor
        and diagonal entries are shared with ``self``. Exact: the penalty unpacks one
        layer's factors for its term only and is bit for bit the dense state's, as is its
        gradient; :meth:`memory_bytes` counts the triangles."""
        factors = {m: (f.packed_copy() if hasattr(f, "packed_copy") else f) for m, f in self.factors.items()}
        return KFAC(self.anchor, self.diagonal, factors, damping=self.damping, info=dict(self.info))

    # -- persistence ---------------------------------------------------------------------------
    def _meta(self):
        meta = super()._meta()
        meta["factors"] = [f.spec(m) for m, f in self.factors.items()]
        return meta

    def _tensors(self, prefix=""):
        tensors = super()._tensors(prefix)
        for m, f in self.factors.items():
            tensors[f"{prefix}A/{m}"], tensors[f"{prefix}G/{m}"] = f.packed()
        return tensors

    @classmethod
    def load(cls, path, model: nn.Module, *, packed: bool = False) -> "KFAC":
        """Read a state saved by :meth:`save`; ``packed=True`` holds the file's upper
        triangles (``"triu"`` factors) packed as read, without forming ``d × d`` matrices
        (the state :meth:`packed` would give)."""
        tensors, meta = cls._read(path, model)
        return cls._from_tensors(tensors, {**meta, "_keep_packed": packed}, model, "", str(path))

    def _load_extra(self, tensors, meta, model, prefix, get, source):
        modules = dict(unwrap(model).named_modules())
        for spec in meta.get("factors", []):
            m = spec["module"]
            if m not in modules:
                raise StateMismatchError(f"the state in {source} has Kronecker factors for module '{m}', which the model lacks")
            factor_type = FACTOR_TYPES.get(spec["kind"])
            if factor_type is None:
                raise StateFileError(
                    f"{source}: factors of module '{m}' have unknown kind {spec['kind']!r}; upgrade kfac_tutorial"
                )
            keep = bool(meta.get("_keep_packed", False))
            self.factors[m] = factor_type.unpacked(spec, meta["params"][spec["weight"]], get, source, prefix, keep)
