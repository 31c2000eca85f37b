"""One pass over the data that estimates Kronecker factors and diagonal Fisher entries.

Definitions (``N`` examples; backprop vectors ``v`` with weights ``w_v`` from
:mod:`.flavours`; ``g_s`` = gradient of ``v · f_n`` w.r.t. the layer output at
position ``s``; ``a_s`` = layer input at ``s`` with a 1 appended when the layer has a
trainable bias):

* Positions of an example. ``S_n`` is every position that example ``n``'s outputs
  depend on, over every call of the layer in the forward pass: a call whose rows are
  the batch's examples (checked once per call site by a probe, :mod:`.probes`: row 0
  of the call feeds example 0's outputs only, and they see no other row) contributes
  row ``n``'s positions; any other call
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

Several processes (``torch.distributed`` initialised, ``distributed=True``): each rank
runs this pass on its own batches, then the unnormalised sums and counts are added up
over the ranks before normalising (:mod:`.distributed`), so every rank returns the
estimate over the union of the shards.

The pass is split by concept: :mod:`.plan` (who gets what), :mod:`.capture` (recording
calls), :mod:`.probes` (alignment, explained gradients, cached), :mod:`.accumulate`
(the sums), :mod:`.factors` (the factor types), :mod:`.rules` (one rule per layer type).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from ..progress import progress_bar as tqdm
from .accumulate import Accumulator, Storage, WeightSharing, symmetrized
from .capture import CallRecorder
from .factors import LayerFactors
from .flavours import IGNORE_INDEX, FisherType, Likelihood, backprop_vectors
from .distributed import group_for, rank_of, rank_seed, reduce_accumulator
from .model_io import batch_size_of, has_non_finite, logits_of, takes_keywords, to_device, unwrap
from .plan import Plan
from .probes import (  # noqa: F401  (_PROBE_CACHE re-exported from its former home)
    _PROBE_CACHE,
    clear_probe_cache,
    model_cache,
    prepare_calls,
    probe_calls,
    structure_key,
    unexplained_parameters,
    usable_probe_vector,
)

__all__ = ["DiagonalFallbackWarning", "Estimate", "LayerFactors", "Storage", "WeightSharing", "clear_probe_cache", "estimate"]

_symmetrized = symmetrized  # former private name (tests of the in-place symmetrisation)


class DiagonalFallbackWarning(UserWarning):
    """Some modules of a KFAC fit hold a diagonal Fisher instead of Kronecker factors."""


@dataclass
class Estimate:
    """The result of :func:`estimate`: normalised factors and diagonals."""

    num_examples: int
    factors: dict[str, LayerFactors] = field(default_factory=dict)
    diagonal: dict[str, Tensor] = field(default_factory=dict)


def _check_batch(batch_index: int, inputs, outputs: Tensor, targets, likelihood: Likelihood, batch_size_in: int) -> None:
    """Clear errors for what would otherwise fail deep inside torch."""
    if outputs.shape[0] != batch_size_in:
        raise ValueError(f"model outputs have {outputs.shape[0]} rows but the inputs have {batch_size_in} examples")
    if has_non_finite(inputs):
        raise ValueError(f"batch {batch_index}: the inputs contain NaN or inf; clean or drop those examples before fitting")
    if not bool(torch.isfinite(outputs).all()):
        raise ValueError(
            f"batch {batch_index}: the model's logits contain NaN or inf (diverged weights, or "
            "-inf used as a mask?); the Fisher needs finite logits"
        )
    if likelihood is Likelihood.CATEGORICAL and isinstance(targets, Tensor) and targets.shape == outputs.shape[:-1]:
        num_classes = outputs.shape[-1]
        bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= num_classes))
        if bool(bad.any()):
            raise ValueError(
                f"batch {batch_index}: label {int(targets[bad][0])} is out of range for {num_classes} "
                f"classes (labels are class indices 0..{num_classes - 1}, or {IGNORE_INDEX} to ignore)"
            )


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
    storage: str = Storage.AUTO,
    diagonal_modules: Sequence[str] = (),
    progress: bool = False,
    chunk_size: int = 8,
    description: str = "Fisher",
    strict: bool = False,
    distributed: bool = True,
    process_group=None,
) -> Estimate:
    """Estimate the mean per-example Fisher of ``model`` over ``batches`` (see module doc).

    With ``kronecker=True``, modules whose parameters fall back to a diagonal Fisher
    (no rule for the type, an unsupported configuration, a weight used functionally or
    shared) are named in one :class:`DiagonalFallbackWarning`; ``strict=True`` raises a
    ``ValueError`` instead.

    ``model`` may be wrapped (DDP, ``torch.compile``): the pass runs on the module it wraps
    (:func:`.model_io.unwrap`). When ``torch.distributed`` is initialised and
    ``distributed`` is True, every rank of ``process_group`` (default: the default group)
    must call this with its own batches: the result is the estimate over all ranks'
    batches, the same on every rank (:mod:`.distributed`); ``mc`` labels come from the
    generator seeded with ``rank_seed(seed, rank)``.

    ``storage``: ``"auto"`` holds a 2-D factor of side ``d ≥ 64`` whose rows number at
    most ``d/2`` as its exact root (:mod:`.accumulate`), ``"dense"`` always as a matrix."""
    if storage not in Storage.CHOICES:
        raise ValueError(f"storage={storage!r} is not valid; choose one of {Storage.CHOICES}")
    model = unwrap(model)
    group = group_for(distributed, process_group)
    plan = Plan(model, kronecker, diagonal_modules)
    if not plan.params:
        raise ValueError("the model has no trainable parameters (requires_grad=True): nothing to estimate.")
    device = next(iter(plan.params.values())).device
    acc_dtype = torch.float64 if any(p.dtype == torch.float64 for p in plan.params.values()) else torch.float32
    generator = torch.Generator(device=device).manual_seed(rank_seed(seed, rank_of(group)))
    probe_generator = torch.Generator(device=device).manual_seed(seed + 7919)
    aligned_cache: dict[tuple[str, int], bool] = {}
    cache = model_cache(model)
    acc = None
    num_examples = 0
    was_training = model.training
    model.eval()
    total = len(batches) if hasattr(batches, "__len__") else None
    keywords = None

    def logits_fn(fn, x):
        return logits_of(fn(**x) if keywords else fn(x))

    try:
        recorder = CallRecorder(model, plan.recorded)
        with recorder:
            for batch_index, batch in enumerate(tqdm(batches, total=total, disable=not progress, desc=description, leave=False)):
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise TypeError("each batch must be a pair (inputs, targets); use targets=None for exact/mc Fisher.")
                inputs, targets = to_device(batch[0], device), to_device(batch[1], device)
                if keywords is None:
                    keywords = takes_keywords(model, inputs)
                examples = batch_size_of(inputs)

                outputs = _forward(model, inputs, examples, recorder, logits_fn)
                if batch_index == 0 and recorder.expanded:
                    outputs = _check_broadcast(model, inputs, examples, outputs, recorder, cache, logits_fn)
                _check_batch(batch_index, inputs, outputs, targets, likelihood, examples)
                if batch_index > 0:
                    _check_refused(recorder, plan, batch_index)
                batch_size = outputs.shape[0]
                calls = recorder.calls
                for call in calls:
                    call.check_not_modified()
                prepared = None
                vectors = backprop_vectors(outputs, targets, fisher, likelihood, mc_samples, generator)
                reused: dict[int, Tensor] = {}
                if batch_index == 0:
                    # parameters whose gradient the recorded calls do not fully explain (used
                    # functionally, modules never called, ...) fall back to torch.func
                    cache_key = (structure_key(model, kronecker, diagonal_modules, calls, batch_size, inputs), likelihood)
                    cached = cache.get(cache_key)
                    if cached is not None:
                        unexplained, aligned_cache = cached[0], dict(cached[1])
                    else:
                        # mc / empirical: the probe passes double as the first vector's backward pass
                        first = next(vectors, None) if fisher in (FisherType.MC, FisherType.EMPIRICAL) else None
                        if first is not None:
                            vectors = itertools.chain([first], vectors)
                        probe_vector = first[0].to(outputs.dtype) if first is not None else None
                        if probe_vector is not None and not usable_probe_vector(probe_vector):
                            probe_vector = None
                        prepared, unexplained, reused = probe_calls(
                            plan, calls, outputs, batch_size, aligned_cache, probe_generator, probe_vector
                        )
                        # a call its rule could not explain (MHA as cross-attention): whatever the probe says
                        unexplained = set(unexplained).union(
                            *(plan.own_params(m) for m in recorder.refused if m in plan.recorded)
                        )
                    if unexplained:
                        plan = Plan(
                            model, kronecker, diagonal_modules, force_vmap=frozenset(unexplained), refused=recorder.refused
                        )
                        calls = [c for c in calls if c.name in plan.recorded]
                        prepared = None
                    cache[cache_key] = (frozenset(unexplained), dict(aligned_cache))
                    _report_fallback(plan, strict)
                    acc = Accumulator(plan, weight_sharing, acc_dtype, device, chunk_size, storage)
                if prepared is None:
                    prepared = prepare_calls(calls, outputs, batch_size, aligned_cache, probe_generator)
                acc.add_inputs(prepared, batch_size)
                for v, w in vectors:
                    acc.add_vector(prepared, outputs, v.to(outputs.dtype), w, batch_size, known=reused)
                    reused = {}  # only the first vector's
                    if plan.vmap_diag:
                        recorder.active = False
                        try:
                            acc.add_vmap_diagonal(model, inputs, v, w, logits_fn)
                        finally:
                            recorder.active = True
                num_examples += batch_size
                del outputs, prepared, calls
                recorder.reset()
    finally:
        model.train(was_training)
    if group is not None:
        if acc is None:  # this rank saw no batch: it still adds its zeros to the others' sums
            acc = Accumulator(plan, weight_sharing, acc_dtype, device, chunk_size, storage)
        num_examples = reduce_accumulator(acc, num_examples, group)
    if num_examples == 0:
        raise ValueError("batches is empty: the Fisher needs at least one example.")
    factors, diagonal = acc.finish(num_examples, plan.modules)
    return Estimate(num_examples=num_examples, factors=factors, diagonal=diagonal)


def _forward(model: nn.Module, inputs, examples: int, recorder: CallRecorder, logits_fn) -> Tensor:
    """One recorded forward pass: the logits, still attached to the graph."""
    recorder.reset()
    recorder.batch_size = examples
    if isinstance(inputs, dict) and isinstance(inputs.get("attention_mask"), Tensor):
        recorder.push_mask(inputs["attention_mask"])
    with torch.enable_grad():
        return logits_fn(model, inputs)


def _check_broadcast(model, inputs, examples, outputs, recorder, cache, logits_fn) -> Tensor:
    """Verify once per model that expanding broadcast calls leaves the logits unchanged;
    if not, switch the expansion off and run the forward pass again.

    First on the batch's first 2 examples: a plain (unexpanded) forward of them must give
    the logits of a recorded (expanded) forward of them and the first 2 rows of the whole
    batch's logits. Only if that does not show agreement (or the inputs cannot be sliced)
    on the whole batch: a plain forward of it against the logits already computed."""
    key = (
        "broadcast",
        tuple((n, id(p)) for n, p in model.named_parameters()),
        tuple(sorted(inputs)) if isinstance(inputs, dict) else type(inputs).__name__,
    )
    ok = cache.get(key)
    if ok is None:
        small = _first_examples(inputs, examples, 2) if examples > 2 else None
        if small is not None:
            with recorder.aside():
                expanded = _forward(model, small, 2, recorder, logits_fn).detach()
                if recorder.expanded:
                    reference = _plain_logits(model, small, recorder, logits_fn)
                    # and the whole batch's first 2 rows (a forward whose expansion matters
                    # only beyond 2 rows); a model whose rows depend on the batch falls through
                    ok = _same_logits(reference, expanded) and _same_logits(reference, outputs[:2].detach())
        if not ok:
            ok = _same_logits(_plain_logits(model, inputs, recorder, logits_fn), outputs.detach())
        cache[key] = ok
    if ok:
        return outputs
    recorder.broadcast = False
    return _forward(model, inputs, examples, recorder, logits_fn)


def _plain_logits(model, inputs, recorder, logits_fn) -> Tensor:
    """The logits without recording (so without expanding any call), no graph."""
    recorder.active = False
    try:
        with torch.no_grad():
            return logits_fn(model, inputs)
    finally:
        recorder.active = True


def _same_logits(reference: Tensor, out: Tensor) -> bool:
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return reference.shape == out.shape and bool(torch.allclose(reference, out, rtol=1e-5, atol=1e-6 * scale + 1e-12))


def _first_examples(inputs, examples: int, n: int):
    """The first ``n`` examples of a tensor or a dict of tensors whose leading size is the
    batch's (other dict entries as they are); ``None`` when it cannot tell."""
    if isinstance(inputs, Tensor):
        return inputs[:n] if inputs.dim() > 0 and inputs.shape[0] == examples else None
    if not isinstance(inputs, dict):
        return None
    out = {}
    for k, v in inputs.items():
        if isinstance(v, Tensor) and v.dim() > 0:
            if v.shape[0] != examples:
                return None
            v = v[:n]
        out[k] = v
    return out


def _check_refused(recorder: CallRecorder, plan: Plan, batch_index: int) -> None:
    """A later batch's call that a rule cannot explain, of a module the first batch's calls
    were all explained for: its factors would silently miss that call."""
    bad = {m: r for m, r in recorder.refused.items() if m in plan.recorded}
    if bad:
        lines = "; ".join(f"'{m}': {r}" for m, r in bad.items())
        raise ValueError(
            f"batch {batch_index}: calls the curvature rule cannot explain, unlike the first batch's ({lines}). "
            f"Pass diagonal_modules={sorted(bad)} to hold these modules diagonally, or call them the same "
            "way in every batch."
        )


def _report_fallback(plan: Plan, strict: bool) -> None:
    message = plan.fallback_message()
    if message is None:
        return
    if strict:
        raise ValueError(message.replace("strict=True raises instead of warning", "or pass strict=False to accept the fallback"))
    warnings.warn(message, DiagonalFallbackWarning, stacklevel=4)
