"""``nn.MultiheadAttention``: the packed in-projection as one Linear per group of q/k/v blocks that see one input tensor, the out-projection as a Linear.

PyTorch applies both projections functionally (``F.multi_head_attention_forward``): no
module call shows them to a forward hook. While a fit records, a supported instance
therefore computes through :func:`attention_forward`, the same function written with
its two projections as visible calls (its ``forward`` is overridden on the instance and
restored when the recording ends; nothing else about the module changes):

* in-projection, self-attention (``query is key is value``, input ``x`` ``(N, L, E)``
  batch first): ``[q | k | v] = x W_inᵀ + b_in`` with ``W_in = in_proj_weight``
  ``(3E, E)``. One Linear of output ``3E``: example ``n``'s gradient is
  ``Σ_s g_s a_sᵀ`` with ``a_s = x_s`` and ``g_s = (dq_s, dk_s, dv_s)`` ``(3E,)``, so
  ``in_proj_weight`` (and ``in_proj_bias``) get the Linear factors ``A = E[ā āᵀ]``
  ``(E+1, E+1)``, ``G = E[g gᵀ]`` ``(3E, 3E)`` (kind ``"multihead_attention"``).
* in-projection, cross-attention (distinct tensors): the blocks ``W_q``, ``W_k``, ``W_v``
  (rows ``[0, E)``, ``[E, 2E)``, ``[2E, 3E)``) are grouped by the tensor they see,
  compared by identity (:func:`qkv_groups`; bit masks ``1`` q, ``2`` k, ``4`` v): a
  decoder's ``multihead_attn(x, memory, memory)`` has ``[q], [k, v]``, three distinct
  tensors ``[q], [k], [v]``. Each group ``g`` is recorded as its own call (stream ``g``,
  see ``LayerRule.combine_streams``): input ``x_g`` ``(N, T_g, E)`` (query and key
  lengths may differ), output ``(N, T_g, 3E)`` = its blocks' projections with zeros in
  the other groups' columns, so its output gradient is ``g_s`` on its own rows and the
  Linear rule's per-example gradients, summed over the groups, are exact. Each group
  gets ``A_g = E[ā āᵀ]`` over its own tokens and ``G_g = E[g gᵀ]`` ``(|g|E)²`` over its
  rows, and ``F ≈ ⊕_g G_g ⊗ A_g`` (block diagonal over the groups;
  :class:`~..grouped_factors.QKVGroupFactors`, kind ``"multihead_attention_groups"``,
  dense only). Self-attention is the one group ``[q, k, v]`` and keeps today's factors
  and state-file layout. Cost: each group's ``G`` statistic is summed at the width
  ``3E`` (zeros outside its rows) and cut to its rows at the end, the same cost per token
  as self-attention's.
* ``weight_sharing``: as for self-attention (and any Linear), per group: ``expand``
  averages ``ā āᵀ`` over the group's valid tokens; ``reduce`` takes each example's mean
  ``ā`` over the group's tokens and its sum ``ĝ`` over them.
* The grouping is fixed by the first recorded call of a fit. A later call grouped
  otherwise (one module used for self- and cross-attention) is refused with its reason:
  in the first batch the module falls back to a diagonal (named in the warning;
  ``strict=True`` raises), in a later batch the fit raises.
* out-projection: ``out_proj`` is called as a module on the attention output ``(N, L, E)``
  and gets the ordinary Linear rule.

Positions are tokens. ``key_padding_mask`` (``(N, S)``; bool True, or a float ``-inf``,
marks padding) excludes the padded tokens from the factors of the groups that hold the
keys or values (self-attention: both projections' factors); the query's own group has no
key padding mask (like any Linear, an outer ``attention_mask`` of its shape applies, as
it does to the cross-attention's ``out_proj``). Dropout is the module's (a fit runs in
``eval()``, so none). ``batch_first`` either way.

Not handled exactly, so the module's parameters fall back to a diagonal Fisher with the
reason in the fit's warning (``strict=True`` raises): ``kdim``/``vdim`` other than
``embed_dim``, ``add_bias_kv``, ``add_zero_attn``, a subclass with its own ``forward``
(static, :func:`supports`); and per call: unbatched or nested inputs, a grouping other
than the first call's.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..factors import FACTOR_TYPES, LayerFactors
from ..grouped_factors import ALL, BLOCKS, QKVGroupFactors, group_names
from .linear import matrix_per_example_grads, matrix_squared_grads, positions_last, token_axis_length, tokens_mask
from .registry import CallSite, LayerRule, register

UNBATCHED = "called with an unbatched (2-D) or nested input: no batch axis to take examples from"


def supports(module: nn.Module) -> Optional[str]:
    """None for a configuration :func:`attention_forward` computes exactly, else why not."""
    if type(module).forward is not nn.MultiheadAttention.forward:
        return f"{type(module).__name__} overrides forward, which the explicit path would bypass"
    own = vars(module).get("forward")
    if own is not None and not getattr(own, "explicit_attention", False):  # (ours while recording)
        return "the instance has its own forward, which the explicit path would bypass"
    if not module._qkv_same_embed_dim:
        return "kdim or vdim differs from embed_dim (separate q/k/v projection weights)"
    if module.bias_k is not None or module.bias_v is not None:
        return "add_bias_kv=True (learned key/value rows appended to the sequence)"
    if module.add_zero_attn:
        return "add_zero_attn=True"
    return None


def attention_forward(
    module: nn.MultiheadAttention,
    site: CallSite,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Optional[Tensor] = None,
    need_weights: bool = True,
    attn_mask: Optional[Tensor] = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
    *,
    state: Optional[dict] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """``nn.MultiheadAttention.forward`` (same arguments, same outputs to float noise) for a
    :func:`supports`-ed module, with the in-projection handed to ``site.record`` (one
    call per q/k/v group, see the module docstring) and ``out_proj`` called as a module.
    Anything this path does not cover (including argument errors) runs the stock
    forward. ``state``: kept across the calls of one recording (its ``"groups"``, the
    grouping of the first call); None: a fresh one."""
    state = {} if state is None else state

    def stock():
        return nn.MultiheadAttention.forward(
            module, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )

    if not site.active:
        return stock()
    if query.dim() != 3 or any(t.is_nested for t in (query, key, value)):
        site.refuse(module, UNBATCHED)
        return stock()
    if key.shape != value.shape or key.shape[-1] != module.embed_dim or query.shape[-1] != module.embed_dim:
        return stock()  # the stock forward raises its own error
    bf = module.batch_first
    x_q, x_k, x_v = (t if bf else t.transpose(0, 1) for t in (query, key, value))  # (N, L|S, E)
    n, length, embed = x_q.shape
    src, heads = x_k.shape[1], module.num_heads
    if x_k.shape[0] != n:
        return stock()  # raises: batch sizes differ
    groups = qkv_groups(query, key, value)
    self_attention = groups == (ALL,)
    recorded = state.setdefault("groups", groups) == groups  # the grouping is fixed by the first call
    if not recorded:
        site.refuse(module, regrouped(state["groups"], groups))
    head_dim = embed // heads

    # masks, as F.multi_head_attention_forward canonicalises and merges them: additive floats
    kpm = F._canonical_mask(
        mask=key_padding_mask,
        mask_name="key_padding_mask",
        other_type=F._none_or_dtype(attn_mask),
        other_name="attn_mask",
        target_type=x_q.dtype,
    )
    if is_causal and attn_mask is None:
        return stock()  # raises: the is_causal hint needs attn_mask
    causal = is_causal and kpm is None and not need_weights
    mask = (
        None
        if causal
        else F._canonical_mask(
            mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="", target_type=x_q.dtype, check_other=False
        )
    )
    if mask is not None:
        if mask.dim() == 2 and tuple(mask.shape) == (length, src):
            mask = mask.view(1, 1, length, src)
        elif mask.dim() == 3 and tuple(mask.shape) == (n * heads, length, src):
            mask = mask.view(n, heads, length, src)
        else:
            return stock()  # raises its shape error
    real = None
    if kpm is not None:
        if tuple(kpm.shape) != (n, src):
            return stock()
        kpm4 = kpm.view(n, 1, 1, src)
        mask = kpm4 if mask is None else mask + kpm4
        real = ~torch.isneginf(kpm)  # True = real token

    w, b = module.in_proj_weight, module.in_proj_bias
    if self_attention and recorded:
        with site.padding(real):
            proj = F.linear(x_q, w, b)  # (N, L, 3E)
            replaced = site.record(module, (x_q,), proj)
        proj = proj if replaced is None else replaced
        q, k, v = proj.chunk(3, dim=-1)
    else:
        q, k, v = _grouped_projections(module, site, groups, (x_q, x_k, x_v), real, recorded)
    with site.padding(real if self_attention else None):  # out_proj's tokens are the query's
        q, k, v = (t.reshape(t.shape[0], -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))  # (N, H, ·, D)
        dropout_p = module.dropout if module.training else 0.0
        weights = None
        if need_weights:
            scores = torch.matmul(q * math.sqrt(1.0 / head_dim), k.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask
            weights = scores.softmax(-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            o = torch.matmul(weights, v)
        else:
            o = F.scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal=causal)
        o = o.transpose(1, 2).reshape(o.shape[0], length, embed)  # (N, L, E)
        out = module.out_proj(o)
    if not bf:
        out = out.transpose(0, 1)
    if weights is not None and average_attn_weights:
        weights = weights.mean(1)
    return out, weights


def qkv_groups(query: Tensor, key: Tensor, value: Tensor) -> tuple[int, ...]:
    """The in-projection's blocks grouped by the tensor they see (compared by identity), as
    bit masks (``1`` q, ``2`` k, ``4`` v), the query's group first: self-attention ``(7,)``,
    ``key is value`` (a decoder's cross-attention) ``(1, 6)``, all distinct ``(1, 2, 4)``."""
    groups: list[tuple[Tensor, int]] = []
    for bit, t in ((1, query), (2, key), (4, value)):
        for i, (seen, g) in enumerate(groups):
            if seen is t:
                groups[i] = (seen, g | bit)
                break
        else:
            groups.append((t, bit))
    return tuple(g for _, g in groups)


def regrouped(first: tuple, now: tuple) -> str:
    """The refusal reason of a call grouped otherwise than the recording's first call."""
    return (
        f"called with q/k/v grouped as {group_names(now)} after a call grouped as {group_names(first)} "
        "(e.g. as self-attention and as cross-attention): one set of factors cannot hold both"
    )


def _grouped_projections(
    module: nn.MultiheadAttention, site: CallSite, groups: tuple, xs: tuple, real: Optional[Tensor], record: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``q, k, v`` ``(N, L|S, E)`` by one recorded call per group: group ``g``'s input
    ``x_g`` (its lowest block's tensor) and output ``(N, T_g, 3E)``, its own blocks'
    projections ``x_g W_jᵀ + b_j`` with zeros in the other groups' columns (so the
    gradient w.r.t. it is the group's, and the Linear rule's per-example gradient
    ``Σ_s g_s a_sᵀ`` fills exactly the group's rows). Padding: ``real`` (from
    ``key_padding_mask``) for a group holding k or v, none for the query's own group."""
    w, b = module.in_proj_weight, module.in_proj_bias
    ws = w.chunk(BLOCKS)
    bs = b.chunk(BLOCKS) if b is not None else (None,) * BLOCKS
    out: list[Optional[Tensor]] = [None] * BLOCKS
    for g in groups:
        blocks = [j for j in range(BLOCKS) if g >> j & 1]
        x = xs[blocks[0]]
        parts = [F.linear(x, ws[j], bs[j]) for j in blocks]
        if not record:
            for j, t in zip(blocks, parts):
                out[j] = t
            continue
        zeros = x.new_zeros(*x.shape[:-1], module.embed_dim)
        full = torch.cat([parts[blocks.index(j)] if j in blocks else zeros for j in range(BLOCKS)], dim=-1)
        with site.padding(real if g & 6 else None):
            replaced = site.record(module, (x,), full, stream=0 if g == ALL else g)
        full = full if replaced is None else replaced
        for j, t in zip(range(BLOCKS), full.chunk(BLOCKS, dim=-1)):
            if j in blocks:
                out[j] = t
    return out[0], out[1], out[2]


class _Restore:
    """Handle of :func:`attach`: ``remove()`` restores the class's forward."""

    def __init__(self, module: nn.Module):
        self.module = module

    def remove(self) -> None:
        if self.module is not None:
            vars(self.module).pop("forward", None)
            self.module = None


def attach(module: nn.Module, site: CallSite) -> _Restore:
    """Route ``module``'s calls through :func:`attention_forward` until ``remove()``."""
    state: dict = {}  # the grouping of this recording's first call

    def forward(*args, **kwargs):
        return attention_forward(module, site, *args, state=state, **kwargs)

    forward.explicit_attention = True
    module.forward = forward
    return _Restore(module)


#: ``in_proj_weight``: ``Σ_s g_s a_sᵀ`` ``(B, 3E, E)``; ``in_proj_bias``: ``Σ_s g_s`` (the
#: Linear rule's algebra on the packed projection's attribute names).
per_example_grads = functools.partial(matrix_per_example_grads, weight="in_proj_weight", bias="in_proj_bias")
squared_grads = functools.partial(matrix_squared_grads, weight="in_proj_weight", bias="in_proj_bias")


def combine_streams(module: nn.Module, parts: dict, weight: str, bias: Optional[str]) -> QKVGroupFactors:
    """The grouped factors from the per-group ``{group: (A_g, G over 3E)}``."""
    return QKVGroupFactors.combine(GROUPED_KIND, parts, weight, bias)


GROUPED_KIND = "multihead_attention_groups"
FACTOR_TYPES[GROUPED_KIND] = QKVGroupFactors

register(
    nn.MultiheadAttention,
    LayerRule(
        "multihead_attention",
        supports,
        positions_last,
        positions_last,
        per_example_grads,
        position_mask=tokens_mask,
        mask_length=token_axis_length,
        squared_grads=squared_grads,
        factors=LayerFactors,
        weight="in_proj_weight",
        bias="in_proj_bias",
        attach=attach,
        combine_streams=combine_streams,
    ),
)
