"""One pass over the data that estimates Kronecker factors and diagonal Fisher entries.

Definitions (``N`` examples; backprop vectors ``v`` with weights ``w_v`` from
:mod:`.flavours`; ``g_s`` = gradient of ``v · f_n`` w.r.t. the layer output at
position ``s``; ``a_s`` = layer input at ``s`` with a 1 appended when the layer has a
trainable bias):

* Positions of an example. ``S_n`` is every position that example ``n``'s outputs
  depend on, over every call of the layer in the forward pass: a call whose rows are
  the batch's examples (checked once per call site by a probe: row ``n`` of the call
  must depend on example ``n`` only) contributes row ``n``'s positions; any other call
  (candidate names encoded once per batch, a ``(1, T)`` position-id call, a layer that
  mixes the batch) is *shared*: all its positions belong to every example, and its
  per-example output gradients are computed exactly with batched back-propagation
  (``is_grads_batched``), never by squaring a batch-summed gradient. Padding positions
  (mask 0) are excluded from the factors.
* ``expand``: ``A = Σ_n Σ_{s∈S_n} a_s a_sᵀ / Σ_n |S_n|``,
  ``G = (1/N) Σ_n Σ_v w_v Σ_{s∈S_n} g_s g_sᵀ`` (positions are extra examples; exact for
  deep linear networks whose loss is applied per position).
* ``reduce``: ``A = (1/N) Σ_n ā_n ā_nᵀ`` with ``ā_n = mean_{s∈S_n} a_s``,
  ``G = (1/N) Σ_n Σ_v w_v ĝ_n ĝ_nᵀ`` with ``ĝ_n = Σ_{s∈S_n} g_s`` (exact for deep linear
  networks that pool positions before the loss; the mention linkers pool).
* Embedding layers always use ``expand``: their input is one-hot, so ``A`` is the
  diagonal of token frequencies, kept as a vector (reduce would make it dense V×V).
* Diagonal entries: ``(1/N) Σ_n Σ_v w_v (per-example gradient)²`` where the
  per-example gradient sums every call (all positions, padding included: it is the
  true gradient). Layers without a rule fall back to ``torch.func`` per-example
  gradients (``vmap(grad)``), exact for any model that ``vmap`` supports.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn
from ..progress import progress_bar as tqdm

from .capture import Call, CallRecorder, batch_size_of, to_device
from .flavours import FisherType, Likelihood, backprop_vectors
from .layers import SparseRows, rule_for


class WeightSharing:
    """Treatment of weight-sharing (token, position) dimensions: ``expand`` or ``reduce``."""

    EXPAND = "expand"
    REDUCE = "reduce"
    CHOICES = (EXPAND, REDUCE)


@dataclass
class LayerFactors:
    """Kronecker factors of one layer: ``F_layer ≈ G ⊗ A`` in row-major ``vec([W | b])``.

    Attributes:
        kind: ``"linear"``, ``"conv1d"`` or ``"embedding"``.
        A: input factor; ``(d_in(+1), d_in(+1))``; for an embedding the ``(V,)`` diagonal
            (then ``F_layer ≈ diag(A) ⊗ G`` over ``vec(W)`` with ``W`` of shape ``(V, D)``).
        G: output-gradient factor ``(d_out, d_out)`` (embedding: ``(D, D)``).
        weight: name of the weight parameter; bias: name of the bias (or None), whose
            entries are the last input column of ``[W | b]``.
        A_root, G_root: when True the factor is held as a root ``R`` of shape ``(d, r)``,
            ``r < d``, with factor ``= R Rᵀ`` (low-rank storage, see ``KFAC.low_rank``);
            :meth:`full_A` / :meth:`full_G` give the ``(d, d)`` matrix either way.
    """

    kind: str
    A: Tensor
    G: Tensor
    weight: str
    bias: Optional[str] = None
    A_root: bool = False
    G_root: bool = False

    def full_A(self) -> Tensor:
        """The input factor as stored (embedding: the ``(V,)`` diagonal) or ``R Rᵀ``."""
        return self.A @ self.A.T if self.A_root else self.A

    def full_G(self) -> Tensor:
        """The ``(d_out, d_out)`` output-gradient factor (``R Rᵀ`` for a root)."""
        return self.G @ self.G.T if self.G_root else self.G


@dataclass
class Estimate:
    num_examples: int
    factors: dict[str, LayerFactors] = field(default_factory=dict)
    diagonal: dict[str, Tensor] = field(default_factory=dict)


# Probe results (unexplained parameters, which calls are aligned with the batch) per model,
# keyed by the model's structure: parameter and module identities, which are trainable, the
# estimation settings and the first batch's call signature. A later fit of the same,
# structurally unchanged model reuses them instead of paying the probes' extra backward
# passes again. ``clear_probe_cache()`` forgets them (e.g. after changing a forward method).
_PROBE_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def clear_probe_cache() -> None:
    """Forget the cached probe results of every model."""
    _PROBE_CACHE.clear()


def _structure_key(model: nn.Module, kronecker: bool, diagonal_modules: Sequence[str], calls, batch_size: int, inputs) -> tuple:
    params = tuple((n, id(p), p.requires_grad, tuple(p.shape)) for n, p in model.named_parameters())
    modules = tuple((n, id(m), m.training) for n, m in model.named_modules())
    sig = tuple((c.name, c.index, c.rows == batch_size, c.input.dim(), c.mask is not None) for c in calls)
    kind = tuple(sorted(inputs)) if isinstance(inputs, dict) else type(inputs).__name__
    return (params, modules, bool(kronecker), tuple(diagonal_modules), sig, batch_size > 1, kind)


def _module_matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


class _Plan:
    """Which parameters get Kronecker factors, which a hook-based or a vmap diagonal."""

    def __init__(self, model: nn.Module, kronecker: bool, diagonal_modules: Sequence[str], force_vmap: frozenset = frozenset()):
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        name_of = {id(p): n for n, p in self.params.items()}
        owners = defaultdict(list)  # param id -> [(module name, module, attribute)]
        self.modules = dict(model.named_modules())
        for mname, module in self.modules.items():
            for attr, p in module.named_parameters(recurse=False):
                if p.requires_grad:
                    owners[id(p)].append((mname, module, attr))

        def sole_owner(p) -> bool:
            return p is not None and p.requires_grad and len(owners[id(p)]) == 1 and name_of[id(p)] not in force_vmap

        self.kronecker: dict[str, tuple[str, Optional[str]]] = {}  # module -> (weight, bias)
        if kronecker:
            for mname, module in self.modules.items():
                rule = rule_for(module)
                if rule is None or rule.kind is None:
                    continue
                if _module_matches(mname, diagonal_modules) or not sole_owner(getattr(module, "weight", None)):
                    continue
                bias = getattr(module, "bias", None)
                self.kronecker[mname] = (name_of[id(module.weight)], name_of[id(bias)] if sole_owner(bias) else None)
        in_kron = {n for pair in self.kronecker.values() for n in pair if n is not None}

        self.hook_diag: dict[str, list[tuple[str, str]]] = defaultdict(list)  # module -> [(attr, param)]
        self.vmap_diag: list[str] = []
        for pname, p in self.params.items():
            if pname in in_kron:
                continue
            owner_list = owners[id(p)]
            if pname not in force_vmap and owner_list and all(rule_for(m) is not None for _, m, _ in owner_list):
                for mn, _, attr in owner_list:
                    self.hook_diag[mn].append((attr, pname))
            else:
                self.vmap_diag.append(pname)
        self.recorded = {m: self.modules[m] for m in set(self.kronecker) | set(self.hook_diag)}


def _accumulate_pe(store: dict, pname: str, grad, batch: int, param: Tensor) -> None:
    """Add one call's per-example gradient for ``pname`` (dense or SparseRows)."""
    old = store.get(pname)
    if old is None:
        store[pname] = grad
    elif isinstance(old, SparseRows) and isinstance(grad, SparseRows):
        store[pname] = SparseRows(torch.cat([old.example, grad.example]), torch.cat([old.row, grad.row]), torch.cat([old.values, grad.values]))
    else:
        dense = [g.to_dense(batch, param.shape[0]) if isinstance(g, SparseRows) else g for g in (old, grad)]
        store[pname] = dense[0] + dense[1]


