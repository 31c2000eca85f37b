"""How one Kronecker factor is held: a full matrix, an exact or truncated root ``R``
(``d × r``, factor ``= R Rᵀ``), or the upper triangle of a symmetric matrix (a vector of
``d(d+1)/2``, in :func:`torch.triu_indices` order), in memory and in state files
(storage ``dense``, ``root``, ``triu``). :class:`~.factors.LayerFactors` calls these."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from ..persistence import StateFileError


def maybe_root(M: Tensor, tol: float, max_fraction: float) -> tuple[Tensor, bool]:
    """``(R, True)`` with ``M ≈ R Rᵀ`` when the kept rank is at most ``max_fraction · d``,
    else ``(M, False)``. ``tol = 0``: numerical rank; ``tol > 0``: drop the smallest
    eigenvalues holding at most ``tol`` of the trace. Eigenvalues in float64, clamped at 0."""
    d = M.shape[0]
    s, U = torch.linalg.eigh(M.detach().double())
    s, U = s.flip(0).clamp(min=0), U.flip(1)
    total = float(s.sum())
    if total <= 0:
        return M.new_zeros(d, 0), True
    if tol > 0:
        tail = torch.cumsum(s.flip(0), 0).flip(0)  # tail[k] = Σ_{i≥k} s_i
        r = int((tail > tol * total).sum())
    else:
        r = int((s > s[0] * d * torch.finfo(M.dtype).eps).sum())
    if r > max_fraction * d:
        return M, False
    # row-major like a root read back from a file, so that a saved and reloaded state's
    # penalty is bit-identical (matmul's summation order follows the strides)
    return (U[:, :r] * s[:r].sqrt()).to(M.dtype).contiguous(), True


def merged_factor(R: Tensor, R_root: bool, S: Tensor, S_root: bool, a: float, b: float) -> tuple[Optional[Tensor], bool]:
    """``([√a R, √b S], True)``, the root of ``a R Rᵀ + b S Sᵀ``, when both are roots and
    it has at most ``d/2`` columns; ``(None, False)`` otherwise (merge the full matrices)."""
    if not (R_root and S_root) or 2 * (R.shape[1] + S.shape[1]) > R.shape[0]:
        return None, False
    return torch.cat([R * math.sqrt(a), S * math.sqrt(b)], dim=1).contiguous(), True


def storage_of(t: Tensor, root: bool) -> str:
    """``root`` (d × r), ``triu`` (upper triangle of an exactly symmetric matrix) or ``dense``."""
    if root:
        return "root"
    if t.dim() != 2 or not torch.equal(t, t.T):
        return "dense"
    return "triu"


def _upper_mask(d: int, device) -> Tensor:
    """``(d, d)`` bool, True on and above the diagonal (its row-major True entries are the
    ``triu_indices`` order)."""
    return torch.ones(d, d, dtype=torch.bool, device=device).triu_()


def pack_triu(M: Tensor) -> Tensor:
    """The upper triangle of a ``(d, d)`` matrix, row-major: ``(d(d+1)/2,)``."""
    return M[_upper_mask(M.shape[0], M.device)]


def triu_side(n: int) -> int:
    """``d`` with ``d(d+1)/2 = n``."""
    d = (math.isqrt(8 * n + 1) - 1) // 2
    if d * (d + 1) // 2 != n:
        raise ValueError(f"{n} numbers are not the upper triangle of a square matrix")
    return d


def unpack_triu(v: Tensor) -> Tensor:
    """The symmetric ``(d, d)`` matrix (contiguous) whose upper triangle is ``v`` (exact copies)."""
    d = triu_side(v.numel())
    mask = _upper_mask(d, v.device)
    M = v.new_empty(d, d).masked_scatter_(mask, v)  # the upper triangle; below it unset
    return torch.where(mask, M, M.T.contiguous())  # (a contiguous transpose: faster than a strided read)


def _maybe_pack(t: Tensor, want: bool) -> tuple[Tensor, bool]:
    """``(upper triangle, True)`` when ``want`` and ``t`` is an exactly symmetric matrix, else ``(t, False)``."""
    if want and storage_of(t, False) == "triu":
        return pack_triu(t), True
    return t, False


def pack(t: Tensor, storage: str) -> Tensor:
    return pack_triu(t) if storage == "triu" else t


def unpack(
    get: Callable, key: str, shape: tuple, storage: str, source: str, prefix: str, keep_packed: bool = False
) -> tuple[Tensor, bool]:
    """Read one factor stored as ``dense``, ``triu`` or ``root`` and check its shape
    (``keep_packed``: return a ``triu`` factor's vector as stored)."""
    if storage == "dense":
        return get(key, shape), False
    if storage == "triu":
        d = shape[0]
        v = get(key, (d * (d + 1) // 2,))
        return (v if keep_packed else unpack_triu(v)), False
    if storage == "root":
        t = get(key)
        if t.dim() != 2 or t.shape[0] != shape[0] or t.shape[1] > shape[0]:
            raise StateFileError(
                f"{source} is damaged: low-rank factor '{prefix + key}' has shape {tuple(t.shape)}, expected ({shape[0]}, r ≤ {shape[0]})"
            )
        return t, True
    raise StateFileError(
        f"{source}: factor '{prefix + key}' has unknown storage {storage!r} (dense, triu or root); upgrade kfac_tutorial"
    )
