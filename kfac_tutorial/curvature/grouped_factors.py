"""Block-diagonal Kronecker factors over groups of a packed q/k/v matrix's rows.

``nn.MultiheadAttention``'s in-projection ``W_in = in_proj_weight`` ``(3E, E)`` stacks
three blocks of rows: ``[0, E)`` project the queries, ``[E, 2E)`` the keys, ``[2E, 3E)``
the values. Used as cross-attention, the blocks see different input tensors. A *group*
is a set of blocks that see one tensor, written as a bit mask (``1`` q, ``2`` k, ``4``
v): a decoder's cross-attention has the groups ``(1, 6)`` (``[q]``, ``[k, v]``), fully
distinct inputs ``(1, 2, 4)``. Each group ``g`` has its own pair: ``A_g`` ``(E(+1),
E(+1))`` from its input's tokens, ``G_g`` ``(|g|E, |g|E)`` from the output gradients of
its rows, and the Fisher of ``[W_in | b_in]`` is block diagonal over the groups:

    F ≈ ⊕_g G_g ⊗ A_g,   vec(D)ᵀ F vec(D) = Σ_g tr(D_gᵀ G_g D_g A_g),

``D_g`` the rows of ``D = [ΔW_in | Δb_in]`` of group ``g`` (ascending), row-major
``vec`` within each block. Storage: ``A`` ``(groups, E(+1), E(+1))`` (all ``A_g``
stacked), ``G`` one vector, the row-major ``G_g`` one after the other (group order:
``groups``, by lowest block). State files: kind ``"multihead_attention_groups"``, both
tensors ``dense``, the groups in the spec. Low rank: dense only (:meth:`low_rank`
returns the factors unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..persistence import StateFileError, StateMismatchError
from .factors import KroneckerQuadratic, LayerFactors

__all__ = ["QKVGroupFactors", "block_rows", "group_names"]

BLOCKS = 3  # q, k, v
ALL = (1 << BLOCKS) - 1


def block_rows(group: int, size: int) -> Tensor:
    """The row indices of ``W_in`` (``(3·size, ·)``) of the blocks in the bit mask ``group``."""
    return torch.cat([torch.arange(j * size, (j + 1) * size) for j in range(BLOCKS) if group >> j & 1])


def group_names(groups) -> str:
    """``(1, 6)`` → ``"[q], [k, v]"``."""
    return ", ".join("[" + ", ".join("qkv"[j] for j in range(BLOCKS) if g >> j & 1) + "]" for g in groups)


def check_partition(groups, what: str) -> None:
    """``groups`` must be disjoint non-empty bit masks covering q, k and v."""
    seen = 0
    for g in groups:
        if g <= 0 or g > ALL or g & seen:
            raise ValueError(f"{what}: groups {list(groups)} overlap or are not q/k/v bit masks")
        seen |= g
    if seen != ALL:
        raise ValueError(f"{what}: groups {group_names(groups)} do not cover q, k and v")


@dataclass
class QKVGroupFactors(LayerFactors):
    """``F ≈ ⊕_g G_g ⊗ A_g`` over the q/k/v row groups of a packed in-projection (see the
    module docstring). ``groups``: one bit mask per group, ``A`` ``(len(groups), d, d)``,
    ``G`` the concatenated row-major ``G_g``."""

    groups: tuple = ()

    @classmethod
    def combine(cls, kind: str, parts: dict, weight: str, bias) -> "QKVGroupFactors":
        """From ``{group: (A_g, G_full)}``: ``G_full`` ``(3E, 3E)`` is the group's output
        statistic over all rows (zero outside its own), cut here to ``G_g``."""
        groups = tuple(sorted(parts, key=lambda g: g & -g))  # by lowest block: the query's group first
        check_partition(groups, "cross-attention factors")
        size = parts[groups[0]][1].shape[0] // BLOCKS
        A = torch.stack([parts[g][0] for g in groups])
        pieces = []
        for g in groups:
            rows = block_rows(g, size).to(parts[g][1].device)
            pieces.append(parts[g][1].index_select(0, rows).index_select(1, rows).reshape(-1))
        return cls(kind, A, torch.cat(pieces), weight, bias, groups=groups)

    def _size(self) -> int:
        return self.A.shape[-1] - (self.bias is not None)

    def parts(self) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``[(rows_g, A_g, G_g)]`` (views into ``A`` and ``G``)."""
        size, out, offset = self._size(), [], 0
        for i, g in enumerate(self.groups):
            rows = block_rows(g, size)
            k = rows.numel()
            out.append((rows, self.A[i], self.G[offset : offset + k * k].view(k, k)))
            offset += k * k
        return out

    def quadratic(self, params, anchor):
        """``Σ_g sum(D_g ⊙ G_g D_g A_g)`` (differentiable in ``params``)."""
        D = self.delta(params, anchor)
        total = None
        for rows, A, G in self.parts():
            term = KroneckerQuadratic.apply(D.index_select(0, rows.to(D.device)), G.to(D.dtype), A.to(D.dtype), None)
            total = term if total is None else total + term
        return total

    def dense_block(self, offsets, params):
        """The block-diagonal ``⊕_g G_g ⊗ A_g`` (float64) and its parameter indices."""
        w = params[self.weight]
        idx = self.as_matrix(offsets[self.weight] + torch.arange(w.numel()).reshape(w.shape))
        if self.bias is not None:
            idx = torch.cat([idx, (offsets[self.bias] + torch.arange(idx.shape[0])).unsqueeze(1)], dim=1)
        blocks, indices = [], []
        for rows, A, G in self.parts():
            blocks.append(torch.kron(G.detach().double().cpu(), A.detach().double().cpu()))
            indices.append(idx[rows].reshape(-1))
        return torch.block_diag(*blocks), torch.cat(indices)

    def merged(self, new, gamma):
        """Online merge group by group (the same groups required): ``A_g ← (γ A_g + A_g')/(1+γ)``,
        ``G_g ← γ G_g + G_g'``."""
        if not isinstance(new, QKVGroupFactors) or new.groups != self.groups:
            theirs = group_names(new.groups) if isinstance(new, QKVGroupFactors) else "one group [q, k, v]"
            raise StateMismatchError(
                f"cannot merge the factors of '{self.weight}': its q/k/v groups differ "
                f"({group_names(self.groups)} vs {theirs}); fit both tasks with the "
                "attention called the same way"
            )
        return super().merged(new, gamma)

    def low_rank(self, tol, max_fraction):
        """Dense only: the factors unchanged (each ``A_g``, ``G_g`` is small)."""
        return self

    def describe_storage(self, field: str) -> str:
        """For the memory report: ``A 2×65×65 (groups [q], [k, v])``, ``G blocks 64², 128²``."""
        if field == "A":
            return f"A {'×'.join(map(str, self.A.shape))} (groups {group_names(self.groups)})"
        return "G blocks " + ", ".join(f"{G.shape[0]}²" for _, _, G in self.parts())

    def spec(self, module):
        return {**super().spec(module), "groups": list(self.groups)}

    @classmethod
    def unpacked(cls, spec, weight_shape, get, source, prefix, keep_packed=False):
        """Read back (always dense; ``keep_packed`` does not apply)."""
        m = spec["module"]
        groups = tuple(int(g) for g in spec.get("groups") or ())
        try:
            check_partition(groups, f"{source}: factors of module '{m}'")
        except ValueError as err:
            raise StateFileError(str(err)) from None
        if spec.get("A_storage", "dense") != "dense" or spec.get("G_storage", "dense") != "dense":
            raise StateFileError(f"{source}: grouped factors of module '{m}' must be stored dense")
        size = weight_shape[1]
        d = size + (spec["bias"] is not None)
        A = get(f"A/{m}", (len(groups), d, d))
        G = get(f"G/{m}", (sum((bin(g).count("1") * size) ** 2 for g in groups),))
        return cls(spec["kind"], A, G, spec["weight"], spec["bias"], groups=groups)