def _add_squared_sum(out: Tensor, grad, weight: float) -> None:
    """``out += weight · Σ_n grad_n²`` for dense ``(B, *shape)`` or sparse per-example grads."""
    if isinstance(grad, SparseRows):
        grad.add_squared_sum_to(out, weight)
    else:
        flat = grad.reshape(grad.shape[0], -1).to(out.dtype)
        out.view(-1).add_(torch.einsum("bk,bk->k", flat, flat), alpha=weight)


def _batched_output_grads(outputs: Tensor, tensors: list[Tensor], v: Tensor, chunk: int) -> list[Tensor]:
    """Per-example gradients of ``v_n · outputs_n`` w.r.t. each tensor: ``(B, *tensor.shape)``."""
    batch = outputs.shape[0]
    pieces: list[list[Tensor]] = [[] for _ in tensors]
    for start in range(0, batch, chunk):
        idx = torch.arange(start, min(batch, start + chunk), device=outputs.device)
        grad_outputs = torch.zeros(len(idx), *outputs.shape, dtype=outputs.dtype, device=outputs.device)
        grad_outputs[torch.arange(len(idx)), idx] = v[idx]
        grads = torch.autograd.grad(outputs, tensors, grad_outputs, retain_graph=True, allow_unused=True, is_grads_batched=True)
        for j, (g, t) in enumerate(zip(grads, tensors)):
            pieces[j].append(g if g is not None else torch.zeros(len(idx), *t.shape, dtype=t.dtype, device=t.device))
    return [torch.cat(p) for p in pieces]


