"""LayerNorm: a diagonal Fisher only (its parameters are small vectors).

With ``x̂`` the normalised input (no affine part), the per-example gradients are
``Σ_s g_s ⊙ x̂_s`` (weight) and ``Σ_s g_s`` (bias).
"""

from __future__ import annotations

from torch import Tensor, nn
import torch.nn.functional as F

from .linear import token_axis_length
from .registry import LayerRule, always, broadcast_rows, register


def _width(module: nn.LayerNorm) -> int:
    d = 1
    for s in module.normalized_shape:
        d *= s
    return d


def _inputs(module: nn.LayerNorm, x: Tensor) -> Tensor:
    """Normalised input ``x̂`` -> ``(rows, P, prod(normalized_shape))``."""
    xhat = F.layer_norm(x, module.normalized_shape, eps=module.eps)
    return xhat.reshape(x.shape[0], -1, _width(module))


def _output_grads(module: nn.LayerNorm, g: Tensor) -> Tensor:
    return g.reshape(g.shape[0], -1, _width(module))


def _per_example_grads(module: nn.LayerNorm, xhat: Tensor, g: Tensor) -> dict:
    xhat = broadcast_rows(xhat, g.shape[0])
    shape = (g.shape[0], *module.normalized_shape)
    grads = {}
    if module.weight is not None:
        grads["weight"] = (g * xhat).sum(1).reshape(shape)
    if module.bias is not None:
        grads["bias"] = g.sum(1).reshape(shape)
    return grads


register(nn.LayerNorm, LayerRule(None, always, _inputs, _output_grads, _per_example_grads, mask_length=token_axis_length))
