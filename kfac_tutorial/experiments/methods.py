"""The methods of the sequential experiments, as data: one :class:`MethodSpec` each.

=============  =======  ======  ====================================================
method         family   online  what it does after task 0
=============  =======  ======  ====================================================
finetune       –        –       plain training on each task (the forgetting baseline)
ewc            ewc      no      ``Σ_{j<t} ½ Δθ_jᵀ diag(F̂_j) Δθ_j``, one anchor per task
kfac           kfac     no      the same with KFAC blocks (table diagonal)
ewc_online     ewc      yes     one penalty, ``F ← γ F_old + F_new`` at the newest anchor
kfac_online    kfac     yes     the same with KFAC factors (``KFAC.merge``)
l2             l2       no      ``Σ_{j<t} ½ ‖Δθ_j‖²`` over the encoder and the seen table
                                rows (isotropic: curvature replaced by the identity)
frozen         –        –       encoder frozen after task 0; only new table rows train
joint          –        –       training on the union of tasks 0..t (upper reference)
=============  =======  ======  ====================================================

Methods with a ``family`` are swept over λ (the family's grid of the profile).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

__all__ = ["L2Anchor", "METHOD_SPECS", "METHODS", "MethodSpec", "frozen_encoder", "method_spec"]


@dataclass(frozen=True)
class MethodSpec:
    """One method: ``family`` (``"ewc"``, ``"kfac"``, ``"l2"`` or None: no penalty),
    ``online`` (one merged penalty instead of a per-task sum), ``data`` (``"task"``: the
    current task's training mentions; ``"union"``: every task so far) and
    ``freeze_encoder`` (after task 0 only the new concepts' table rows train)."""

    name: str
    family: str | None = None
    online: bool = False
    data: str = "task"
    freeze_encoder: bool = False

    @property
    def swept(self) -> bool:
        """Whether λ is swept (a penalty method)."""
        return self.family is not None


METHOD_SPECS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        MethodSpec("finetune"),
        MethodSpec("ewc", "ewc"),
        MethodSpec("kfac", "kfac"),
        MethodSpec("ewc_online", "ewc", online=True),
        MethodSpec("kfac_online", "kfac", online=True),
        MethodSpec("l2", "l2"),
        MethodSpec("frozen", freeze_encoder=True),
        MethodSpec("joint", data="union"),
    )
}
METHODS = tuple(METHOD_SPECS)


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; a clear error listing the valid names."""
    try:
        return METHOD_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}") from None


def _table_name(model: nn.Module) -> str | None:
    return "table.weight" if "table.weight" in dict(model.named_parameters()) else None


class L2Anchor:
    """Isotropic penalty ``½ Σ_j ‖m ⊙ (θ − θ*_j)‖²`` around one anchor per task.

    ``m`` masks the concept table to the rows of concepts seen at fit time (a row not yet
    trained is no memory to keep); every other trainable parameter is held. ``a + b``
    is the per-task sum; ``a.merge(b, gamma)`` the online form (``γ`` times the old sum
    plus the new one; with one anchor each this keeps the anchors separately).
    """

    kind = "l2"

    def __init__(self, terms: list[tuple[float, dict[str, torch.Tensor], dict[str, torch.Tensor]]]):
        self.terms = terms  # (weight, anchor, mask)

    @classmethod
    @torch.no_grad()
    def fit(cls, model: nn.Module) -> "L2Anchor":
        anchor, mask = {}, {}
        table = _table_name(model)
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            anchor[name] = p.detach().clone()
            if name == table and hasattr(model, "seen"):
                mask[name] = model.seen.to(p.dtype)[:, None].expand_as(p).clone()
        return cls([(1.0, anchor, mask)])

    def penalty(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        total = None
        for weight, anchor, mask in self.terms:
            for name, a in anchor.items():
                d = params[name] - a
                if name in mask:
                    d = d * mask[name]
                term = weight * d.square().sum()
                total = term if total is None else total + term
        if total is None:
            return next(model.parameters()).new_zeros(())
        return 0.5 * total

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self.penalty(model)

    def __add__(self, other: "L2Anchor") -> "L2Anchor":
        return L2Anchor(self.terms + other.terms)

    def merge(self, new: "L2Anchor", gamma: float = 1.0) -> "L2Anchor":
        return L2Anchor([(gamma * w, a, m) for w, a, m in self.terms] + new.terms)

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, a, m in self.terms for t in list(a.values()) + list(m.values()))


@contextmanager
def frozen_encoder(model: nn.Module, trainable_rows: torch.Tensor | None) -> Iterator[None]:
    """Inside: every parameter but the concept table has ``requires_grad=False`` and the
    table's gradient is zeroed outside ``trainable_rows`` (a (C,) bool mask), so that a
    fresh AdamW without weight decay leaves the frozen values bit for bit unchanged."""
    table = _table_name(model)
    params = dict(model.named_parameters())
    was = {n: p.requires_grad for n, p in params.items()}
    handle = None
    try:
        for n, p in params.items():
            if n != table:
                p.requires_grad_(False)
        if table is not None and trainable_rows is not None:
            keep = trainable_rows.to(params[table].device, params[table].dtype)[:, None]
            handle = params[table].register_hook(lambda g: g * keep)
        yield
    finally:
        if handle is not None:
            handle.remove()
        for n, p in params.items():
            p.requires_grad_(was[n])