class _Prepared:
    """A call turned into positions: ``a`` (r, P, d) with r = B (aligned) or 1 (shared)."""

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


def estimate(
    model: nn.Module,
    batches: Iterable,
    *,
    fisher: FisherType,
    likelihood: Likelihood,
    mc_samples: int = 1,
    seed: int = 0,
    kronecker: bool = True,
    weight_sharing: str = WeightSharing.REDUCE,
    diagonal_modules: Sequence[str] = (),
    progress: bool = False,
    chunk_size: int = 8,
    description: str = "Fisher",
) -> Estimate:
    """Estimate the mean per-example Fisher of ``model`` over ``batches`` (see module doc)."""
    plan = _Plan(model, kronecker, diagonal_modules)
    if not plan.params:
        raise ValueError("the model has no trainable parameters (requires_grad=True): nothing to estimate.")
    first_param = next(iter(plan.params.values()))
    device = first_param.device
    acc_dtype = torch.float64 if any(p.dtype == torch.float64 for p in plan.params.values()) else torch.float32
    generator = torch.Generator(device=device).manual_seed(seed)
    probe_generator = torch.Generator(device=device).manual_seed(seed + 7919)
    aligned_cache: dict[tuple[str, int], bool] = {}
    model_cache = _PROBE_CACHE.setdefault(model, {})
    cache_key = None

    A: dict[str, Tensor] = {}
    G: dict[str, Tensor] = {}
    positions = defaultdict(float)
    diag = {n: torch.zeros(plan.params[n].shape, dtype=acc_dtype, device=device) for n in plan.params}
    num_examples = 0
    was_training = model.training
    model.eval()
    total = len(batches) if hasattr(batches, "__len__") else None
    try:
        recorder = CallRecorder(model, plan.recorded)
        with recorder:
            for batch_index, batch in enumerate(tqdm(batches, total=total, disable=not progress, desc=description, leave=False)):
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise TypeError("each batch must be a pair (inputs, targets); use targets=None for exact/mc Fisher.")
                inputs, targets = to_device(batch[0], device), to_device(batch[1], device)
                recorder.reset()
                if isinstance(inputs, dict) and isinstance(inputs.get("attention_mask"), Tensor):
                    recorder.push_mask(inputs["attention_mask"])
                with torch.enable_grad():
                    outputs = model(inputs)
                if not isinstance(outputs, Tensor):
                    raise TypeError(f"model(inputs) must return a tensor of logits, got {type(outputs).__name__}")
                batch_size = outputs.shape[0]
                if batch_size != batch_size_of(inputs):
                    raise ValueError(f"model outputs have {batch_size} rows but the inputs have {batch_size_of(inputs)} examples")
                calls = recorder.calls
                for call in calls:
                    call.check_not_modified()
                if batch_index == 0:
                    # parameters whose gradient the recorded calls do not fully explain (used
                    # functionally, modules never called, ...) fall back to torch.func
                    cache_key = _structure_key(model, kronecker, diagonal_modules, calls, batch_size, inputs)
                    cached = model_cache.get(cache_key)
                    if cached is not None:
                        unexplained, aligned_cache = cached[0], dict(cached[1])
                    else:
                        unexplained = None
                    prepared = None
                    if unexplained is None:
                        prepared = _prepare_calls(calls, outputs, batch_size, aligned_cache, probe_generator, chunk_size)
                        unexplained = _unexplained_parameters(plan, prepared, outputs, probe_generator)
                    if unexplained:
                        plan = _Plan(model, kronecker, diagonal_modules, force_vmap=frozenset(unexplained))
                        calls = [c for c in calls if c.name in plan.recorded]
                        prepared = None
                if batch_index != 0 or prepared is None:
                    prepared = _prepare_calls(calls, outputs, batch_size, aligned_cache, probe_generator, chunk_size)
                if batch_index == 0 and cache_key is not None:
                    model_cache[cache_key] = (frozenset(unexplained), dict(aligned_cache))
                _accumulate_A(plan, prepared, batch_size, weight_sharing, A, positions, acc_dtype)
                vectors = backprop_vectors(outputs, targets, fisher, likelihood, mc_samples, generator)
                for v, w in vectors:
                    _accumulate_vector(plan, prepared, outputs, v.to(outputs.dtype), w, batch_size, weight_sharing, G, diag, acc_dtype, chunk_size)
                    if plan.vmap_diag:
                        recorder.active = False
                        try:
                            _vmap_diagonal(model, plan, inputs, v, w, diag, acc_dtype, chunk_size)
                        finally:
                            recorder.active = True
                num_examples += batch_size
                del outputs, prepared, calls
                recorder.reset()
    finally:
        model.train(was_training)
    if num_examples == 0:
        raise ValueError("batches is empty: the Fisher needs at least one example.")

    result = Estimate(num_examples=num_examples)
    for mname, (wname, bname) in plan.kronecker.items():
        kind = rule_for(plan.modules[mname]).kind
        sharing = WeightSharing.EXPAND if kind == "embedding" else weight_sharing
        norm_A = positions[mname] if sharing == WeightSharing.EXPAND else num_examples
        a_mat = A.get(mname)
        g_mat = G.get(mname)
        if a_mat is None or g_mat is None:  # never reached the outputs: zero curvature
            module = plan.modules[mname]
            d_out = module.weight.shape[1] if kind == "embedding" else module.weight.shape[0]
            g_mat = torch.zeros(d_out, d_out, dtype=acc_dtype, device=device)
            if a_mat is None:
                d_in = module.weight.shape[0] if kind == "embedding" else module.weight[0].numel() + (bname is not None)
                a_mat = torch.zeros(d_in, dtype=acc_dtype, device=device) if kind == "embedding" else torch.zeros(d_in, d_in, dtype=acc_dtype, device=device)
        # normalise and make exactly symmetric (the penalty's gradient relies on it) in one pass
        if a_mat.dim() == 2:
            a_mat = _symmetrized(a_mat, 0.5 / max(norm_A, 1))
        else:
            a_mat = a_mat / max(norm_A, 1)
        g_mat = _symmetrized(g_mat, 0.5 / num_examples)
        result.factors[mname] = LayerFactors(kind, a_mat, g_mat, wname, bname)
    in_kron = {n for pair in plan.kronecker.values() for n in pair if n is not None}
    result.diagonal = {n: d / num_examples for n, d in diag.items() if n not in in_kron}
    return result


