"""Tokenisers that turn mention strings into the dict of tensors a linker takes.

Both return ``{"input_ids": (B, T) long, "attention_mask": (B, T) long, ...}``, padded
to the longest text of the batch (at most ``max_length``). The attention mask is what
the curvature core uses to leave padding positions out of the Kronecker factors, so
every tensor a linker's encoder sees has the same ``(B, T)`` shape.
"""

from __future__ import annotations

import string
from typing import Sequence

import torch

__all__ = ["CharTokenizer", "HFTokenizer"]


class CharTokenizer:
    """Characters to ids: 0 is padding, 1 is an unknown character.

    Text is lower-cased (medical synonyms differ in case far more often than in meaning)
    and cut to ``max_length`` characters.
    """

    alphabet = string.ascii_lowercase + string.digits + " -,.'()/+&%:;[]_#*<>=~"
    pad_id = 0
    unk_id = 1

    def __init__(self, max_length: int = 48):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = max_length
        self._index = {ch: i + 2 for i, ch in enumerate(self.alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 2

    def encode(self, text: str) -> list[int]:
        ids = [self._index.get(ch, self.unk_id) for ch in text.lower()[: self.max_length]]
        return ids or [self.unk_id]

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``texts`` (B strings) → ``input_ids`` and ``attention_mask``, both (B, T)."""
        rows = [self.encode(t) for t in texts]
        width = max((len(r) for r in rows), default=1)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class HFTokenizer:
    """A Hugging Face tokenizer that also returns explicit (B, T) ``token_type_ids``
    and ``position_ids``.

    Explicit per-example position ids matter to the curvature core: a ``(1, T)``
    position tensor would be treated as one input shared by the whole batch.
    """

    def __init__(self, tokenizer, max_length: int = 24):
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``texts`` (B strings) → ``input_ids``, ``attention_mask``,
        ``token_type_ids``, ``position_ids``, each (B, T)."""
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids = enc["input_ids"]
        b, t = ids.shape
        return {
            "input_ids": ids,
            "attention_mask": enc["attention_mask"],
            "token_type_ids": torch.zeros(b, t, dtype=torch.long),
            "position_ids": torch.arange(t).unsqueeze(0).expand(b, t).contiguous(),
        }
