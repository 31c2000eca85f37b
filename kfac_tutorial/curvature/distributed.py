"""Combining the curvature statistics of several processes (``torch.distributed``).

Under ``torchrun`` or ``accelerate launch`` every rank estimates on its own shard of the
batches. Before anything is normalised, the *unnormalised* sums of every rank of the
process group are added up (one ``all_reduce(SUM)`` per bucket), so that each rank then
normalises the sums over the union of the shards, exactly as one process would over all
batches (up to the order of floating-point additions), and every rank ends with the same
state. What is summed (notation of :mod:`.estimate`; ``r`` runs over the ranks):

* the example count ``N = Σ_r N_r``;
* per Kronecker layer, the input statistic ``Σ ā āᵀ`` (``reduce``: ``Σ_n ā_n ā_nᵀ``;
  ``expand``: ``Σ_n Σ_s a_s a_sᵀ``; embeddings: the ``(V,)`` token counts), the number of
  valid positions that normalises ``expand``, and ``Σ_n Σ_v w_v ĝ ĝᵀ``;
* per diagonal parameter, ``Σ_n Σ_v w_v (per-example gradient)²``.

Uneven shards are therefore weighted by their sizes (the mean over the union, not the
mean of the ranks' means). Symmetric factors travel as their packed upper triangles
(``torch.triu_indices``: ``d(d+1)/2`` numbers instead of ``d²``), vectors as they are;
:func:`payload_numel` counts the numbers sent. Labels of the ``mc`` Fisher are drawn
from a generator seeded per rank by :func:`rank_seed` (rank 0 keeps the seed itself, so
a one-process fit is unchanged).

Every rank of the group must call the fit (a collective): a fit called on rank 0 only
would wait for the others forever; pass ``distributed=False`` to fit on one rank alone.
This module only uses ``torch.distributed`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .accumulate import Accumulator

__all__ = ["communication_report", "group_for", "payload_numel", "rank_of", "rank_seed", "reduce_accumulator", "world_size"]

BUCKET_NUMEL = 1 << 24  # numbers per all_reduce call (64 MiB of float32)


def group_for(distributed: bool = True, process_group: Any = None) -> Optional[Any]:
    """The process group a fit combines its statistics over, or ``None`` for a local fit.

    ``None`` when ``distributed`` is False, when ``torch.distributed`` is not initialised
    (a plain one-process run), or when the group has a single rank. ``process_group=None``
    means the default group (``dist.group.WORLD``)."""
    if not distributed:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        if process_group is not None:
            raise RuntimeError(
                "process_group= was given but torch.distributed is not initialised; "
                "call torch.distributed.init_process_group first (torchrun does it for you)"
            )
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def rank_of(group: Any) -> int:
    """This process's rank in ``group`` (0 for a local fit, ``group=None``)."""
    if group is None:
        return 0
    import torch.distributed as dist

    return dist.get_rank(group)


