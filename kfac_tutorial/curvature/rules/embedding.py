"""Embedding: the input is one-hot, so ``A`` is diagonal (token counts, a vector).

Token ids ``(rows, *)`` are positions ``(rows, P)``; the per-example gradient of the
table is ``Σ_s e_{id_s} g_sᵀ``, kept as sparse rows. The padding row (``padding_idx``)
receives no gradient. ``max_norm`` (the table renormalised in the forward pass) is not
supported.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..factors import DiagonalInputFactors
from .linear import positions_last
from .registry import LayerRule, broadcast_rows, register
from .sparse import SparseRows


def _supported(module: nn.Embedding) -> Optional[str]:
    return None if module.max_norm is None else "Embedding with max_norm (renormalised rows)"


def _inputs(module: nn.Embedding, ids: Tensor) -> Tensor:
    """``(rows, *)`` token ids -> ``(rows, P)``."""
    return ids.reshape(ids.shape[0], -1)


def _length(module: nn.Embedding, ids: Tensor) -> Optional[int]:
    return ids.shape[1] if ids.dim() >= 2 else None


def _mask(module: nn.Embedding, ids: Tensor, out: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    return mask if mask is not None and ids.dim() == 2 else None


def _per_example_grads(module: nn.Embedding, ids: Tensor, g: Tensor) -> dict:
    batch, positions = g.shape[0], g.shape[1]
    ids = broadcast_rows(ids, batch).reshape(-1)
    example = torch.arange(batch, device=g.device).repeat_interleave(positions)
    values = g.reshape(-1, g.shape[-1])
    if module.padding_idx is not None:
        keep = ids != module.padding_idx
        example, ids, values = example[keep], ids[keep], values[keep]
    return {"weight": SparseRows(example, ids, values)}


register(
    nn.Embedding,
    LayerRule(
        "embedding",
        _supported,
        _inputs,
        positions_last,
        _per_example_grads,
        position_mask=_mask,
        mask_length=_length,
        factors=DiagonalInputFactors,
    ),
)
