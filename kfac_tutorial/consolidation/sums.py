"""Per-task sums of consolidation terms, each around its own anchor (exact; memory grows
with the number of tasks).

``penalty = Σ_k ½ (θ − θ*_k)ᵀ F̂_k (θ − θ*_k)``; ``to_dense`` is ``Σ_k F̂_k``. This
module imports no state class: its terms are found by kind in :mod:`.registry`.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

from torch import Tensor, nn

from .. import __version__
from ..persistence import PathLike, StateFileError, read_state, write_state
from .registry import state_type


class ConsolidationSum:
    """Per-task sum of consolidation terms (``ewc_a + ewc_b``, ``kfac_a + kfac_b``)."""

    kind: ClassVar[str] = "sum"

    def __init__(self, terms: Sequence):
        self.terms = list(terms)

    def __add__(self, other):
        if isinstance(other, ConsolidationSum):
            return ConsolidationSum(self.terms + other.terms)
        if hasattr(other, "penalty") and hasattr(other, "anchor"):  # a single state
            return ConsolidationSum(self.terms + [other])
        return NotImplemented

    def __radd__(self, other):
        if other == 0:
            return self
        return NotImplemented

    def __len__(self) -> int:
        return len(self.terms)

    def __iter__(self):
        return iter(self.terms)

    def penalty(self, model: nn.Module) -> Tensor:
        """Sum of the terms' penalties (differentiable)."""
        return sum(t.penalty(model) for t in self.terms)

    def to_dense(self, model: nn.Module) -> Tensor:
        """Sum of the terms' dense matrices."""
        return sum(t.to_dense(model) for t in self.terms)

    def memory_bytes(self) -> int:
        """Curvature bytes of all terms."""
        return sum(t.memory_bytes() for t in self.terms)

    def anchor_bytes(self) -> int:
        return sum(t.anchor_bytes() for t in self.terms)

    def __repr__(self) -> str:
        return f"ConsolidationSum({self.terms!r})"

    def save(self, path: PathLike) -> None:
        """Write every term into one state file (atomically)."""
        tensors, metas = {}, []
        for i, term in enumerate(self.terms):
            tensors.update(term._tensors(prefix=f"term{i}/"))
            metas.append(term._meta())
        write_state(path, tensors, {"kind": self.kind, "package_version": __version__, "terms": metas})

    @classmethod
    def load(cls, path: PathLike, model: nn.Module) -> "ConsolidationSum":
        tensors, meta = read_state(path, device=_device_of(model))
        if meta.get("kind") != cls.kind:
            raise StateFileError(f"{path} holds a {meta.get('kind')!r} state, not a sum; use kfac_tutorial.load()")
        return cls._from(tensors, meta, model, str(path))

    @classmethod
    def _from(cls, tensors, meta, model, source):
        terms = []
        for i, term_meta in enumerate(meta["terms"]):
            kind = state_type(term_meta.get("kind"), source, f"term {i}")
            terms.append(kind._from_tensors(tensors, term_meta, model, f"term{i}/", source))
        return cls(terms)


def _device_of(model: nn.Module):
    for p in model.parameters():
        return p.device
    return "cpu"
