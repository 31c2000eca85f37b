"""Per-layer rules: how a layer type's inputs and output gradients become curvature.

A small registry keyed by layer type (in the spirit of f-dangel/kfac-tutorial). A rule
turns one recorded call into *positions*: the rows of the weight-sharing dimensions
(tokens, conv positions) flattened into one axis ``P``.

* ``inputs(module, x)``: ``(rows, P, d_in)`` layer inputs ``a`` (Embedding: token ids
  ``(rows, P)``), without the homogeneous coordinate.
* ``output_grads(module, g)``: ``(B, P, d_out)`` gradients w.r.t. the layer output.
* ``position_mask(module, call)``: ``(rows, P)`` booleans (True = real token) or None.
* ``per_example_grads(module, a, g)``: per-example parameter gradients
  ``{attribute: (B, *param.shape)}`` (Embedding: sparse rows, see :class:`SparseRows`).

Rules with a ``kind`` also have Kronecker factors (see :mod:`.kfac`): the weight
reshaped to a matrix ``W`` (``(d_out, d_in)`` for Linear/Conv1d, ``(V, D)`` for
Embedding) has per-example gradient ``Σ_s g_s a_sᵀ`` (Linear, Conv1d) or
``Σ_s e_{id_s} g_sᵀ`` (Embedding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


@dataclass(frozen=True)
class LayerRule:
    """How one layer type contributes curvature. ``kind`` is None for diagonal-only rules."""

    kind: Optional[str]
    supports: Callable[[nn.Module], bool]
    inputs: Callable[[nn.Module, Tensor], Tensor]
    output_grads: Callable[[nn.Module, Tensor], Tensor]
    position_mask: Callable[[nn.Module, Tensor, Tensor, Optional[Tensor]], Optional[Tensor]]
    per_example_grads: Callable[[nn.Module, Tensor, Tensor], dict]
    # optional: ``(module, a, g, dtype) -> {attribute: Σ_n (per-example gradient)²}`` in
    # ``dtype``, the same numbers as squaring ``per_example_grads`` but without keeping
    # them (used when a parameter has one call per forward pass)
    squared_grads: Optional[Callable[[nn.Module, Tensor, Tensor, torch.dtype], dict]] = None


RULES: dict[type, LayerRule] = {}


def register(layer_type: type, rule: LayerRule) -> None:
    """Register (or replace) the rule for ``layer_type``."""
    RULES[layer_type] = rule


def rule_for(module: nn.Module) -> Optional[LayerRule]:
    """The rule for ``module``'s exact type if it supports this instance, else None."""
    rule = RULES.get(type(module))
    return rule if rule is not None and rule.supports(module) else None


def _broadcast(a: Tensor, batch: int) -> Tensor:
    return a if a.shape[0] == batch else a.expand(batch, *a.shape[1:])


# --- Linear: treat every leading dimension after the first as a position ---------------------
def _linear_inputs(module: nn.Linear, x: Tensor) -> Tensor:
    """``(rows, *, d_in)`` -> ``(rows, P, d_in)``."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _linear_output_grads(module: nn.Linear, g: Tensor) -> Tensor:
    """``(B, *, d_out)`` -> ``(B, P, d_out)``."""
    return g.reshape(g.shape[0], -1, g.shape[-1])


def _token_mask(x: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    """Mask of shape ``x.shape[:2]`` broadcast over further position dims -> ``(rows, P)``."""
    if mask is None:
        return None
    extra = x.shape[2:-1]
    m = mask.reshape(*mask.shape, *([1] * len(extra))).expand(*mask.shape, *extra)
    return m.reshape(mask.shape[0], -1)


def _linear_mask(module: nn.Linear, x: Tensor, out: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    return _token_mask(x, mask) if x.dim() >= 3 else None


def _matrix_per_example_grads(module: nn.Module, a: Tensor, g: Tensor) -> dict:
    """Per-example ``Σ_s g_s a_sᵀ`` (weight, reshaped to the parameter) and ``Σ_s g_s`` (bias)."""
    a = _broadcast(a, g.shape[0])
    grads = {"weight": torch.einsum("bpo,bpi->boi", g, a).reshape(g.shape[0], *module.weight.shape)}
    if module.bias is not None:
        grads["bias"] = g.sum(1)
    return grads


def _matrix_squared_grads(module: nn.Module, a: Tensor, g: Tensor, dtype: torch.dtype) -> dict:
    """``Σ_n (Σ_s g_s a_sᵀ)²`` (weight) and ``Σ_n (Σ_s g_s)²`` (bias), elementwise, in ``dtype``.

    ``a``: ``(B or 1, P, d_in)``, ``g``: ``(B, P, d_out)``. One position (``P = 1``): the
    square of an outer product is the outer product of squares, ``(g²)ᵀ (a²)``, a single
    matmul with no per-example tensor. Otherwise one example's gradient at a time
    (``(d_out, d_in)``, stays in cache) is squared into the sum with ``addcmul_``:
    ~10× faster on CPU than forming the ``(B, d_out, d_in)`` tensor and reducing it."""
    batch, positions = g.shape[0], g.shape[1]
    a = _broadcast(a, batch)
    out = {}
    if positions == 1:
        g2, a2 = g[:, 0].to(dtype).square(), a[:, 0].to(dtype).square()
        out["weight"] = (g2.T @ a2).reshape(module.weight.shape)
    else:
        w = torch.zeros(g.shape[-1], a.shape[-1], dtype=dtype, device=g.device)
        gt = g.transpose(1, 2)
        for n in range(batch):
            pe = torch.mm(gt[n], a[n]).to(dtype)
            w.addcmul_(pe, pe)
        out["weight"] = w.reshape(module.weight.shape)
    if module.bias is not None:
        out["bias"] = g.sum(1).to(dtype).square().sum(0)
    return out


register(
    nn.Linear,
    LayerRule("linear", lambda m: True, _linear_inputs, _linear_output_grads, _linear_mask, _matrix_per_example_grads,
              _matrix_squared_grads),
)


# --- Conv1d (KFC, Grosse & Martens 2016): positions are output positions, inputs are patches ---
def _conv1d_supported(module: nn.Conv1d) -> bool:
    return module.groups == 1


def _conv1d_inputs(module: nn.Conv1d, x: Tensor) -> Tensor:
    """``(rows, C_in, L)`` -> unfolded patches ``(rows, L_out, C_in * k)``, channel-major
    like ``weight.reshape(C_out, -1)``."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    k, d, stride = module.kernel_size[0], module.dilation[0], module.stride[0]
    # strided windows (a view), the taps of a dilated kernel picked from each window
    windows = x.unfold(2, (k - 1) * d + 1, stride)[..., ::d]  # (rows, C_in, L_out, k)
    return windows.permute(0, 2, 1, 3).reshape(x.shape[0], windows.shape[2], -1)