def _symmetrized(m: Tensor, scale: float, tile: int = 256) -> Tensor:
    """``(m + mᵀ) · scale`` written into ``m`` itself (returned), exactly symmetric and bit
    for bit equal to the plain expression.

    Done by ``tile × tile`` blocks, each pair of mirrored blocks read before either is
    written: no second ``d × d`` buffer (a fresh allocation of several MB costs page
    faults on every fit), and no whole-matrix transposed read, which thrashes the cache
    when ``d`` is a multiple of 256 (BERT's 768 and 3072, MiniLM's 1536)."""
    d = m.shape[0]
    for i in range(0, d, tile):
        for j in range(i, d, tile):
            block = (m[i:i + tile, j:j + tile] + m[j:j + tile, i:i + tile].T).mul_(scale)
            m[i:i + tile, j:j + tile] = block
            if j != i:
                m[j:j + tile, i:i + tile] = block.T
    return m


def _unexplained_parameters(plan: _Plan, prepared: list["_Prepared"], outputs: Tensor, generator: torch.Generator) -> set[str]:
    """Names of hook-covered parameters whose true gradient differs from the sum of their
    recorded calls' contributions, for a random backprop vector (a one-off probe).

    One backward pass gives both the true parameter gradients and the gradients w.r.t.
    the calls' outputs; a call's contribution is its rule's per-example gradient with
    every row and position collapsed into one example (the batch sum, never the
    ``(B, *param)`` per-example tensor)."""
    covered = {n for pair in plan.kronecker.values() for n in pair if n is not None}
    covered |= {pname for pairs in plan.hook_diag.values() for _, pname in pairs}
    if not covered:
        return set()
    names = sorted(covered)
    v = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
    targets = [plan.params[n] for n in names] + [p.call.output for p in prepared]
    grads = torch.autograd.grad(outputs, targets, v, retain_graph=True, allow_unused=True)
    true, call_grads = grads[: len(names)], grads[len(names):]
    explained: dict[str, Tensor] = {}
    attrs = {}
    for mname, (wname, bname) in plan.kronecker.items():
        attrs.setdefault(mname, []).extend([("weight", wname)] + ([("bias", bname)] if bname else []))
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


