"""The registry of layer rules, looked up through a module's class hierarchy.

A :class:`LayerRule` holds everything specific to one layer type; estimation and
consolidation only call it. A call of a layer is turned into *positions*: the rows of
the weight-sharing dimensions (tokens, conv positions) flattened into one axis ``P``.

* ``inputs(module, x)``: ``(rows, P, d_in)`` layer inputs ``a`` without the homogeneous
  coordinate (Embedding: token ids ``(rows, P)``).
* ``output_grads(module, g)``: ``(B, P, d_out)`` gradients w.r.t. the layer output.
* ``position_mask(module, x, out, mask)``: ``(rows, P)`` booleans (True = real token) or
  None, from the ``(rows, T)`` padding mask found for the call.
* ``mask_length(module, x)``: the length ``T`` of the token axis of the input ``x`` (to
  look a padding mask up), or None when no token mask applies.
* ``per_example_grads(module, a, g)``: ``{attribute: (B, *param.shape)}`` (Embedding:
  sparse rows, :class:`~.sparse.SparseRows`).
* ``squared_grads`` (optional): ``Σ_n (per-example gradient)²`` without keeping the
  per-example tensor.
* ``factors``: the :class:`~kfac_tutorial.curvature.factors.LayerFactors` type of the
  layer (its factor structure and algebra), or None for a diagonal-only rule
  (LayerNorm); ``kind`` names it in state files.
* ``weight``, ``bias``: the attribute names of the factored matrix and its bias
  (``"weight"``, ``"bias"``; ``nn.MultiheadAttention``: ``"in_proj_weight"``, ...).
* ``attach(module, site)``: how the recorder sees a call (default: a forward hook that
  calls ``site.record``); returns a handle with ``remove()``. A layer that applies its
  matrix functionally inside a larger forward (``nn.MultiheadAttention``) attaches
  differently: while recorded it computes through an equivalent path that hands the
  matrix's call to ``site.record`` (see :class:`CallSite`).
* ``combine_streams`` (optional): for a rule whose matrix sees several inputs in one call
  (cross-attention's in-projection: queries and memory), ``attach`` records one call per
  input with ``site.record(..., stream=s)``, ``s > 0``; each stream gets its own factors
  ``(A_s, G_s)`` (normalised as a single-stream layer's), and
  ``combine_streams(module, {s: (A_s, G_s)}, weight, bias)`` builds the layer's
  :class:`~kfac_tutorial.curvature.factors.LayerFactors` from them.

Lookup walks ``type(module).__mro__``: ``class MyLinear(nn.Linear)`` gets the Linear
rule. A type may be registered by its qualified name (``"transformers.pytorch_utils.
Conv1D"``) so that the package never imports the library that defines it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, Optional, Protocol, Union

import torch
from torch import Tensor, nn

from ..factors import FACTOR_TYPES, LayerFactors


class CallSite(Protocol):
    """What the recorder offers a rule's ``attach`` for one recorded module."""

    active: bool  # False while the recorder is paused (then record nothing, change nothing)

    def record(self, module: nn.Module, args: tuple, output: Tensor, stream: int = 0) -> Optional[Tensor]:
        """One call: ``args[0]`` the input ``(rows, ..., d_in)``, ``output`` the matrix's
        graph-connected output. Forward-hook signature: returns a replacement output to
        hand on (an expanded view, see :mod:`..capture`) or None. ``stream`` (> 0): one
        of several inputs of one call, factored separately (``LayerRule.combine_streams``)."""

    def refuse(self, module: nn.Module, reason: str) -> None:
        """A call the rule cannot explain (its matrix's gradient gets no recorded
        contribution); the fit falls back to a diagonal for the module, naming ``reason``."""

    def padding(self, mask: Optional[Tensor]) -> ContextManager:
        """While open, ``mask`` ``(rows, T)`` (True = real token) is the innermost padding
        mask of calls inside (like an ``attention_mask`` keyword)."""