def _conv1d_output_grads(module: nn.Conv1d, g: Tensor) -> Tensor:
    """``(B, C_out, L_out)`` -> ``(B, L_out, C_out)``."""
    return g.transpose(1, 2)


def _conv1d_mask(module: nn.Conv1d, x: Tensor, out: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    # a token mask applies to output positions only when the convolution keeps the length
    if mask is None or out.shape[-1] != x.shape[-1]:
        return None
    return mask


register(
    nn.Conv1d,
    LayerRule("conv1d", _conv1d_supported, _conv1d_inputs, _conv1d_output_grads, _conv1d_mask, _matrix_per_example_grads,
              _matrix_squared_grads),
)


# --- Embedding: the input is one-hot, so A is diagonal (token counts) -------------------------
def _embedding_supported(module: nn.Embedding) -> bool:
    return module.max_norm is None


def _embedding_inputs(module: nn.Embedding, ids: Tensor) -> Tensor:
    """``(rows, *)`` token ids -> ``(rows, P)``."""
    return ids.reshape(ids.shape[0], -1)


def _embedding_mask(module: nn.Embedding, ids: Tensor, out: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    return mask if mask is not None and ids.dim() == 2 else None


def _embedding_per_example_grads(module: nn.Embedding, ids: Tensor, g: Tensor) -> dict:
    batch, positions = g.shape[0], g.shape[1]
    ids = _broadcast(ids, batch).reshape(-1)
    example = torch.arange(batch, device=g.device).repeat_interleave(positions)
    values = g.reshape(-1, g.shape[-1])
    if module.padding_idx is not None:  # the padding row receives no gradient
        keep = ids != module.padding_idx
        example, ids, values = example[keep], ids[keep], values[keep]
    return {"weight": SparseRows(example, ids, values)}


register(
    nn.Embedding,
    LayerRule("embedding", _embedding_supported, _embedding_inputs, _linear_output_grads, _embedding_mask, _embedding_per_example_grads),
)


# --- LayerNorm: diagonal only ------------------------------------------------------------------
def _layernorm_inputs(module: nn.LayerNorm, x: Tensor) -> Tensor:
    """Normalised input ``x̂`` (no affine part) -> ``(rows, P, prod(normalized_shape))``."""
    xhat = F.layer_norm(x, module.normalized_shape, eps=module.eps)
    d = 1
    for s in module.normalized_shape:
        d *= s
    return xhat.reshape(x.shape[0], -1, d)


def _layernorm_output_grads(module: nn.LayerNorm, g: Tensor) -> Tensor:
    d = 1
    for s in module.normalized_shape:
        d *= s
    return g.reshape(g.shape[0], -1, d)


def _layernorm_per_example_grads(module: nn.LayerNorm, xhat: Tensor, g: Tensor) -> dict:
    """weight: ``Σ_s g_s ⊙ x̂_s``; bias: ``Σ_s g_s``."""
    xhat = _broadcast(xhat, g.shape[0])
    shape = (g.shape[0], *module.normalized_shape)
    grads = {}
    if module.weight is not None:
        grads["weight"] = (g * xhat).sum(1).reshape(shape)
    if module.bias is not None:
        grads["bias"] = g.sum(1).reshape(shape)
    return grads


register(
    nn.LayerNorm,
    LayerRule(
        None,
        lambda m: True,
        _layernorm_inputs,
        _layernorm_output_grads,
        lambda m, x, out, mask: None,
        _layernorm_per_example_grads,
    ),
)