def _prepare_calls(calls, outputs, batch_size, aligned_cache, generator, chunk_size) -> list[_Prepared]:
    """Decide for every call whether its rows are the batch's examples, then prepare it."""
    unknown = [c for c in calls if c.rows == batch_size and batch_size > 1 and (c.name, c.index) not in aligned_cache]
    if unknown:
        v = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
        grad_outputs = torch.zeros(2, *outputs.shape, dtype=outputs.dtype, device=outputs.device)
        grad_outputs[0, 0], grad_outputs[1, 1] = v[0], v[1]
        grads = torch.autograd.grad(outputs, [c.output for c in unknown], grad_outputs, retain_graph=True, allow_unused=True, is_grads_batched=True)
        for call, g in zip(unknown, grads):
            aligned = g is None or (_is_zero(g[0, 1:]) and _is_zero(g[1, :1]) and _is_zero(g[1, 2:]))
            aligned_cache[(call.name, call.index)] = bool(aligned)
    prepared = []
    for call in calls:
        shared = call.rows != batch_size or (batch_size > 1 and not aligned_cache[(call.name, call.index)])
        prepared.append(_Prepared(call, shared))
    return prepared


def _is_zero(t: Tensor) -> bool:
    return t.numel() == 0 or bool(t.abs().max() == 0)


def _homogeneous(a: Tensor, bias: bool) -> Tensor:
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1) if bias else a


def _accumulate_A(plan, prepared, batch_size, weight_sharing, A, positions, acc_dtype) -> None:
    """Input factors (do not depend on the backprop vectors)."""
    reduce_sums: dict[str, tuple[Tensor, Tensor]] = {}
    for p in prepared:
        name = p.call.name
        if name not in plan.kronecker:
            continue
        kind = p.rule.kind
        valid = p.mask if p.mask is not None else torch.ones(p.a.shape[:2], dtype=torch.bool, device=p.a.device)
        # a shared call's positions count once per example; a per-example mask already does
        mult = batch_size if p.shared and valid.shape[0] == 1 else 1
        a = p.a.expand(valid.shape[0], *p.a.shape[1:]) if valid.shape[0] != p.a.shape[0] else p.a
        if kind == "embedding":
            counts = torch.bincount(a[valid].reshape(-1), minlength=p.call.module.num_embeddings).to(acc_dtype)
            A[name] = A.get(name, 0) + mult * counts
            positions[name] += mult * float(valid.sum())
            continue
        has_bias = plan.kronecker[name][1] is not None
        if weight_sharing == WeightSharing.EXPAND:
            a = _homogeneous(a.to(acc_dtype), has_bias)
            am = a * valid.unsqueeze(-1)
            A[name] = A.get(name, 0) + mult * torch.einsum("rpi,rpj->ij", am, a)
            positions[name] += mult * float(valid.sum())
        else:
            # masked sum over positions (a batched matvec, no masked copy of the inputs); the
            # homogeneous coordinate's sum is the number of valid positions
            vf = valid.to(acc_dtype)
            c = vf.sum(1)
            s = torch.einsum("rp,rpi->ri", vf, a.to(acc_dtype))
            if has_bias:
                s = torch.cat([s, c.unsqueeze(-1)], dim=-1)
            if s.shape[0] == 1 and batch_size > 1:
                s, c = s.expand(batch_size, -1), c.expand(batch_size)
            old = reduce_sums.get(name)
            reduce_sums[name] = (s, c) if old is None else (old[0] + s, old[1] + c)
    for name, (s, c) in reduce_sums.items():
        abar = s / c.clamp(min=1).unsqueeze(-1)
        if name in A:
            A[name].addmm_(abar.T, abar)
        else:
            A[name] = abar.T @ abar


