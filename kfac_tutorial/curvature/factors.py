"""Kronecker factors of one layer, ``F_layer ≈ G ⊗ A``, and everything they do.

A layer's rule names one of these types; estimation and consolidation only call their
methods (shapes, input statistics, the penalty's quadratic form, the dense block,
online merge, low-rank roots, packing for a state file). Conventions:

* :class:`LayerFactors` (Linear, Conv1d, Conv2d): the weight reshaped to a matrix
  ``W`` of shape ``(d_out, d_in)`` (``weight.reshape(d_out, -1)``), the bias appended
  as a last column, ``D = [ΔW | Δb]``. ``A`` is ``(d_in(+1), d_in(+1))``, ``G`` is
  ``(d_out, d_out)``; row-major ``vec(D)`` pairs with ``G ⊗ A`` and the quadratic form
  is ``vec(D)ᵀ (G ⊗ A) vec(D) = tr(Dᵀ G D A) = sum(D ⊙ (G D A))``.
* :class:`TransposedFactors` (Hugging Face's ``Conv1D``, GPT-2): the weight is stored
  ``(d_in, d_out)``; its matrix is ``weightᵀ``, after which the algebra is the above.
* :class:`DiagonalInputFactors` (Embedding ``(V, D)``): the input is one-hot, so ``A``
  is the ``(V,)`` diagonal of token frequencies and ``F_layer ≈ diag(A) ⊗ G`` over the
  row-major ``vec(W)``; positions always count as examples (``expand``).

A factor may be held as a root ``R`` (``d × r``, factor ``= R Rᵀ``): ``A_root`` /
``G_root`` say so. Roots come from the fit itself (``KFAC.fit(storage="auto")``, the
default: a factor of side ``d ≥ 64`` summed from ``r ≤ d/2`` rows is stored as those
rows, scaled, ``R = [√c_i X_iᵀ]_i / √norm``; exact, see :mod:`.accumulate`) or from
:meth:`LayerFactors.low_rank` (eigendecomposition of a full factor, opt-in). Every
method works on either storage: :meth:`LayerFactors.quadratic` picks the cheapest
product (``‖R_Gᵀ D R_A‖²`` for two roots; autograd differentiates it, so no symmetry
of ``R Rᵀ`` is assumed), :meth:`LayerFactors.dense_block` uses ``R Rᵀ``,
:meth:`LayerFactors.merged` concatenates roots while the result keeps at most ``d/2``
columns, state files store a root as ``"root"`` (``d × r``, row-major).

A 2-D symmetric factor may also be held *packed* (``A_packed`` / ``G_packed``): its upper
triangle as a vector of ``d(d+1)/2`` numbers, row-major (``M[i, j]``, ``i ≤ j``), the
layout state files use for ``"triu"``. Exact: opt-in by :meth:`LayerFactors.packed_copy`
(``KFAC.packed()``, ``KFAC.fit(storage="packed")``, ``KFAC.load(..., packed=True)``).
:meth:`LayerFactors.full_A` / :meth:`LayerFactors.full_G` unpack; the penalty unpacks one
layer's factors for that layer's term only (transient) and then runs the dense arithmetic,
so the penalty and its gradient are bit for bit the dense state's; ``dense_block``,
``merged`` (a merged factor stays packed) and ``low_rank`` work on the full matrices;
state files store a packed factor as ``"triu"`` without unpacking it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Optional

import torch
from torch import Tensor

from .storage import maybe_root, merged_factor, storage_of, unpack_triu, _maybe_pack, pack, unpack

__all__ = ["DiagonalInputFactors", "FACTOR_TYPES", "LayerFactors", "TransposedFactors", "make_factors"]

# kind (as written in state files) -> factor type; filled by the rules' ``register``
FACTOR_TYPES: dict[str, type["LayerFactors"]] = {}


def make_factors(kind: str, A: Tensor, G: Tensor, weight: str, bias: Optional[str] = None, **roots) -> "LayerFactors":
    """Factors of the type registered for ``kind`` (``"linear"``, ``"embedding"``, ...)."""
    if kind not in FACTOR_TYPES:
        raise KeyError(f"no layer rule registers factors of kind {kind!r}; known: {sorted(FACTOR_TYPES)}")
    return FACTOR_TYPES[kind](kind, A, G, weight, bias, **roots)


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


@dataclass
class LayerFactors:
    """Kronecker factors of one layer: ``F_layer ≈ G ⊗ A`` over row-major ``vec([W | b])``.

    Attributes:
        kind: the layer rule's name (``"linear"``, ``"conv1d"``, ``"conv2d"``, ...).
        A: input factor ``(d_in(+1), d_in(+1))`` (or a root ``(d, r)``).
        G: output-gradient factor ``(d_out, d_out)`` (or a root).
        weight, bias: parameter names; the bias (or None) is the last column of ``[W | b]``.
        A_root, G_root: the factor is held as a root ``R`` with factor ``= R Rᵀ``.
        A_packed, G_packed: the symmetric factor is held as its upper triangle, a vector
            of ``d(d+1)/2`` numbers (row-major, :func:`pack_triu`).
    """

    kind: str
    A: Tensor
    G: Tensor
    weight: str
    bias: Optional[str] = None
    A_root: bool = False
    G_root: bool = False
    A_packed: bool = False
    G_packed: bool = False

    # positions of this layer always count as extra examples (no ``reduce`` setting)
    expand_only: ClassVar[bool] = False

    def full_A(self) -> Tensor:
        """The input factor as stored, ``R Rᵀ`` for a root, unpacked for a packed one."""
        if self.A_packed:
            return unpack_triu(self.A)
        return self.A @ self.A.T if self.A_root else self.A

    def full_G(self) -> Tensor:
        """The ``(d_out, d_out)`` output-gradient factor (``R Rᵀ`` for a root, unpacked
        for a packed one)."""
        if self.G_packed:
            return unpack_triu(self.G)
        return self.G @ self.G.T if self.G_root else self.G

    def _working(self) -> tuple[Tensor, Tensor]:
        """``(A, G)`` to compute with: roots and dense matrices as held, packed factors
        unpacked (a transient ``d × d`` copy for the caller)."""
        return (unpack_triu(self.A) if self.A_packed else self.A), (unpack_triu(self.G) if self.G_packed else self.G)

    # -- shapes and estimation ----------------------------------------------------------
    @classmethod
    def shapes(cls, weight_shape: tuple, has_bias: bool) -> tuple[tuple, tuple]:
        """``(A shape, G shape)`` for a weight of ``weight_shape``."""
        d_in = _prod(weight_shape[1:]) + has_bias
        return (d_in, d_in), (weight_shape[0], weight_shape[0])

    @classmethod
    def input_rows(cls, a: Tensor, valid: Tensor, has_bias: bool, dtype: torch.dtype) -> Tensor:
        """The valid positions' ``ā`` as rows: ``(valid positions, d_in(+1))`` from ``a``
        ``(rows, P, d_in)``, ``ā = [a, 1]`` with a bias (padding rows are never copied).
        ``None`` on a factor type whose ``A`` is not a Gram matrix of rows (embeddings)."""
        a = a[valid].to(dtype)  # (valid positions, d_in)
        if has_bias:
            a = torch.cat([a, torch.ones_like(a[:, :1])], dim=-1)
        return a

    @classmethod
    def input_moment(cls, a: Tensor, valid: Tensor, has_bias: bool, dtype: torch.dtype, weight_shape: tuple) -> Tensor:
        """``Σ_{valid (r, p)} ā āᵀ`` over ``a``: ``(rows, P, d_in)``, ``ā = [a, 1]`` with a bias.

        One matrix product over the valid positions only (:meth:`input_rows`)."""
        a = cls.input_rows(a, valid, has_bias, dtype)
        return a.T @ a

    # -- the penalty ------------------------------------------------------------------------
    @staticmethod
    def as_matrix(w: Tensor) -> Tensor:
        """The weight (or anything shaped like it) as the ``(d_out, d_in)`` matrix."""
        return w.reshape(w.shape[0], -1)

    def delta(self, params: dict[str, Tensor], anchor: dict[str, Tensor]) -> Tensor:
        """``D = [ΔW | Δb]``: ``(d_out, d_in(+1))``."""
        D = self.as_matrix(params[self.weight] - anchor[self.weight])
        if self.bias is not None:
            D = torch.cat([D, (params[self.bias] - anchor[self.bias]).unsqueeze(1)], dim=1)
        return D

    def quadratic(self, params: dict[str, Tensor], anchor: dict[str, Tensor]) -> Tensor:
        """``vec(D)ᵀ (G ⊗ A) vec(D)`` (differentiable in ``params``), by the cheapest product
        for the storage: ``‖R_Gᵀ D R_A‖²``, ``tr(Xᵀ G X)`` with ``X = D R_A``, ``tr(Y A Yᵀ)``
        with ``Y = R_Gᵀ D``, or ``sum(D ⊙ G D A)``."""
        D = self.delta(params, anchor)
        A, G = self._working()
        A, G = A.to(D.dtype), G.to(D.dtype)
        if self.A_root and self.G_root:
            Y = torch.linalg.multi_dot([G.T, D, A])
            return (Y * Y).sum()
        if self.A_root:
            X = D @ A
            return (X * (G @ X)).sum()
        if self.G_root:
            Y = G.T @ D
            return (Y * (Y @ A)).sum()
        return KroneckerQuadratic.apply(D, G, A, None)

    def dense_block(self, offsets: dict[str, int], params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(block, idx)``: the float64 block ``G ⊗ A`` and, for each of its rows, the
        index into the flat parameter vector (``offsets``: start of each parameter)."""
        A, G = self.full_A().detach().double().cpu(), self.full_G().detach().double().cpu()
        w = params[self.weight]
        idx = self.as_matrix(offsets[self.weight] + torch.arange(w.numel()).reshape(w.shape))
        if self.bias is not None:
            idx = torch.cat([idx, (offsets[self.bias] + torch.arange(idx.shape[0])).unsqueeze(1)], dim=1)
        return torch.kron(G, A), idx.reshape(-1)

    # -- several tasks, storage ---------------------------------------------------------------
    def merged(self, new: "LayerFactors", gamma: float) -> "LayerFactors":
        """Online merge into ``new``: ``A ← (γ A_self + A_new)/(1+γ)``, ``G ← γ G_self + G_new``.

        A factor held as a root on both sides stays a root when the concatenation
        (``A``: ``[√(γ/(1+γ)) R_self, √(1/(1+γ)) R_new]``; ``G``: ``[√γ R_self, R_new]``,
        exact: ``[X, Y][X, Y]ᵀ = X Xᵀ + Y Yᵀ``) has at most ``d/2`` columns; otherwise
        the merge is done on the full matrices (packed again when either side's factor
        was packed: ``γ X + Y`` of symmetric matrices is exactly symmetric)."""
        A, A_root = merged_factor(self.A, self.A_root, new.A, new.A_root, gamma / (1.0 + gamma), 1.0 / (1.0 + gamma))
        A_packed = G_packed = False
        if not A_root:
            A = (gamma * self.full_A() + new.full_A()) / (1.0 + gamma)
            A, A_packed = _maybe_pack(A, self.A_packed or new.A_packed)
        G, G_root = merged_factor(self.G, self.G_root, new.G, new.G_root, gamma, 1.0)
        if not G_root:
            G = gamma * self.full_G() + new.full_G()
            G, G_packed = _maybe_pack(G, self.G_packed or new.G_packed)
        return replace(new, A=A, G=G, A_root=A_root, G_root=G_root, A_packed=A_packed, G_packed=G_packed)

    def _root_A(self, tol: float, max_fraction: float) -> tuple[Tensor, bool]:
        return maybe_root(self.full_A(), tol, max_fraction)

    def low_rank(self, tol: float, max_fraction: float) -> "LayerFactors":
        """A copy with each factor held as a root where its kept rank is at most
        ``max_fraction · d`` (``tol``: the trace share each factor may drop, see
        :func:`maybe_root`); a factor kept full keeps its storage (dense or packed)."""
        A, A_root = self._root_A(tol, max_fraction)
        A_packed = self.A_packed and not A_root
        if A_packed:
            A = self.A
        G, G_root = maybe_root(self.full_G(), tol, max_fraction)
        G_packed = self.G_packed and not G_root
        if G_packed:
            G = self.G
        return replace(self, A=A, G=G, A_root=A_root, G_root=G_root, A_packed=A_packed, G_packed=G_packed)

    def packed_copy(self) -> "LayerFactors":
        """A copy whose full 2-D factors that are exactly symmetric are held packed (upper
        triangle, ``d(d+1)/2`` numbers); roots, 1-D factors and non-symmetric factors as held."""
        A, A_packed = (self.A, self.A_packed) if self.A_root else _maybe_pack(self.A, True)
        G, G_packed = (self.G, self.G_packed) if self.G_root else _maybe_pack(self.G, True)
        return replace(self, A=A, G=G, A_packed=A_packed, G_packed=G_packed)

    def _storage_A(self) -> str:
        return "triu" if self.A_packed else storage_of(self.A, self.A_root)

    def _storage_G(self) -> str:
        return "triu" if self.G_packed else storage_of(self.G, self.G_root)

    def spec(self, module: str) -> dict:
        """Metadata of the factors for a state file."""
        return {
            "module": module,
            "kind": self.kind,
            "weight": self.weight,
            "bias": self.bias,
            "A_storage": self._storage_A(),
            "G_storage": self._storage_G(),
        }

    def packed(self) -> tuple[Tensor, Tensor]:
        """``(A, G)`` as written to a state file (upper triangles of symmetric factors;
        a packed factor is written as held)."""
        A = self.A if self.A_packed else pack(self.A, self._storage_A())
        G = self.G if self.G_packed else pack(self.G, self._storage_G())
        return A, G

    @classmethod
    def unpacked(
        cls, spec: dict, weight_shape: tuple, get: Callable, source: str, prefix: str, keep_packed: bool = False
    ) -> "LayerFactors":
        """Factors read back from a state file (``get(key, shape)`` returns a checked tensor);
        ``keep_packed``: hold the file's ``"triu"`` factors packed instead of unpacking them."""
        a_shape, g_shape = cls.shapes(tuple(weight_shape), spec["bias"] is not None)
        m = spec["module"]
        A_storage, G_storage = spec.get("A_storage", "dense"), spec.get("G_storage", "dense")
        A, A_root = unpack(get, f"A/{m}", a_shape, A_storage, source, prefix, keep_packed)
        G, G_root = unpack(get, f"G/{m}", g_shape, G_storage, source, prefix, keep_packed)
        A_packed, G_packed = keep_packed and A_storage == "triu", keep_packed and G_storage == "triu"
        return cls(
            spec["kind"], A, G, spec["weight"], spec["bias"], A_root=A_root, G_root=G_root, A_packed=A_packed, G_packed=G_packed
        )


