"""Loading any state file: dispatch on the kind it records (EWC, KFAC or a per-task sum)."""

from __future__ import annotations

from typing import Union

from torch import nn

from ..persistence import PathLike, read_state
from .base import device_of
from .ewc import EWC
from .kfac import KFAC
from .registry import state_type
from .sums import ConsolidationSum


def load(path: PathLike, model: nn.Module) -> Union[EWC, KFAC, ConsolidationSum]:
    """Load any state file (EWC, KFAC or a per-task sum) and check it against ``model``."""
    tensors, meta = read_state(path, device=device_of(model))
    kind = meta.get("kind")
    if kind == ConsolidationSum.kind:
        return ConsolidationSum._from(tensors, meta, model, str(path))
    return state_type(kind, str(path), "the state")._from_tensors(tensors, meta, model, "", str(path))
