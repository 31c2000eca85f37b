"""Convolutions (KFC, Grosse & Martens 2016): positions are output positions, inputs are
the unfolded patches, laid out channel-major like ``weight.reshape(C_out, -1)``.

``Conv1d``: ``(rows, C_in, L)`` -> patches ``(rows, L_out, C_in k)``; a token mask
applies when the convolution keeps the length. ``Conv2d``: ``(rows, C_in, H, W)`` ->
``(rows, H_out W_out, C_in k_h k_w)``; no token mask (images). Grouped convolutions
fall back to a diagonal Fisher.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ..factors import LayerFactors
from .linear import matrix_per_example_grads, matrix_squared_grads
from .registry import LayerRule, register


def _ungrouped(module: nn.Module) -> Optional[str]:
    return None if module.groups == 1 else f"grouped convolution (groups={module.groups})"


def _padded(module: nn.Module, x: Tensor) -> Tensor:
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, module._reversed_padding_repeated_twice, mode=mode)


def channels_last(module: nn.Module, g: Tensor) -> Tensor:
    """Output gradients ``(B, C_out, *spatial)`` -> ``(B, P, C_out)``."""
    return g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)


# --- Conv1d ------------------------------------------------------------------------------
def _conv1d_inputs(module: nn.Conv1d, x: Tensor) -> Tensor:
    """``(rows, C_in, L)`` -> unfolded patches ``(rows, L_out, C_in * k)``."""
    x = _padded(module, x)
    k, d, stride = module.kernel_size[0], module.dilation[0], module.stride[0]
    # strided windows (a view), the taps of a dilated kernel picked from each window
    windows = x.unfold(2, (k - 1) * d + 1, stride)[..., ::d]  # (rows, C_in, L_out, k)
    return windows.permute(0, 2, 1, 3).reshape(x.shape[0], windows.shape[2], -1)


def _conv1d_output_grads(module: nn.Conv1d, g: Tensor) -> Tensor:
    """``(B, C_out, L_out)`` -> ``(B, L_out, C_out)``."""
    return g.transpose(1, 2)


def _conv1d_length(module: nn.Conv1d, x: Tensor) -> Optional[int]:
    return x.shape[-1] if x.dim() >= 3 else None


def _conv1d_mask(module: nn.Conv1d, x: Tensor, out: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    if mask is None or out.shape[-1] != x.shape[-1]:
        return None
    return mask


register(
    nn.Conv1d,
    LayerRule(
        "conv1d",
        _ungrouped,
        _conv1d_inputs,
        _conv1d_output_grads,
        matrix_per_example_grads,
        position_mask=_conv1d_mask,
        mask_length=_conv1d_length,
        squared_grads=matrix_squared_grads,
        factors=LayerFactors,
    ),
)


# --- Conv2d ------------------------------------------------------------------------------
def _conv2d_inputs(module: nn.Conv2d, x: Tensor) -> Tensor:
    """``(rows, C_in, H, W)`` -> patches ``(rows, H_out W_out, C_in k_h k_w)``."""
    patches = F.unfold(_padded(module, x), module.kernel_size, dilation=module.dilation, stride=module.stride)
    return patches.transpose(1, 2)


register(
    nn.Conv2d,
    LayerRule(
        "conv2d",
        _ungrouped,
        _conv2d_inputs,
        channels_last,
        matrix_per_example_grads,
        squared_grads=matrix_squared_grads,
        factors=LayerFactors,
    ),
)