def _accumulate_vector(plan, prepared, outputs, v, w, batch_size, weight_sharing, G, diag, acc_dtype, chunk_size) -> None:
    """Output-gradient factors and hook-based diagonal entries for one backprop vector."""
    aligned = [p for p in prepared if not p.shared]
    shared = [p for p in prepared if p.shared]
    grads = {}
    if aligned:
        gs = torch.autograd.grad(outputs, [p.call.output for p in aligned], v, retain_graph=True, allow_unused=True)
        grads.update({id(p): g for p, g in zip(aligned, gs)})
    if shared:
        gs = _batched_output_grads(outputs, [p.call.output for p in shared], v, chunk_size)
        grads.update({id(p): g for p, g in zip(shared, gs)})

    ghat: dict[str, Tensor] = {}
    per_example: dict[str, object] = {}
    calls_of = defaultdict(int)  # parameter -> number of calls that reach the outputs
    for p in prepared:
        if grads[id(p)] is not None:
            for _, pname in plan.hook_diag.get(p.call.name, ()):
                calls_of[pname] += 1
    single = {pname: n == 1 for pname, n in calls_of.items()}
    for p in prepared:
        grad = grads[id(p)]
        if grad is None:
            continue
        name = p.call.name
        g = p.output_grads(grad)
        if name in plan.kronecker and p.rule.kind is not None:
            ga = g.to(acc_dtype)
            if weight_sharing == WeightSharing.EXPAND or p.rule.kind == "embedding":
                gm = ga * p.mask.unsqueeze(-1) if p.mask is not None else ga
                G[name] = G.get(name, 0) + w * torch.einsum("bpo,bpq->oq", gm, ga)
            else:
                s = ga.sum(1) if p.mask is None else torch.einsum("bp,bpo->bo", p.mask.to(acc_dtype), ga)
                ghat[name] = ghat[name] + s if name in ghat else s
        if name in plan.hook_diag:
            pairs = plan.hook_diag[name]
            if p.rule.squared_grads is not None and all(single[pname] for _, pname in pairs):
                # the only contribution to these parameters: square and sum directly
                for attr, sq in p.rule.squared_grads(p.call.module, p.a, g, acc_dtype).items():
                    for attr2, pname in pairs:
                        if attr2 == attr:
                            diag[pname].add_(sq, alpha=w)
                continue
            pe = p.rule.per_example_grads(p.call.module, p.a, g)
            for attr, pname in pairs:
                if attr in pe:
                    _accumulate_pe(per_example, pname, pe[attr], batch_size, plan.params[pname])
    for name, s in ghat.items():
        if name in G:
            G[name].addmm_(s.T, s, alpha=w)
        else:
            G[name] = torch.mm(s.T, s).mul_(w)
    for pname, pe in per_example.items():
        _add_squared_sum(diag[pname], pe, w)


def _vmap_diagonal(model, plan, inputs, v, w, diag, acc_dtype, chunk_size) -> None:
    """Per-example gradients of ``v_n · f(x_n)`` for the remaining parameters, by torch.func."""
    from torch.func import functional_call, grad, vmap

    frozen = {n: p.detach() for n, p in model.named_parameters()}
    frozen.update({n: b for n, b in model.named_buffers()})
    subset = {n: plan.params[n].detach() for n in plan.vmap_diag}

    def contribution(sub, x, vn):
        x1 = torch.utils._pytree.tree_map(lambda t: t.unsqueeze(0) if isinstance(t, Tensor) else t, x)
        out = functional_call(model, {**frozen, **sub}, (x1,))
        return (out * vn.unsqueeze(0)).sum()

    per_example_grad = vmap(grad(contribution), in_dims=(None, 0, 0), chunk_size=chunk_size)
    try:
        pe = per_example_grad(subset, inputs, v)
    except Exception as err:  # pragma: no cover - depends on the model
        raise RuntimeError(
            f"per-example gradients by torch.func.vmap failed for parameters {plan.vmap_diag[:5]} "
            f"(modules without a curvature rule): {err}. Register a rule in "
            "kfac_tutorial.curvature.layers for that module type, or freeze those parameters."
        ) from err
    for n, g in pe.items():
        diag[n] += w * g.to(acc_dtype).square().sum(0)
