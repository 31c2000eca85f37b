"""The concept inventory and the main linker: one concept table that grows with tasks.

Main setting of the book. A mention is encoded to a unit vector ``m`` (times a fixed
scale ``s``, 5 by default: see :mod:`kfac_tutorial.experiments.profiles`); the logits
are ``table(s·m)``: one row per concept, a plain
``nn.Linear(D, C, bias=False)`` so that the curvature core sees an ordinary layer
(input ``a = s·m``, output gradient ``g = p − y``).

* The table has a row for every concept of every task (the union inventory), but a
  row only takes part in the softmax once its task has arrived: ``seen`` concepts.
  Unseen logits are set to ``MASKED_LOGIT`` in training and in the Fisher, so that
  ``p_c = 0`` exactly, their gradient is exactly zero (Adam leaves them alone) and
  their rows and columns of the Kronecker factor ``G`` are exactly zero (no penalty).
* When a task brings new concepts, their rows are initialised from the encoded
  preferred name, centred (``normalize(e_name − mean of all names' e)``), so that at
  first the logit is ``s·cos``.
* Evaluation scores against the fixed candidate set (every concept of every task,
  ``score_all``): rows not yet trained are refreshed from their names with the current
  encoder first (``refresh_unseen_rows``). A later row of the accuracy matrix is
  therefore not harder because the inventory grew: it is the same candidate set.
* Negatives: the full softmax over every seen concept, in training and in the Fisher
  (no sampling), so that the loss the Fisher describes is the loss that is trained.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConceptInventory", "Linker", "GrowingTableLinker", "MASKED_LOGIT"]

MASKED_LOGIT = -1.0e4  # exp(-1e4) underflows to exactly 0 in float32 and float64


class ConceptInventory:
    """An ordered set of concepts: ``ids[i]`` has preferred name ``names[i]``; row i."""

    def __init__(self, ids: Sequence[str], names: Sequence[str]):
        if len(ids) != len(names):
            raise ValueError(f"{len(ids)} ids but {len(names)} names")
        self.ids = list(ids)
        self.names = list(names)
        self.index = {cid: i for i, cid in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError("concept ids must be unique")

    @classmethod
    def from_concepts(cls, concepts: dict) -> "ConceptInventory":
        """From a dict id → preferred name (insertion order)."""
        return cls(list(concepts), list(concepts.values()))

    @classmethod
    def union(cls, tasks: Iterable) -> "ConceptInventory":
        """Every concept of every task, in task order (a concept in two tasks is one row;
        its first name wins)."""
        merged: dict = {}
        for task in tasks:
            for cid, name in task.concepts.items():
                merged.setdefault(cid, name)
        return cls.from_concepts(merged)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: Iterable[str]) -> torch.Tensor:
        return torch.tensor([self.index[c] for c in ids], dtype=torch.long)


class Linker(nn.Module):
    """Shared part of every linker: ``encoder(**inputs)`` → (B, D), then unit norm.

    ``inputs`` is the dict from ``tokenizer(texts)``; the whole dict (attention mask
    included) is passed to the encoder submodule as keyword arguments.
    """

    setting = "?"

    def __init__(self, encoder: nn.Module, tokenizer, scale: float = 5.0):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.scale = float(scale)

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def embed(self, inputs: dict) -> torch.Tensor:
        """Dict of (B, T) tensors → (B, D) unit vectors."""
        return F.normalize(self.encoder(**inputs), dim=-1)

    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings → (N, D) unit vectors, in eval mode (no dropout); mode restored."""
        was_training = self.training
        self.eval()
        out = []
        dev = self.device()
        for i in range(0, len(texts), batch_size):
            inputs = {k: v.to(dev) for k, v in self.tokenizer(texts[i : i + batch_size]).items()}
            out.append(self.embed(inputs))
        self.train(was_training)
        if not out:
            return torch.zeros(0, self.dim, device=dev)
        return torch.cat(out)


class GrowingTableLinker(Linker):
    """One linker whose concept vocabulary grows with every task (see module docs).

    ``forward(inputs)`` → (B, C) logits over the union inventory; columns of concepts
    not seen yet hold ``MASKED_LOGIT`` unless ``score_all`` is on.
    """

    setting = "growing"

    def __init__(self, encoder: nn.Module, tokenizer, inventory: ConceptInventory, scale: float = 5.0, center_names: bool = True):
        super().__init__(encoder, tokenizer, scale)
        self.inventory = inventory
        self.center_names = center_names
        self.table = nn.Linear(encoder.dim, len(inventory), bias=False)
        self.register_buffer("seen", torch.zeros(len(inventory), dtype=torch.bool))
        self.score_all = False

    def forward(self, inputs: dict) -> torch.Tensor:
        logits = self.table(self.scale * self.embed(inputs))
        if not self.score_all:
            logits = logits.masked_fill(~self.seen, MASKED_LOGIT)
        return logits

    @torch.no_grad()
    def init_rows_from_names(self, rows: torch.Tensor) -> None:
        """Set table rows to the encoded preferred names of their concepts, centred.

        Row c = normalize(e_c − μ), e_c = unit encoding of name c and μ = the mean of
        the encodings of every name in the inventory (current encoder). Encoders are
        anisotropic (every pair of strings has a high cosine); without the centring an
        untrained row scores high against any mention and steals it from the trained
        rows in the fixed-candidate evaluation."""
        rows = rows.tolist()
        if rows:
            if self.center_names:
                every = self.embed_texts(self.inventory.names)
                vecs = F.normalize(every[rows] - every.mean(0), dim=-1)
            else:
                vecs = self.embed_texts([self.inventory.names[r] for r in rows])
            self.table.weight[rows] = vecs.to(self.table.weight.dtype)

    def begin_task(self, concept_ids: Iterable[str]) -> None:
        """A task arrives: its new concepts get name-initialised rows and join the softmax."""
        rows = self.inventory.rows(concept_ids).to(self.seen.device)
        new = rows[~self.seen[rows]]
        self.init_rows_from_names(new)
        self.seen[new] = True

    @torch.no_grad()
    def refresh_unseen_rows(self) -> None:
        """Re-initialise every not-yet-trained row from its name with the current encoder."""
        self.init_rows_from_names(torch.nonzero(~self.seen).flatten())

    def columns(self, concept_ids: Iterable[str]) -> torch.Tensor:
        """Concept ids → logit columns."""
        return self.inventory.rows(concept_ids)

    @contextmanager
    def scoring(self, concept_ids: Sequence[str] | None = None) -> Iterator[None]:
        """Evaluation against the fixed candidate set (every concept of every task).

        ``concept_ids`` (the evaluated task's concepts) is ignored here: the candidate
        set does not depend on the task."""
        self.refresh_unseen_rows()
        old, self.score_all = self.score_all, True
        try:
            yield
        finally:
            self.score_all = old