def forward_hook(module: nn.Module, site: CallSite):
    """``attach`` of a layer whose forward call is the matrix's call: a forward hook."""
    return module.register_forward_hook(site.record)


def _no_mask(module, x, out, mask):
    return None


def _no_length(module, x):
    return None


@dataclass(frozen=True)
class LayerRule:
    """How one layer type contributes curvature (see the module docstring).

    ``supports(module)`` returns None when the rule handles this instance, else the
    reason it does not (named in the fit's fallback warning)."""

    kind: Optional[str]
    supports: Callable[[nn.Module], Optional[str]]
    inputs: Callable[[nn.Module, Tensor], Tensor]
    output_grads: Callable[[nn.Module, Tensor], Tensor]
    per_example_grads: Callable[[nn.Module, Tensor, Tensor], dict]
    position_mask: Callable[[nn.Module, Tensor, Tensor, Optional[Tensor]], Optional[Tensor]] = _no_mask
    mask_length: Callable[[nn.Module, Tensor], Optional[int]] = _no_length
    squared_grads: Optional[Callable[[nn.Module, Tensor, Tensor, torch.dtype], dict]] = None
    factors: Optional[type[LayerFactors]] = None
    weight: str = "weight"
    bias: str = "bias"
    attach: Callable[[nn.Module, CallSite], object] = forward_hook
    combine_streams: Optional[Callable[[nn.Module, dict, str, Optional[str]], LayerFactors]] = None

    def weight_of(self, module: nn.Module) -> Optional[Tensor]:
        """The factored matrix of ``module`` (None if it has none)."""
        return getattr(module, self.weight, None)

    def bias_of(self, module: nn.Module) -> Optional[Tensor]:
        """The bias of the factored matrix (None if it has none)."""
        return getattr(module, self.bias, None)


RULES: dict[Union[type, str], LayerRule] = {}


def register(layer_type: Union[type, str], rule: LayerRule) -> None:
    """Register (or replace) the rule for ``layer_type`` (a class, or its qualified name)
    and, for a Kronecker rule, its factor type under ``rule.kind``."""
    if (rule.kind is None) != (rule.factors is None):
        raise ValueError("a rule has both a kind and a factor type (Kronecker) or neither (diagonal only)")
    RULES[layer_type] = rule
    if rule.kind is not None:
        FACTOR_TYPES[rule.kind] = rule.factors


def lookup(module: nn.Module) -> Optional[LayerRule]:
    """The rule registered for the nearest class in ``type(module).__mro__``, or None."""
    for cls in type(module).__mro__:
        rule = RULES.get(cls) or RULES.get(f"{cls.__module__}.{cls.__qualname__}")
        if rule is not None:
            return rule
    return None


def rule_for(module: nn.Module) -> Optional[LayerRule]:
    """The rule for ``module`` if it supports this instance, else None."""
    rule = lookup(module)
    return rule if rule is not None and rule.supports(module) is None else None


def why_no_rule(module: nn.Module) -> str:
    """Why :func:`rule_for` gives no rule for ``module`` (for the fallback warning)."""
    rule = lookup(module)
    if rule is None:
        return f"no curvature rule for {type(module).__name__}"
    return rule.supports(module) or "supported"


def always(module: nn.Module) -> Optional[str]:
    """``supports`` of a rule that handles every instance."""
    return None


def broadcast_rows(a: Tensor, batch: int) -> Tensor:
    """``(1, ...)`` → ``(batch, ...)`` (a view); any other leading size unchanged."""
    return a if a.shape[0] == batch else a.expand(batch, *a.shape[1:])


def token_mask(x: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    """A ``x.shape[:2]`` mask broadcast over further position dims of ``x`` -> ``(rows, P)``."""
    if mask is None:
        return None
    extra = x.shape[2:-1]
    m = mask.reshape(*mask.shape, *([1] * len(extra))).expand(*mask.shape, *extra)
    return m.reshape(mask.shape[0], -1)
