"""Linear layers: ``nn.Linear`` and Hugging Face's ``Conv1D`` (GPT-2's transposed Linear).

Every leading dimension after the first is a position (tokens): an input
``(rows, *, d_in)`` becomes ``(rows, P, d_in)``. The per-example weight gradient is
``Σ_s g_s a_sᵀ`` (``(d_out, d_in)``; ``Conv1D`` stores its transpose ``Σ_s a_s g_sᵀ``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..factors import LayerFactors, TransposedFactors
from .registry import LayerRule, always, broadcast_rows, register, token_mask


def positions_last(module: nn.Module, x: Tensor) -> Tensor:
    """``(rows, *, d)`` -> ``(rows, P, d)``; also the output gradients ``(B, *, d_out)``."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def token_axis_length(module: nn.Module, x: Tensor) -> Optional[int]:
    """A ``(rows, T, ..., d)`` input's token axis is dimension 1."""
    return x.shape[1] if x.dim() >= 3 else None


def tokens_mask(module: nn.Module, x: Tensor, out: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    return token_mask(x, mask) if x.dim() >= 3 else None


def matrix_per_example_grads(module: nn.Module, a: Tensor, g: Tensor, weight: str = "weight", bias: str = "bias") -> dict:
    """Per-example ``Σ_s g_s a_sᵀ`` (the matrix ``module.<weight>``, reshaped to the
    parameter) and ``Σ_s g_s`` (``module.<bias>``, when present)."""
    a = broadcast_rows(a, g.shape[0])
    w = getattr(module, weight)
    grads = {weight: torch.einsum("bpo,bpi->boi", g, a).reshape(g.shape[0], *w.shape)}
    if getattr(module, bias, None) is not None:
        grads[bias] = g.sum(1)
    return grads


def squared_outer_sum(a: Tensor, g: Tensor, dtype: torch.dtype) -> Tensor:
    """``Σ_n (Σ_s g_s a_sᵀ)²`` elementwise, ``(d_out, d_in)``, from ``a`` ``(B or 1, P, d_in)``
    and ``g`` ``(B, P, d_out)``.

    Positions whose output gradient is exactly zero contribute nothing and are skipped
    (a CLS head: only position 0 of the last layer's output gets a gradient; padding).
    When every example has at most one remaining position ``s_n``, the square of an outer
    product is the outer product of squares: one matmul ``(g_{s_n}²)ᵀ (a_{s_n}²)``.
    Otherwise one example's ``(d_out, d_in)`` gradient at a time, over the span of its
    nonzero positions, is squared into the sum (stays in cache; ~10× faster on CPU than
    forming the ``(B, d_out, d_in)`` tensor)."""
    batch, positions = g.shape[0], g.shape[1]
    a = broadcast_rows(a, batch)
    if positions == 1:
        return g[:, 0].to(dtype).square().T @ a[:, 0].to(dtype).square()
    live = g.abs().amax(-1) != 0  # (B, P); faster than (g != 0).any(-1) on CPU
    counts = live.sum(1)
    if int(counts.max()) <= 1:  # at most one position per example: gather it
        rows = torch.arange(batch, device=g.device)
        s = live.to(torch.uint8).argmax(1)  # an example without any: its zero row at 0
        return g[rows, s].to(dtype).square().T @ a[rows, s].to(dtype).square()
    # per example, the span [first, last] of its nonzero positions (a view, no copy)
    idx = torch.arange(positions, device=g.device)
    first = torch.where(live, idx, positions).amin(1).tolist()
    last = torch.where(live, idx, -1).amax(1).tolist()
    w = torch.zeros(g.shape[-1], a.shape[-1], dtype=dtype, device=g.device)
    gt = g.transpose(1, 2)
    for n in range(batch):
        lo, hi = first[n], last[n] + 1
        if hi <= lo:
            continue
        pe = torch.mm(gt[n, :, lo:hi], a[n, lo:hi]).to(dtype)
        w.addcmul_(pe, pe)
    return w


def matrix_squared_grads(
    module: nn.Module, a: Tensor, g: Tensor, dtype: torch.dtype, weight: str = "weight", bias: str = "bias"
) -> dict:
    """``Σ_n`` squared per-example gradients of ``module.<weight>`` (and ``module.<bias>``),
    in ``dtype``."""
    out = {weight: squared_outer_sum(a, g, dtype).reshape(getattr(module, weight).shape)}
    if getattr(module, bias, None) is not None:
        out[bias] = g.sum(1).to(dtype).square().sum(0)
    return out


register(
    nn.Linear,
    LayerRule(
        "linear",
        always,
        positions_last,
        positions_last,
        matrix_per_example_grads,
        position_mask=tokens_mask,
        mask_length=token_axis_length,
        squared_grads=matrix_squared_grads,
        factors=LayerFactors,
    ),
)


# --- Hugging Face Conv1D: y = x W + b with W stored (d_in, d_out) ---------------------------
def _transposed_per_example_grads(module: nn.Module, a: Tensor, g: Tensor) -> dict:
    a = broadcast_rows(a, g.shape[0])
    grads = {"weight": torch.einsum("bpi,bpo->bio", a, g)}
    if module.bias is not None:
        grads["bias"] = g.sum(1)
    return grads


def _transposed_squared_grads(module: nn.Module, a: Tensor, g: Tensor, dtype: torch.dtype) -> dict:
    out = {"weight": squared_outer_sum(a, g, dtype).T}
    if module.bias is not None:
        out["bias"] = g.sum(1).to(dtype).square().sum(0)
    return out


register(
    "transformers.pytorch_utils.Conv1D",
    LayerRule(
        "transposed_linear",
        always,
        positions_last,
        positions_last,
        _transposed_per_example_grads,
        position_mask=tokens_mask,
        mask_length=token_axis_length,
        squared_grads=_transposed_squared_grads,
        factors=TransposedFactors,
    ),
)
