"""One-off probes of a model's structure, cached per model.

* Alignment: are the rows of a call the batch's examples? With a probe vector ``u``
  (``(B, ...)`` like the logits) and ``u₀`` its row 0 (other rows zeroed), two plain
  backward passes: ``u₀`` and ``u − u₀``. A call is aligned iff the first pass's gradient
  is zero on rows ``1..B−1`` of the call (example 0's outputs see row 0 only) and the
  second pass's gradient is zero on row 0 (row 0 feeds no other example's outputs).
  Before, one batched backward of ``u₀`` and ``u₁`` checked that examples 0 *and* 1 see
  their own row only; now row 0 is checked in both directions (a mix that spares
  example 0 in both directions, e.g. rows 1 and 2 swapped, is no longer seen).
* Explained gradients: does the sum of a parameter's recorded calls give its true
  gradient? Checked from the second pass (vector ``u − u₀``; with one example, or no
  call to align, a single pass of ``u``). If not (used functionally, never called,
  ...), the parameter falls back to ``torch.func``.
* The probe vector ``u`` is the batch's first backprop vector for ``mc`` and
  ``empirical`` Fishers (when its row 0 and some other row are nonzero), so that the two
  passes add up to that vector's backward pass (:func:`probe_calls` returns those
  gradients); otherwise a random normal vector. A categorical vector sums to zero over
  the classes of each row, so a dependence that only shifts all logits of an example by
  the same amount is not seen; it contributes nothing to any categorical Fisher (the
  cache is kept per likelihood).
* Broadcast calls: does handing on a ``(1, ...)`` call expanded to the batch leave the
  logits unchanged (see :mod:`.capture` and ``estimate._check_broadcast``)?

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


def _max_abs(t: Tensor) -> float:
    """``max |t|`` (0 for an empty tensor); ``aminmax`` reads ``t`` once, no ``|t|`` copy."""
    if t.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(t)
    return max(-lo.item(), hi.item())


def _is_zero(t: Tensor) -> bool:
    return t.numel() == 0 or _max_abs(t) == 0


def _first_row(u: Tensor) -> Tensor:
    """``u`` with every row but row 0 zeroed."""
    u0 = torch.zeros_like(u)
    u0[0] = u[0]
    return u0


def _alignment_passes(outputs: Tensor, unknown: list[Call], u: Tensor, aligned_cache: dict, extra: Sequence[Tensor] = ()):
    """The two probe passes (see the module docstring): ``u₀`` (row 0 of ``u``) w.r.t. the
    unknown calls' outputs, then ``u − u₀`` w.r.t. ``extra`` and every unknown call's output.
    Records each unknown call's alignment; returns both passes' gradients and ``extra``'s."""
    u0 = _first_row(u)
    first = torch.autograd.grad(outputs, [c.output for c in unknown], u0, retain_graph=True, allow_unused=True)
    grads = torch.autograd.grad(outputs, [*extra, *(c.output for c in unknown)], u - u0, retain_graph=True, allow_unused=True)
    extra_grads, rest = grads[: len(extra)], grads[len(extra) :]
    for call, g0, g1 in zip(unknown, first, rest):
        # row 0 of the call feeds example 0's outputs only, and example 0's outputs see row 0 only
        aligned = (g0 is None or _is_zero(g0[1:])) and (g1 is None or _is_zero(g1[:1]))
        aligned_cache[(call.name, call.index)] = bool(aligned)
    return first, rest, extra_grads


def _needs_probe(call: Call, batch_size: int, aligned_cache: dict) -> bool:
    return call.rows == batch_size and batch_size > 1 and (call.name, call.index) not in aligned_cache


def _prepare(calls: list[Call], batch_size: int, aligned_cache: dict) -> list[Prepared]:
    return [
        Prepared(call, call.rows != batch_size or (batch_size > 1 and not aligned_cache[(call.name, call.index)]))
        for call in calls
    ]


def prepare_calls(
    calls: list[Call], outputs: Tensor, batch_size: int, aligned_cache: dict, generator: torch.Generator
) -> list[Prepared]:
    """Decide for every call whether its rows are the batch's examples (probing the calls
    not in ``aligned_cache``), then prepare it."""
    unknown = [c for c in calls if _needs_probe(c, batch_size, aligned_cache)]
    if unknown:
        v = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
        _alignment_passes(outputs, unknown, v, aligned_cache)
    return _prepare(calls, batch_size, aligned_cache)


def usable_probe_vector(v: Tensor) -> bool:
    """Whether a backprop vector can serve as the probe vector: row 0 and some other row
    nonzero (else a probe pass would see nothing)."""
    return v.shape[0] < 2 or (not _is_zero(v[:1]) and not _is_zero(v[1:]))


