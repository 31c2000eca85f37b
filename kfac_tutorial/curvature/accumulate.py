"""Accumulating Kronecker factors and diagonal Fisher entries over batches.

An :class:`Accumulator` holds the unnormalised sums of one estimate: per Kronecker
layer the input statistic (:meth:`LayerFactors.input_moment`, or the ``reduce`` sums)
and ``Σ w_v g gᵀ``; per parameter ``Σ w_v (per-example gradient)²``. :meth:`finish`
divides by the example (or position) counts; the formulas are those of :mod:`.estimate`.

A call with ``stream > 0`` (one of several inputs of one call, see
``LayerRule.combine_streams``) is summed under the key ``(module, stream)`` instead of
the module's name, normalised on its own, and handed to the rule's ``combine_streams``.

Storage (``storage="auto"``, the default): a 2-D factor of side ``d ≥ ROOT_MIN_SIDE``
(``A`` of a Linear / Conv / Conv1D layer, every ``G``; single-stream calls only) is held
as its contributing rows while their count ``r ≤ d/2`` (:class:`RowSum`: ``Σ_i c_i
X_iᵀ X_i`` kept as the blocks ``X_i`` ``(n_i, d)`` with weights ``c_i ≥ 0``): ``A`` rows
are the valid positions' ``ā`` (weight: the shared-call multiplicity) or the ``reduce``
means ``ā_n``; ``G`` rows the ``g`` (``expand``) or ``ĝ_n`` (``reduce``) of one backprop
vector, weight ``w_v``. :meth:`Accumulator.finish` turns such a sum into the exact root
``R = [√c_i X_iᵀ]_i · √scale`` (``d × r``, ``R Rᵀ`` = the normalised factor, no
eigendecomposition and no ``d × d`` matrix). A block that would take ``r`` past ``d/2``
(or a negative weight) turns the sum dense by replaying the dense path's own arithmetic
on the kept blocks, so a densified factor is bit for bit the ``storage="dense"`` one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .factors import LayerFactors
from .plan import Plan
from .probes import Prepared
from .rules import SparseRows, rule_for


ROOT_MIN_SIDE = 64  # smaller factors stay dense under storage="auto"


class Storage:
    """How a fit holds its 2-D factors: ``auto`` (exact roots while ``rank ≤ d/2``) or ``dense``."""

    AUTO = "auto"
    DENSE = "dense"
    CHOICES = (AUTO, DENSE)


class WeightSharing:
    """Treatment of weight-sharing (token, position) dimensions: ``expand`` or ``reduce``."""

    EXPAND = "expand"
    REDUCE = "reduce"
    CHOICES = (EXPAND, REDUCE)


def batched_output_grads(outputs: Tensor, tensors: list[Tensor], v: Tensor, chunk: int) -> list[Tensor]:
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


def _add_per_example(store: dict, pname: str, grad, batch: int, param: Tensor) -> None:
    """Add one call's per-example gradient for ``pname`` (dense or SparseRows)."""
    old = store.get(pname)
    if old is None:
        store[pname] = grad
    elif isinstance(old, SparseRows) and isinstance(grad, SparseRows):
        store[pname] = SparseRows(
            torch.cat([old.example, grad.example]), torch.cat([old.row, grad.row]), torch.cat([old.values, grad.values])
        )
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


def symmetrized(m: Tensor, scale: float, tile: int = 256) -> Tensor:
    """``(m + mᵀ) · scale`` written into ``m`` itself (returned), exactly symmetric and bit
    for bit equal to the plain expression.

    Done by ``tile × tile`` blocks, each pair of mirrored blocks read before either is
    written: no second ``d × d`` buffer (a fresh allocation of several MB costs page
    faults on every fit), and no whole-matrix transposed read, which thrashes the cache
    when ``d`` is a multiple of 256 (BERT's 768 and 3072, MiniLM's 1536)."""
    d = m.shape[0]
    for i in range(0, d, tile):
        for j in range(i, d, tile):
            block = (m[i : i + tile, j : j + tile] + m[j : j + tile, i : i + tile].T).mul_(scale)
            m[i : i + tile, j : j + tile] = block
            if j != i:
                m[j : j + tile, i : i + tile] = block.T
    return m