@dataclass
class TransposedFactors(LayerFactors):
    """Factors of a layer whose weight is stored ``(d_in, d_out)`` (Hugging Face ``Conv1D``,
    ``y = x W + b``): its matrix is ``Wᵀ``, the rest is :class:`LayerFactors`."""

    @classmethod
    def shapes(cls, weight_shape, has_bias):
        d_in, d_out = weight_shape
        return (d_in + has_bias, d_in + has_bias), (d_out, d_out)

    @staticmethod
    def as_matrix(w: Tensor) -> Tensor:
        return w.T


@dataclass
class DiagonalInputFactors(LayerFactors):
    """Embedding ``(V, D)``: ``F_layer ≈ diag(A) ⊗ G`` over row-major ``vec(W)``, ``A`` the
    ``(V,)`` token frequencies (never a root), ``G`` ``(D, D)``. The quadratic form
    ``Σ_v A_v ΔW_v G ΔW_vᵀ`` runs over the rows seen in the Fisher data only (for a
    BERT vocabulary most ``A_v`` are 0)."""

    expand_only: ClassVar[bool] = True

    @classmethod
    def shapes(cls, weight_shape, has_bias):
        return (weight_shape[0],), (weight_shape[1], weight_shape[1])

    input_rows: ClassVar[None] = None  # A is a vector of counts, never a root

    @classmethod
    def input_moment(cls, a, valid, has_bias, dtype, weight_shape):
        """Token counts over the valid positions: ``(V,)``."""
        return torch.bincount(a[valid].reshape(-1), minlength=weight_shape[0]).to(dtype)

    def _rows(self) -> Tensor:
        """Indices of the rows with ``A_v > 0`` (cached on the object)."""
        cached = getattr(self, "_rows_cache", None)
        if cached is None or cached[0] is not self.A:
            cached = (self.A, torch.nonzero(self.A > 0).reshape(-1))
            self._rows_cache = cached
        return cached[1]

    def quadratic(self, params, anchor):
        dW = params[self.weight] - anchor[self.weight]
        rows = self._rows()
        D = dW.index_select(0, rows)
        a = self.A.to(dW.dtype).index_select(0, rows)
        G = self._working()[1].to(dW.dtype)
        if self.G_root:  # Σ_v a_v ‖ΔW_v R_G‖²
            Y = (a.sqrt().unsqueeze(1) * D) @ G
            return (Y * Y).sum()
        return KroneckerQuadratic.apply(D, G, None, a)

    def dense_block(self, offsets, params):
        A, G = self.full_A().detach().double().cpu(), self.full_G().detach().double().cpu()
        w = params[self.weight]
        return torch.kron(torch.diag(A), G), torch.arange(w.numel()) + offsets[self.weight]

    def _root_A(self, tol, max_fraction):
        return self.A, self.A_root

    def _storage_A(self) -> str:
        return "root" if self.A_root else "dense"


class KroneckerQuadratic(torch.autograd.Function):
    """``sum(D ⊙ M)`` with ``M = G D A`` (or ``M = diag(a) D G`` for an embedding, ``D``
    ``(V, D_emb)``); gradient ``2 M`` (``G``, ``A`` symmetric), reusing ``M`` instead of
    differentiating through two matrix products: two matmuls per layer in the forward
    pass and none in the backward pass."""

    @staticmethod
    def forward(ctx, D: Tensor, G: Tensor, A: Optional[Tensor], a_diag: Optional[Tensor]) -> Tensor:
        M = (a_diag.unsqueeze(1) * D) @ G if a_diag is not None else G @ D @ A
        ctx.save_for_backward(M)
        return (D * M).sum()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (M,) = ctx.saved_tensors
        return 2.0 * grad_output * M, None, None, None
