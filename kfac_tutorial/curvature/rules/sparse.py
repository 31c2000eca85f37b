"""Per-example gradients of an embedding table, kept sparse (the rows a batch touches)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SparseRows:
    """Per-example gradient of an embedding table, as (example, row, vector) triplets.

    ``example``: ``(K,)`` example indices, ``row``: ``(K,)`` table rows (token ids),
    ``values``: ``(K, D)``. The dense per-example gradient of example ``n`` is
    ``Σ_{k: example_k = n} e_{row_k} values_kᵀ``; duplicates add up.
    """

    example: Tensor
    row: Tensor
    values: Tensor

    def add_squared_sum_to(self, out: Tensor, weight: float = 1.0) -> None:
        """``out += weight · Σ_n (per-example gradient of n)²`` elementwise; ``out`` is
        ``(num_rows, D)``. Only rows that occur are touched (no dense ``(B, V, D)``)."""
        num_rows = out.shape[0]
        key = self.example * num_rows + self.row
        unique, inverse = torch.unique(key, return_inverse=True)
        summed = torch.zeros(unique.numel(), self.values.shape[1], dtype=out.dtype, device=out.device)
        summed.index_add_(0, inverse, self.values.to(out.dtype))
        out.index_add_(0, unique % num_rows, weight * summed.square())

    def summed(self, num_rows: int) -> Tensor:
        """``Σ_n`` per-example gradients: the ``(num_rows, D)`` batch gradient."""
        out = torch.zeros(num_rows, self.values.shape[1], dtype=self.values.dtype, device=self.values.device)
        out.index_add_(0, self.row, self.values)
        return out

    def to_dense(self, batch_size: int, num_rows: int) -> Tensor:
        """``(B, num_rows, D)`` dense per-example gradients (memory-hungry; for mixing)."""
        out = torch.zeros(batch_size, num_rows, self.values.shape[1], dtype=self.values.dtype, device=self.values.device)
        out.index_put_((self.example, self.row), self.values, accumulate=True)
        return out