# -- the dense path's updates of a sum ``acc`` (None: empty) by rows ``X`` with weight ``c``
def _add_scaled(acc: Optional[Tensor], m: Tensor, c) -> Tensor:
    """``acc + c · m``, written into ``m`` and then ``acc`` (``m`` is a fresh product): no
    ``d × d`` temporaries, and bit for bit the out-of-place expression (``c = 1`` skips
    the multiplication, which would not change a bit)."""
    if c != 1:
        m.mul_(c)
    return m if acc is None else acc.add_(m)


def _expand_add(acc: Optional[Tensor], X: Tensor, c) -> Tensor:
    """``acc + c · XᵀX`` (the ``expand`` sums)."""
    return _add_scaled(acc, X.T @ X, c)


def _reduce_add_A(acc: Optional[Tensor], X: Tensor, c) -> Tensor:
    """``acc + XᵀX`` in place (the ``reduce`` input sums; ``c`` is 1)."""
    return X.T @ X if acc is None else acc.addmm_(X.T, X)


def _reduce_add_G(acc: Optional[Tensor], X: Tensor, c) -> Tensor:
    """``acc + c · XᵀX`` in place (the ``reduce`` output-gradient sums)."""
    return torch.mm(X.T, X).mul_(c) if acc is None else acc.addmm_(X.T, X, alpha=c)


class RowSum:
    """``Σ_i c_i X_iᵀ X_i`` held as its blocks of rows ``X_i`` ``(n_i, d)``, ``c_i ≥ 0``,
    each with the dense update that would have added it (see the module docstring)."""

    def __init__(self) -> None:
        self.blocks: list[tuple[Tensor, object, Callable]] = []
        self.count = 0

    def add(self, X: Tensor, c, op: Callable) -> None:
        self.blocks.append((X, c, op))
        self.count += X.shape[0]

    def dense(self) -> Tensor:
        """The ``d × d`` sum, by the dense path's updates in the order they came."""
        acc = None
        for X, c, op in self.blocks:
            acc = op(acc, X, c)
        return acc

    def root(self, scale: float) -> Tensor:
        """``R`` ``(d, r)``, contiguous, with ``R Rᵀ = scale · Σ_i c_i X_iᵀ X_i``."""
        rows = torch.cat([X if c == 1 else X * math.sqrt(c) for X, c, _ in self.blocks])
        return (rows * math.sqrt(scale)).T.contiguous()


def dense_sum(value):
    """A sum as a ``d × d`` (or vector) tensor, whether it is held dense or as rows."""
    return value.dense() if isinstance(value, RowSum) else value


def stream_key(call) -> object:
    """The key of a call's sums: the module's name, or ``(name, stream)`` for ``stream > 0``."""
    return call.name if call.stream == 0 else (call.name, call.stream)


