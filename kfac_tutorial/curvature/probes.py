"""One-off probes of a model's structure, cached per model.

* Alignment: are the rows of a call the batch's examples? Row ``n`` of the call must
  depend on example ``n`` only (one batched backward of two one-hot vectors).
* Explained gradients: does the sum of a parameter's recorded calls give its true
  gradient (for a random vector)? If not (used functionally, never called, ...), the
  parameter falls back to ``torch.func``.
* Broadcast calls: does handing on a ``(1, ...)`` call expanded to the batch leave the
  logits unchanged (see :mod:`.capture`)?

A later fit of the same, structurally unchanged model reuses the results (keyed by
parameter and module identities, trainability, the settings and the first batch's call
signature). ``clear_probe_cache()`` forgets them (e.g. after changing a forward method).
"""

from __future__ import annotations

import weakref
from typing import Sequence

import torch
from torch import Tensor, nn

from .capture import Call
from .plan import Plan
from .rules import SparseRows, rule_for

_PROBE_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def clear_probe_cache() -> None:
    """Forget the cached probe results of every model."""
    _PROBE_CACHE.clear()


def model_cache(model: nn.Module) -> dict:
    """The probe results cached for ``model`` (a dict keyed by :func:`structure_key`)."""
    return _PROBE_CACHE.setdefault(model, {})


def structure_key(model: nn.Module, kronecker: bool, diagonal_modules: Sequence[str], calls, batch_size: int, inputs) -> tuple:
    params = tuple((n, id(p), p.requires_grad, tuple(p.shape)) for n, p in model.named_parameters())
    modules = tuple((n, id(m), m.training) for n, m in model.named_modules())
    sig = tuple((c.name, c.index, c.rows == batch_size, c.input.dim(), c.mask is not None) for c in calls)
    kind = tuple(sorted(inputs)) if isinstance(inputs, dict) else type(inputs).__name__
    return (params, modules, bool(kronecker), tuple(diagonal_modules), sig, batch_size > 1, kind)


class Prepared:
    """A call turned into positions: ``a`` ``(r, P, d)`` with ``r = B`` (aligned) or 1 (shared)."""

    def __init__(self, call: Call, shared: bool):
        rule = rule_for(call.module)
        self.call, self.rule, self.shared = call, rule, shared
        a = rule.inputs(call.module, call.input)
        mask = rule.position_mask(call.module, call.input, call.output, call.mask)
        if shared:  # all rows of the call are positions of every example
            a = a.reshape(1, -1, *a.shape[2:])
            if mask is not None and call.mask is not None and call.mask.shape[0] == call.rows:
                mask = mask.reshape(1, -1)
            # else: a (B, P) mask of a call broadcast over the batch stays per example
        self.a, self.mask = a, mask

    def output_grads(self, grad: Tensor) -> Tensor:
        """``(B, P, d_out)`` from the gradient w.r.t. the call's output (batched if shared)."""
        if not self.shared:
            return self.rule.output_grads(self.call.module, grad)
        batch, rows = grad.shape[:2]
        g = self.rule.output_grads(self.call.module, grad.reshape(batch * rows, *grad.shape[2:]))
        return g.reshape(batch, -1, g.shape[-1])


def _is_zero(t: Tensor) -> bool:
    return t.numel() == 0 or bool(t.abs().max() == 0)


def prepare_calls(
    calls: list[Call], outputs: Tensor, batch_size: int, aligned_cache: dict, generator: torch.Generator
) -> list[Prepared]:
    """Decide for every call whether its rows are the batch's examples, then prepare it."""
    unknown = [c for c in calls if c.rows == batch_size and batch_size > 1 and (c.name, c.index) not in aligned_cache]
    if unknown:
        v = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
        grad_outputs = torch.zeros(2, *outputs.shape, dtype=outputs.dtype, device=outputs.device)
        grad_outputs[0, 0], grad_outputs[1, 1] = v[0], v[1]
        grads = torch.autograd.grad(
            outputs, [c.output for c in unknown], grad_outputs, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        for call, g in zip(unknown, grads):
            aligned = g is None or (_is_zero(g[0, 1:]) and _is_zero(g[1, :1]) and _is_zero(g[1, 2:]))
            aligned_cache[(call.name, call.index)] = bool(aligned)
    prepared = []
    for call in calls:
        shared = call.rows != batch_size or (batch_size > 1 and not aligned_cache[(call.name, call.index)])
        prepared.append(Prepared(call, shared))
    return prepared


def unexplained_parameters(plan: Plan, prepared: list[Prepared], outputs: Tensor, generator: torch.Generator) -> set[str]:
    """Names of hook-covered parameters whose true gradient differs from the sum of their
    recorded calls' contributions, for a random backprop vector.

    One backward pass gives both the true parameter gradients and the gradients w.r.t.
    the calls' outputs; a call's contribution is its rule's per-example gradient with
    every row and position collapsed into one example (the batch sum)."""
    covered = {n for pair in plan.kronecker.values() for n in pair if n is not None}
    covered |= {pname for pairs in plan.hook_diag.values() for _, pname in pairs}
    if not covered:
        return set()
    names = sorted(covered)
    v = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
    targets = [plan.params[n] for n in names] + [p.call.output for p in prepared]
    grads = torch.autograd.grad(outputs, targets, v, retain_graph=True, allow_unused=True)
    true, call_grads = grads[: len(names)], grads[len(names) :]
    explained: dict[str, Tensor] = {}
    attrs = {}
    for mname, (wname, bname) in plan.kronecker.items():
        rule = rule_for(plan.modules[mname])
        attrs.setdefault(mname, []).extend([(rule.weight, wname)] + ([(rule.bias, bname)] if bname else []))
    for mname, pairs in plan.hook_diag.items():
        attrs.setdefault(mname, []).extend(pairs)
    for p, grad in zip(prepared, call_grads):
        if grad is None or p.call.name not in attrs:
            continue
        rule, module = p.rule, p.call.module
        g = rule.output_grads(module, grad)  # (rows, P, d_out): the plain (unbatched) gradient
        g1 = g.reshape(1, -1, g.shape[-1])
        a1 = p.a.reshape(1, -1, *p.a.shape[2:])  # every row's positions, in the same order
        pe = rule.per_example_grads(module, a1, g1)
        for attr, pname in attrs[p.call.name]:
            if attr not in pe:
                continue
            t = pe[attr]
            t = t.summed(plan.params[pname].shape[0]) if isinstance(t, SparseRows) else t[0]
            explained[pname] = explained.get(pname, 0) + t
    true = [torch.zeros_like(plan.params[n]) if t is None else t for n, t in zip(names, true)]
    # gradients that vanish mathematically (e.g. attention key biases) are rounding noise:
    # compare against a tolerance relative to the largest gradient of the whole model too
    floor = 1e-6 * max(t.abs().max().item() for t in true) + 1e-30
    bad = set()
    for name, t in zip(names, true):
        e = explained.get(name, torch.zeros_like(t))
        if (e - t).abs().max().item() > 1e-4 * t.abs().max().item() + floor:
            bad.add(name)
    return bad