def world_size(group: Any) -> int:
    """Number of ranks in ``group`` (1 for a local fit)."""
    if group is None:
        return 1
    import torch.distributed as dist

    return dist.get_world_size(group)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s label generator, derived from the fit's ``seed``.

    Rank 0 keeps ``seed`` (a one-process fit draws the labels it always drew); other ranks
    get the first 63 bits of ``sha256("seed:rank")``, independent streams that no small
    seed of another fit collides with."""
    if rank == 0:
        return int(seed)
    digest = hashlib.sha256(f"kfac_tutorial:{int(seed)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _is_symmetric_factor(t: Tensor) -> bool:
    return t.dim() == 2 and t.shape[0] == t.shape[1]


def pack_symmetric(m: Tensor) -> Tensor:
    """The upper triangle (row-major, ``torch.triu_indices`` order) of ``(m + mᵀ)/2``."""
    d = m.shape[0]
    i, j = torch.triu_indices(d, d, device=m.device)
    return ((m[i, j] + m[j, i]) * 0.5).contiguous()


def unpack_symmetric(v: Tensor, d: int) -> Tensor:
    """The ``(d, d)`` symmetric matrix whose upper triangle is ``v``."""
    i, j = torch.triu_indices(d, d, device=v.device)
    m = v.new_zeros(d, d)
    m[i, j] = v
    m[j, i] = v
    return m


def payload_numel(shapes: list[tuple[int, ...]], packed: bool = True) -> int:
    """Numbers one rank sends for statistics of these shapes: square matrices as upper
    triangles (``packed``) or whole, anything else whole."""
    total = 0
    for shape in shapes:
        if packed and len(shape) == 2 and shape[0] == shape[1]:
            total += shape[0] * (shape[0] + 1) // 2
        else:
            n = 1
            for s in shape:
                n *= s
            total += n
    return total


def communication_report(model, kronecker: bool = True, diagonal_modules=(), bytes_per_number: int = 4) -> dict:
    """What one rank sends per fit of ``model`` (no data needed: the plan's shapes).

    Returns ``{"packed_bytes", "full_bytes", "factor_bytes", "kronecker_layers",
    "diagonal_numbers"}``: the all-reduced statistics with symmetric factors as upper
    triangles (what :func:`reduce_accumulator` sends) and as whole matrices, against the
    bytes of the factors and diagonals a state holds (``memory_bytes()``, full factors),
    at ``bytes_per_number`` (4: float32 statistics of a float32 model); the example and
    position counts (float64) are included in both payloads. Parameters a fit leaves to
    ``torch.func`` (used functionally) are counted as diagonals too, as the fit does."""
    from .model_io import unwrap
    from .plan import Plan
    from .rules import rule_for

    model = unwrap(model)
    plan = Plan(model, kronecker, tuple(diagonal_modules))
    shapes = []
    for mname, (_, bname) in plan.kronecker.items():
        module = plan.modules[mname]
        rule = rule_for(module)
        shapes.extend(rule.factors.shapes(tuple(rule.weight_of(module).shape), bname is not None))
    in_kron = {n for pair in plan.kronecker.values() for n in pair if n is not None}
    diagonal = sum(p.numel() for n, p in plan.params.items() if n not in in_kron)
    counts = 8 * (1 + len(plan.kronecker))
    packed, full = payload_numel(shapes, packed=True), payload_numel(shapes, packed=False)
    return {
        "packed_bytes": bytes_per_number * (packed + diagonal) + counts,
        "full_bytes": bytes_per_number * (full + diagonal) + counts,
        "factor_bytes": bytes_per_number * (full + diagonal),
        "kronecker_layers": len(plan.kronecker),
        "diagonal_numbers": diagonal,
    }


def _all_reduce_flat(tensors: list[Tensor], group: Any) -> list[Tensor]:
    """Sum flat tensors (one dtype and device) over ``group``, in buckets of
    :data:`BUCKET_NUMEL` numbers; returns the summed tensors."""
    import torch.distributed as dist

    out: list[Tensor] = []
    start = 0
    while start < len(tensors):
        stop, numel = start, 0
        while stop < len(tensors) and (stop == start or numel + tensors[stop].numel() <= BUCKET_NUMEL):
            numel += tensors[stop].numel()
            stop += 1
        flat = torch.cat([t.reshape(-1) for t in tensors[start:stop]])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        out.extend(flat.split([t.numel() for t in tensors[start:stop]]))
        start = stop
    return out


def _check_same_structure(entries: list[tuple[str, tuple]], group: Any, num_examples: int) -> None:
    """Every rank must send the same statistics in the same order (a rank whose plan
    differs, e.g. because it saw no batch, would otherwise add unrelated numbers)."""
    import torch.distributed as dist

    digest = hashlib.sha1(repr(entries).encode()).hexdigest()
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (digest, num_examples), group=group)
    if len({d for d, _ in gathered}) > 1:
        empty = [r for r, (_, n) in enumerate(gathered) if n == 0]
        hint = (
            (f" ranks {empty} saw no batch; give every rank at least one batch (e.g. a DistributedSampler with drop_last=False)")
            if empty
            else ""
        )
        raise RuntimeError(
            "the ranks estimated different statistics (different models, "
            "trainable parameters or diagonal_modules on different ranks?);" + hint
        )


def reduce_accumulator(acc: "Accumulator", num_examples: int, group: Any) -> int:
    """Sum ``acc``'s unnormalised statistics and ``num_examples`` over ``group``, in place.

    After the call ``acc.A``, ``acc.G``, ``acc.positions`` and ``acc.diag`` hold the sums
    over every rank (symmetric factors symmetrised, ``(M + Mᵀ)/2``), and the union's
    example count is returned; :meth:`Accumulator.finish` then normalises as usual. A
    Kronecker layer that this rank's batches never reached contributes zeros. Sums held
    as rows are made dense first (a distributed fit's factors are dense)."""
    from .rules import rule_for

    plan = acc.plan
    acc.densify()  # sums held as rows (storage="auto"): ranks may hold different row counts
    for mname, (_, bname) in plan.kronecker.items():
        module = plan.modules[mname]
        rule = rule_for(module)
        weight = rule.weight_of(module)
        a_shape, g_shape = rule.factors.shapes(tuple(weight.shape), bname is not None)
        device = weight.device
        for key in acc.factor_keys(mname):  # the module's name, or its input streams' keys
            if key not in acc.A:
                acc.A[key] = torch.zeros(a_shape, dtype=acc.dtype, device=device)
            if key not in acc.G:
                acc.G[key] = torch.zeros(g_shape, dtype=acc.dtype, device=device)

    # (kind, key, tensor) in one fixed order: the plan's, the same on every rank
    items: list[tuple[str, object, Tensor]] = []
    keys = [key for mname in plan.kronecker for key in acc.factor_keys(mname)]
    for key in keys:
        items.append(("A", key, acc.A[key]))
        items.append(("G", key, acc.G[key]))
    in_kron = {n for pair in plan.kronecker.values() for n in pair if n is not None}
    items.extend(("diag", n, d) for n, d in acc.diag.items() if n not in in_kron)  # finish drops the others
    _check_same_structure([(k, n, tuple(t.shape), str(t.dtype)) for k, n, t in items], group, num_examples)

    payload = [pack_symmetric(t) if k != "diag" and _is_symmetric_factor(t) else t.reshape(-1) for k, n, t in items]
    by_kind: dict[tuple, list[int]] = {}
    for index, t in enumerate(payload):
        by_kind.setdefault((t.dtype, t.device), []).append(index)
    summed: list[Optional[Tensor]] = [None] * len(payload)
    for indices in by_kind.values():
        for index, t in zip(indices, _all_reduce_flat([payload[i] for i in indices], group)):
            summed[index] = t
    for (kind, name, original), total in zip(items, summed):
        value = (
            unpack_symmetric(total, original.shape[0])
            if kind != "diag" and _is_symmetric_factor(original)
            else total.reshape(original.shape)
        )
        if kind == "A":
            acc.A[name] = value
        elif kind == "G":
            acc.G[name] = value
        else:
            acc.diag[name] = value

    # example and position counts, exact in float64 up to 2⁵³
    names = keys
    device = next(iter(acc.diag.values())).device if acc.diag else torch.device("cpu")
    counts = torch.tensor([float(num_examples)] + [float(acc.positions[n]) for n in names], dtype=torch.float64, device=device)
    import torch.distributed as dist

    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    for n, c in zip(names, counts[1:].tolist()):
        acc.positions[n] = c
    return int(round(float(counts[0])))
