"""Masked pooling of a sequence of vectors into one vector per example."""

from __future__ import annotations

import torch

__all__ = ["masked_mean", "masked_max"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) vectors and a (B, T) 0/1 mask → (B, D) mean over unmasked positions."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) vectors and a (B, T) 0/1 mask → (B, D) max over unmasked positions."""
    fill = torch.finfo(x.dtype).min
    return x.masked_fill(mask.unsqueeze(-1) == 0, fill).amax(1)
