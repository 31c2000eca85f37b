"""Character CNN linker, trained from scratch.

Encoder: character embedding → ``layers`` × (Conv1d, ReLU), each 'same'-length so that
output position t lines up with character t and the (B, T) attention mask → masked
pooling (max by default) → Linear to ``dim``. Padding positions are zeroed before every
convolution, so a padded mention encodes exactly like the unpadded one.
"""

from __future__ import annotations

import torch
from torch import nn

from .bi_encoder import BiEncoderLinker
from .concept_table import ConceptInventory, GrowingTableLinker, Linker
from .pooling import masked_max, masked_mean
from .tokenisation import CharTokenizer

__all__ = ["CharCNNEncoder", "cnn_linker"]


class CharCNNEncoder(nn.Module):
    """(B, T) character ids + (B, T) mask → (B, dim)."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 64,
        channels: int = 256,
        kernel_size: int = 3,
        layers: int = 2,
        dim: int = 256,
        pooling: str = "max",
        dropout: float = 0.0,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd ('same'-length convolutions)")
        if pooling not in ("max", "mean"):
            raise ValueError(f"pooling must be 'max' or 'mean', got {pooling!r}")
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.convs = nn.ModuleList(
            nn.Conv1d(embed_dim if i == 0 else channels, channels, kernel_size, padding=kernel_size // 2) for i in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(channels, dim)
        self.pooling = pooling
        self.dim = dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **unused) -> torch.Tensor:
        mask = attention_mask.unsqueeze(1).to(torch.get_default_dtype())  # (B, 1, T)
        x = self.embed(input_ids).transpose(1, 2)  # (B, E, T)
        for conv in self.convs:
            x = torch.relu(conv(x * mask))
        x = self.dropout(x.transpose(1, 2))  # (B, T, channels)
        pool = masked_max if self.pooling == "max" else masked_mean
        return self.proj(pool(x, attention_mask))


def cnn_linker(
    inventory: ConceptInventory,
    *,
    setting: str = "growing",
    max_length: int = 48,
    scale: float = 5.0,
    seed: int | None = None,
    **encoder_kwargs,
) -> Linker:
    """A character-CNN linker over ``inventory`` (all concepts of all tasks).

    ``setting="growing"`` (main: one concept table that grows with tasks) or
    ``"per_task"`` (contrast: bi-encoder against each task's own names).
    ``seed`` makes the random initialisation reproducible.
    """
    if seed is not None:
        torch.manual_seed(seed)
    tokenizer = CharTokenizer(max_length=max_length)
    encoder = CharCNNEncoder(tokenizer.vocab_size, **encoder_kwargs)
    return _make_linker(setting, encoder, tokenizer, inventory, scale)


def _make_linker(setting, encoder, tokenizer, inventory, scale) -> Linker:
    if setting == "growing":
        return GrowingTableLinker(encoder, tokenizer, inventory, scale=scale)
    if setting == "per_task":
        return BiEncoderLinker(encoder, tokenizer, inventory, scale=scale)
    raise ValueError(f"unknown setting {setting!r}; valid: 'growing', 'per_task'")
