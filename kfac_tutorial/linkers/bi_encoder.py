"""The contrast setting: a bi-encoder scored against each task's own inventory.

Mention and concept names go through the same encoder; the logits are
``s · cos(encoder(mention), encoder(name_c))`` over the candidates of the current task
only. Training and the Fisher use the full softmax over that task's inventory (every
name re-encoded with gradients at each step); evaluation of task k ranks against task
k's inventory. A similarity-pretrained encoder barely forgets in this setting: synonym
tasks hardly conflict when each is ranked only against its own concepts.

The candidate names are held by the model (``set_candidates``), not passed in the
inputs, so that ``model(inputs)`` keeps one (B, ·) dict argument that can be split by
example.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from .concept_table import ConceptInventory, Linker

__all__ = ["BiEncoderLinker"]


class BiEncoderLinker(Linker):
    """``forward(inputs)`` → (B, C_task) logits over the current candidate concepts."""

    setting = "per_task"

    def __init__(self, encoder: nn.Module, tokenizer, inventory: ConceptInventory, scale: float = 5.0):
        super().__init__(encoder, tokenizer, scale)
        self.inventory = inventory
        self.candidate_ids: list[str] = []
        self._candidate_index: dict = {}
        self._candidates: dict[str, torch.Tensor] = {}

    def set_candidates(self, concept_ids: Sequence[str]) -> None:
        ids = list(concept_ids)
        self.candidate_ids = ids
        self._candidate_index = {c: i for i, c in enumerate(ids)}
        names = [self.inventory.names[self.inventory.index[c]] for c in ids]
        dev = self.device()
        self._candidates = {k: v.to(dev) for k, v in self.tokenizer(names).items()}

    def forward(self, inputs: dict) -> torch.Tensor:
        if not self.candidate_ids:
            raise RuntimeError("no candidates: call set_candidates(...) or begin_task(...)")
        mentions = self.embed(inputs)
        names = self.embed(self._candidates)
        return self.scale * mentions @ names.T

    def begin_task(self, concept_ids: Iterable[str]) -> None:
        self.set_candidates(list(concept_ids))

    def columns(self, concept_ids: Iterable[str]) -> torch.Tensor:
        return torch.tensor([self._candidate_index[c] for c in concept_ids], dtype=torch.long)

    @contextmanager
    def scoring(self, concept_ids: Sequence[str] | None = None) -> Iterator[None]:
        """Evaluate against one task's own inventory (``concept_ids``)."""
        old = list(self.candidate_ids)
        if concept_ids is not None:
            self.set_candidates(concept_ids)
        try:
            yield
        finally:
            if old:
                self.set_candidates(old)