class Accumulator:
    """Unnormalised sums of one estimate (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        weight_sharing: str,
        dtype: torch.dtype,
        device: torch.device,
        chunk_size: int = 8,
        storage: str = Storage.AUTO,
    ):
        self.plan, self.weight_sharing, self.dtype, self.chunk_size = plan, weight_sharing, dtype, chunk_size
        self.storage = storage
        self.A: dict[object, Tensor | RowSum] = {}
        self.G: dict[object, Tensor | RowSum] = {}
        self.positions = defaultdict(float)
        self.diag = {n: torch.zeros(p.shape, dtype=dtype, device=device) for n, p in plan.params.items()}

    def factor_keys(self, mname: str) -> list:
        """The keys of module ``mname``'s sums: ``[mname]``, or its ``(mname, stream)`` keys."""
        streams = sorted({k for k in (*self.A, *self.G) if isinstance(k, tuple) and k[0] == mname})
        return streams or [mname]

    def _rows_allowed(self, key, d: int) -> bool:
        """Whether a sum of side ``d`` under ``key`` may be held as rows (``storage="auto"``)."""
        return self.storage == Storage.AUTO and not isinstance(key, tuple) and d >= ROOT_MIN_SIDE

    def _add(self, store: dict, key, X: Tensor, c, op: Callable, rows_allowed: bool) -> None:
        """``store[key] ← store[key] + c · XᵀX``: kept as rows while allowed and their count
        stays ``≤ d/2`` (``c ≥ 0``), else dense by ``op`` (the dense path's update)."""
        current = store.get(key)
        if rows_allowed and (current is None or isinstance(current, RowSum)):
            d = X.shape[1]
            count = 0 if current is None else current.count
            if float(c) >= 0 and 2 * (count + X.shape[0]) <= d:
                if current is None:
                    current = store[key] = RowSum()
                current.add(X, c, op)
                return
        store[key] = op(dense_sum(current), X, c)

    def densify(self) -> None:
        """Turn every sum held as rows into its ``d × d`` matrix (before an all-reduce)."""
        for store in (self.A, self.G):
            for key, value in store.items():
                store[key] = dense_sum(value)

    def _sharing(self, rule) -> str:
        return WeightSharing.EXPAND if rule.factors.expand_only else self.weight_sharing

    def add_inputs(self, prepared: list[Prepared], batch_size: int) -> None:
        """Input factors (they do not depend on the backprop vectors)."""
        plan, acc_dtype = self.plan, self.dtype
        reduce_sums: dict[str, tuple[Tensor, Tensor]] = {}
        input_rows: dict[str, bool] = {}  # whether the key's factor type has input rows (2-D A)
        for p in prepared:
            name, key = p.call.name, stream_key(p.call)
            if name not in plan.kronecker:
                continue
            valid = p.mask if p.mask is not None else torch.ones(p.a.shape[:2], dtype=torch.bool, device=p.a.device)
            # a shared call's positions count once per example; a per-example mask already does
            mult = batch_size if p.shared and valid.shape[0] == 1 else 1
            a = p.a.expand(valid.shape[0], *p.a.shape[1:]) if valid.shape[0] != p.a.shape[0] else p.a
            has_bias = plan.kronecker[name][1] is not None
            if self._sharing(p.rule) == WeightSharing.EXPAND:
                factor_type = p.rule.factors
                if factor_type.input_rows is not None and self._rows_allowed(key, a.shape[-1] + has_bias):
                    rows = factor_type.input_rows(a, valid, has_bias, acc_dtype)
                    self._add(self.A, key, rows, mult, _expand_add, True)
                else:
                    moment = factor_type.input_moment(a, valid, has_bias, acc_dtype, tuple(p.rule.weight_of(p.call.module).shape))
                    self.A[key] = _add_scaled(self.A.get(key), moment, mult)  # (input_moment returns a fresh tensor)
                self.positions[key] += mult * float(valid.sum())
                continue
            # reduce: masked sum over positions (a batched matvec, no masked copy of the
            # inputs); the homogeneous coordinate's sum is the number of valid positions
            vf = valid.to(acc_dtype)
            c = vf.sum(1)
            s = torch.einsum("rp,rpi->ri", vf, a.to(acc_dtype))
            if has_bias:
                s = torch.cat([s, c.unsqueeze(-1)], dim=-1)
            if s.shape[0] == 1 and batch_size > 1:
                s, c = s.expand(batch_size, -1), c.expand(batch_size)
            old = reduce_sums.get(key)
            reduce_sums[key] = (s, c) if old is None else (old[0] + s, old[1] + c)
            input_rows[key] = p.rule.factors.input_rows is not None
        for name, (s, c) in reduce_sums.items():
            abar = s / c.clamp(min=1).unsqueeze(-1)
            self._add(self.A, name, abar, 1, _reduce_add_A, input_rows[name] and self._rows_allowed(name, abar.shape[1]))

    def add_vector(
        self, prepared: list[Prepared], outputs: Tensor, v: Tensor, w: float, batch_size: int, known: dict | None = None
    ) -> None:
        """Output-gradient factors and hook-based diagonal entries for one backprop vector.

        ``known``: gradients of ``v · outputs`` w.r.t. aligned calls' outputs already
        computed (keyed by ``id(call)``, e.g. by the probes), not computed again."""
        plan, acc_dtype = self.plan, self.dtype
        known = known or {}
        grads = {id(p): known[id(p.call)] for p in prepared if not p.shared and id(p.call) in known}
        aligned = [p for p in prepared if not p.shared and id(p) not in grads]
        shared = [p for p in prepared if p.shared]
        if aligned:
            gs = torch.autograd.grad(outputs, [p.call.output for p in aligned], v, retain_graph=True, allow_unused=True)
            grads.update({id(p): g for p, g in zip(aligned, gs)})
        if shared:
            gs = batched_output_grads(outputs, [p.call.output for p in shared], v, self.chunk_size)
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
            name, key = p.call.name, stream_key(p.call)
            g = p.output_grads(grad)
            if name in plan.kronecker:
                ga = g.to(acc_dtype)
                if self._sharing(p.rule) == WeightSharing.EXPAND:
                    mask = p.mask if p.mask is None or p.mask.shape[0] == ga.shape[0] else p.mask.expand(ga.shape[0], -1)
                    gv = (ga[mask] if mask is not None else ga).reshape(-1, ga.shape[-1])  # valid positions
                    self._add(self.G, key, gv, w, _expand_add, self._rows_allowed(key, gv.shape[1]))
                else:
                    s = ga.sum(1) if p.mask is None else torch.einsum("bp,bpo->bo", p.mask.to(acc_dtype), ga)
                    ghat[key] = ghat[key] + s if key in ghat else s
            if name in plan.hook_diag:
                pairs = plan.hook_diag[name]
                if p.rule.squared_grads is not None and all(single[pname] for _, pname in pairs):
                    # the only contribution to these parameters: square and sum directly
                    for attr, sq in p.rule.squared_grads(p.call.module, p.a, g, acc_dtype).items():
                        for attr2, pname in pairs:
                            if attr2 == attr:
                                self.diag[pname].add_(sq, alpha=w)
                    continue
                pe = p.rule.per_example_grads(p.call.module, p.a, g)
                for attr, pname in pairs:
                    if attr in pe:
                        _add_per_example(per_example, pname, pe[attr], batch_size, plan.params[pname])
        for name, s in ghat.items():
            self._add(self.G, name, s, w, _reduce_add_G, self._rows_allowed(name, s.shape[1]))
        for pname, pe in per_example.items():
            _add_squared_sum(self.diag[pname], pe, w)

    def add_vmap_diagonal(self, model: nn.Module, inputs, v: Tensor, w: float, call) -> None:
        """Per-example gradients of ``v_n · f(x_n)`` for the parameters left to torch.func.

        ``call(model, params, x)`` returns the logits of a one-example input ``x``."""
        from torch.func import functional_call, grad, vmap

        plan = self.plan
        frozen = {n: p.detach() for n, p in model.named_parameters()}
        frozen.update({n: b for n, b in model.named_buffers()})
        subset = {n: plan.params[n].detach() for n in plan.vmap_diag}

        def contribution(sub, x, vn):
            x1 = torch.utils._pytree.tree_map(lambda t: t.unsqueeze(0) if isinstance(t, Tensor) else t, x)
            out = call(lambda *args, **kwargs: functional_call(model, {**frozen, **sub}, args, kwargs), x1)
            return (out * vn.unsqueeze(0)).sum()

        per_example_grad = vmap(grad(contribution), in_dims=(None, 0, 0), chunk_size=self.chunk_size)
        try:
            pe = per_example_grad(subset, inputs, v)
        except Exception as err:  # pragma: no cover - depends on the model
            raise RuntimeError(
                f"per-example gradients by torch.func.vmap failed for parameters {plan.vmap_diag[:5]} "
                f"(modules without a curvature rule): {err}. Register a rule in "
                "kfac_tutorial.curvature.rules for that module type, or freeze those parameters."
            ) from err
        for n, g in pe.items():
            self.diag[n] += w * g.to(self.dtype).square().sum(0)

    def _combined(self, rule, module: nn.Module, keys: list, expand: bool, num_examples: int, wname, bname) -> LayerFactors:
        """The factors of a module recorded in several streams: each stream's ``(A, G)``
        normalised as a single-stream layer's (2-D ``A``), combined by the rule."""
        parts = {}
        weight = rule.weight_of(module)
        for key in keys:
            a_mat, g_mat = dense_sum(self.A.get(key)), dense_sum(self.G.get(key))  # stream keys are never rows
            if a_mat is None or g_mat is None:  # never reached the outputs: zero curvature
                a_shape, g_shape = rule.factors.shapes(tuple(weight.shape), bname is not None)
                g_mat = torch.zeros(g_shape, dtype=self.dtype, device=weight.device)
                a_mat = torch.zeros(a_shape, dtype=self.dtype, device=weight.device) if a_mat is None else a_mat
            norm_A = self.positions[key] if expand else num_examples
            parts[key[1]] = (symmetrized(a_mat, 0.5 / max(norm_A, 1)), symmetrized(g_mat, 0.5 / num_examples))
        return rule.combine_streams(module, parts, wname, bname)

    def finish(self, num_examples: int, modules: dict[str, nn.Module]) -> tuple[dict[str, LayerFactors], dict[str, Tensor]]:
        """Normalised factors ``{module: LayerFactors}`` and diagonals ``{parameter: Tensor}``."""
        plan = self.plan
        factors = {}
        for mname, (wname, bname) in plan.kronecker.items():
            module = modules[mname]
            rule = rule_for(module)
            rule_factors = rule.factors
            expand = rule_factors.expand_only or self.weight_sharing == WeightSharing.EXPAND
            keys = self.factor_keys(mname)
            if keys != [mname]:  # several input streams (see LayerRule.combine_streams)
                factors[mname] = self._combined(rule, module, keys, expand, num_examples, wname, bname)
                continue
            norm_A = self.positions[mname] if expand else num_examples
            a_mat, g_mat = self.A.get(mname), self.G.get(mname)
            if a_mat is None or g_mat is None:  # never reached the outputs: zero curvature
                weight = rule.weight_of(module)
                a_shape, g_shape = rule_factors.shapes(tuple(weight.shape), bname is not None)
                device = weight.device
                g_mat = torch.zeros(g_shape, dtype=self.dtype, device=device)
                if a_mat is None:
                    a_mat = torch.zeros(a_shape, dtype=self.dtype, device=device)
            # normalise and make exactly symmetric (the penalty's gradient relies on it) in one
            # pass; a sum held as rows becomes its exact root R (R Rᵀ symmetric by construction)
            roots = {"A_root": isinstance(a_mat, RowSum), "G_root": isinstance(g_mat, RowSum)}
            if roots["A_root"]:
                a_mat = a_mat.root(1.0 / max(norm_A, 1))
            elif a_mat.dim() == 2:
                a_mat = symmetrized(a_mat, 0.5 / max(norm_A, 1))
            else:
                a_mat = a_mat / max(norm_A, 1)
            g_mat = g_mat.root(1.0 / num_examples) if roots["G_root"] else symmetrized(g_mat, 0.5 / num_examples)
            factors[mname] = rule_factors(rule.kind, a_mat, g_mat, wname, bname, **roots)
        in_kron = {n for pair in plan.kronecker.values() for n in pair if n is not None}
        diagonal = {n: d.div_(num_examples) for n, d in self.diag.items() if n not in in_kron}
        return factors, diagonal