def probe_calls(
    plan: Plan,
    calls: list[Call],
    outputs: Tensor,
    batch_size: int,
    aligned_cache: dict,
    generator: torch.Generator,
    vector: Tensor | None = None,
) -> tuple[list[Prepared], set[str], dict[int, Tensor]]:
    """Both probes of a first batch from the same (at most two) backward passes.

    Returns the prepared calls, the names of hook-covered parameters whose true gradient
    differs from the sum of their recorded calls' contributions (they fall back to
    ``torch.func``), and, when ``vector`` (a backprop vector, see
    :func:`usable_probe_vector`) is given, the gradients of ``vector · outputs`` w.r.t. the
    outputs of the aligned calls, keyed by ``id(call)``: the passes double as that
    vector's backward pass. Without ``vector`` a random normal vector probes."""
    u = (
        vector
        if vector is not None
        else torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
    )
    names = _covered_names(plan)
    params = [plan.params[n] for n in names]
    unknown = [c for c in calls if _needs_probe(c, batch_size, aligned_cache)]
    rest = [c for c in calls if not _needs_probe(c, batch_size, aligned_cache)]
    if unknown:
        first, second, extra = _alignment_passes(outputs, unknown, u, aligned_cache, [*params, *(c.output for c in rest)])
        true, rest_grads = extra[: len(params)], extra[len(params) :]
        call_grads = dict(zip(map(id, unknown), second)) | dict(zip(map(id, rest), rest_grads))
        full = {id(c): (g0, g1) for c, g0, g1 in zip(unknown, first, second)}
    else:
        grads = torch.autograd.grad(outputs, [*params, *(c.output for c in calls)], u, retain_graph=True, allow_unused=True)
        true, call_grads = grads[: len(params)], dict(zip(map(id, calls), grads[len(params) :]))
        full = {k: (None, g) for k, g in call_grads.items()}
    prepared = _prepare(calls, batch_size, aligned_cache)
    bad = _unexplained(plan, names, true, prepared, call_grads) if names else set()
    reused = {}
    if vector is not None:
        for p in prepared:
            if not p.shared and id(p.call) in full:
                g0, g1 = full[id(p.call)]
                if g0 is not None and g1 is not None:  # aligned: g0 lives on row 0 only, g1 off it
                    if g1.is_contiguous():  # g0 + g1, written into g1 (no longer needed as it was)
                        g1[:1] = g0[:1]
                    else:  # e.g. an expanded gradient (the output was summed over positions)
                        g1 = g0 + g1
                reused[id(p.call)] = g1 if g1 is not None else g0
    return prepared, bad, reused


def _covered_names(plan: Plan) -> list[str]:
    """The parameters whose gradients the recorded calls should explain (Kronecker layers'
    weights and biases, hook-based diagonal entries), sorted."""
    covered = {n for pair in plan.kronecker.values() for n in pair if n is not None}
    return sorted(covered | {pname for pairs in plan.hook_diag.values() for _, pname in pairs})


def _unexplained(plan: Plan, names: list[str], true, prepared: list[Prepared], call_grads: dict) -> set[str]:
    """The explained-gradient check: per parameter, its true gradient ``true`` (for the
    probe vector) against the sum of its recorded calls' contributions, each call's rule's
    per-example gradient with every row and position collapsed into one example."""
    explained: dict[str, Tensor] = {}
    attrs = {}
    for mname, (wname, bname) in plan.kronecker.items():
        rule = rule_for(plan.modules[mname])
        attrs.setdefault(mname, []).extend([(rule.weight, wname)] + ([(rule.bias, bname)] if bname else []))
    for mname, pairs in plan.hook_diag.items():
        attrs.setdefault(mname, []).extend(pairs)
    for p in prepared:
        grad = call_grads.get(id(p.call))
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
    largest = {n: 0.0 if t is None else _max_abs(t) for n, t in zip(names, true)}
    # gradients that vanish mathematically (e.g. attention key biases) are rounding noise:
    # compare against a tolerance relative to the largest gradient of the whole model too
    floor = 1e-6 * max(largest.values()) + 1e-30
    bad = set()
    for name, t in zip(names, true):
        e = explained.get(name)
        if e is None or t is None:
            gap = largest[name] if e is None else _max_abs(e)
        else:  # e is a sum of fresh tensors: subtract in place
            gap = _max_abs(e.sub_(t))
        if gap > 1e-4 * largest[name] + floor:
            bad.add(name)
    return bad


def unexplained_parameters(plan: Plan, prepared: list[Prepared], outputs: Tensor, generator: torch.Generator) -> set[str]:
    """The explained-gradient check on its own (one backward pass of a random normal
    vector); :func:`probe_calls` does it from the alignment passes."""
    names = _covered_names(plan)
    if not names:
        return set()
    v = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
    targets = [plan.params[n] for n in names] + [p.call.output for p in prepared]
    grads = torch.autograd.grad(outputs, targets, v, retain_graph=True, allow_unused=True)
    call_grads = {id(p.call): g for p, g in zip(prepared, grads[len(names) :])}
    return _unexplained(plan, names, grads[: len(names)], prepared, call_grads)
