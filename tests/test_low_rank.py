"""Low-rank (root) factor storage and packed state files (issue 6, benchmarks).

Claims checked: ``low_rank(tol=0)`` keeps the penalty, its gradient and ``to_dense`` of
the full-rank state (rank-deficient factors: few examples); ``low_rank(tol)`` keeps at
least ``1 − tol`` of every layer's ``tr(G ⊗ A)`` and stays close on random Δθ; roots
survive a save/load round trip bit for bit; files store symmetric factors as upper
triangles (half the bytes) and still read files written with dense factors; a damaged
root is refused with a message naming it; merging a low-rank state equals merging the
full one. The ``tol=0``, round-trip and merge checks also run over every layer type of
``tests/cases.py``.
"""

import json
import struct

import pytest
import torch

import kfac_tutorial as kt
from kfac_tutorial.persistence import StateFileError, write_state

try:
    from . import models as M
    from .cases import LAYER_CASES, builder
except ImportError:  # pragma: no cover
    import models as M
    from cases import LAYER_CASES, builder


def _wide_mlp(n=3):
    return M.mlp(n=n, dims=(9, 12, 10, 4))


MAKERS = {
    "mlp_few_examples": (_wide_mlp, {}),
    "embedding_layernorm": (lambda: M.masked_pool_classifier(n=2), {}),
    "tiny_bert_reduce": (lambda: M.bert_linker(n=2), {}),
    **{f"case_{c.name}": (builder(c), {}) for c in LAYER_CASES},  # every layer type
}


def _penalty_and_grad(state, model):
    model.zero_grad(set_to_none=True)
    pen = state.penalty(model)
    pen.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad and p.grad is not None])
    return pen.detach(), grads


@pytest.mark.parametrize("make,kw", MAKERS.values(), ids=MAKERS.keys())
def test_tol_zero_low_rank_keeps_penalty_gradient_and_dense_matrix(make, kw):
    model, batches = make()
    full = kt.KFAC.fit(model, batches, fisher="exact", progress=False, **kw)
    low = full.low_rank(tol=0.0, max_fraction=1.0)
    assert any(f.A_root or f.G_root for f in low.factors.values())
    M.perturb(model, scale=0.3)
    p_full, g_full = _penalty_and_grad(full, model)
    p_low, g_low = _penalty_and_grad(low, model)
    assert torch.allclose(p_low, p_full, rtol=1e-9, atol=1e-12)
    assert torch.allclose(g_low, g_full, rtol=1e-8, atol=1e-10)
    assert torch.allclose(low.to_dense(model), full.to_dense(model), rtol=1e-8, atol=1e-10)


def test_rank_deficient_factors_are_stored_smaller_with_default_max_fraction():
    model, batches = _wide_mlp(n=2)
    full = kt.KFAC.fit(model, batches, fisher="empirical", progress=False)
    low = full.low_rank()
    assert low.memory_bytes() < full.memory_bytes()
    for name, f in low.factors.items():
        if f.A_root:  # A = E[ā āᵀ] from 2 examples has rank <= 2
            assert f.A.shape[1] <= 2, name


def test_tolerance_keeps_the_trace_of_every_kronecker_block_and_is_close_on_random_steps():
    torch.manual_seed(0)
    model, batches = M.mlp(n=64, dims=(20, 30, 25, 6))
    full = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    tol = 0.05
    low = full.low_rank(tol=tol, max_fraction=1.0)
    assert any(f.A.shape[1] < f.A.shape[0] for f in low.factors.values() if f.A_root)
    for name, f in low.factors.items():
        g = full.factors[name]
        kept = torch.trace(f.full_A()) * torch.trace(f.full_G())
        assert kept >= (1 - tol) * torch.trace(g.A) * torch.trace(g.G) - 1e-12, name
        assert kept <= torch.trace(g.A) * torch.trace(g.G) + 1e-12, name
    M.perturb(model, scale=0.3)
    p_full, p_low = full.penalty(model).detach(), low.penalty(model).detach()
    assert p_low <= p_full + 1e-12  # dropping eigenvalues only removes curvature
    assert p_low >= (1 - 3 * tol) * p_full


ROUND_TRIP = {"tiny_bert": lambda: M.bert_linker(n=2), **{f"case_{c.name}": builder(c) for c in LAYER_CASES}}


@pytest.mark.parametrize("make", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_low_rank_state_round_trips_bit_for_bit(tmp_path, make):
    model, batches = make()
    low = kt.KFAC.fit(model, batches, fisher="exact", progress=False).low_rank(max_fraction=1.0)
    path = tmp_path / "low.safetensors"
    low.save(path)
    M.perturb(model, scale=0.2)
    loaded = kt.load(path, model)
    assert isinstance(loaded, kt.KFAC)
    assert torch.equal(loaded.penalty(model), low.penalty(model))
    assert loaded.memory_bytes() == low.memory_bytes()
    for name, f in low.factors.items():
        assert (loaded.factors[name].A_root, loaded.factors[name].G_root) == (f.A_root, f.G_root)
        assert torch.equal(loaded.factors[name].G, f.G)


def _factor_entries(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def test_files_store_symmetric_factors_as_upper_triangles(tmp_path):
    model, batches = _wide_mlp()
    est = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    path = tmp_path / "s.safetensors"
    est.save(path)
    shapes = _factor_entries(path)
    d_in = 9 + 1
    assert shapes["A/0"] == [d_in * (d_in + 1) // 2]
    assert shapes["G/0"] == [12 * 13 // 2]
    loaded = kt.KFAC.load(path, model)
    for name, f in est.factors.items():
        assert torch.equal(loaded.factors[name].A, f.A) and torch.equal(loaded.factors[name].G, f.G)


def test_files_written_with_dense_factors_still_load(tmp_path):
    """Format 1 (no storage fields, dense (d, d) factors) reads unchanged."""
    model, batches = _wide_mlp()
    est = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    meta = est._meta()
    for spec in meta["factors"]:
        spec.pop("A_storage"), spec.pop("G_storage")
    tensors = {f"anchor/{n}": a for n, a in est.anchor.items()}
    tensors.update({f"diagonal/{n}": d for n, d in est.diagonal.items()})
    for m, f in est.factors.items():
        tensors[f"A/{m}"], tensors[f"G/{m}"] = f.A, f.G
    path = tmp_path / "v1.safetensors"
    write_state(path, tensors, meta)
    loaded = kt.KFAC.load(path, model)
    assert torch.equal(loaded.to_dense(model), est.to_dense(model))


def test_a_root_with_the_wrong_shape_is_refused_naming_it(tmp_path):
    model, batches = _wide_mlp(n=2)
    low = kt.KFAC.fit(model, batches, fisher="exact", progress=False).low_rank(max_fraction=1.0)
    path = tmp_path / "bad.safetensors"
    tensors, meta = low._tensors(), low._meta()
    tensors["A/0"] = torch.zeros(3, 2, dtype=tensors["A/0"].dtype)
    write_state(path, tensors, meta)
    with pytest.raises(StateFileError, match="A/0"):
        kt.KFAC.load(path, model)
    meta["factors"][0]["A_storage"] = "zip"
    write_state(path, low._tensors(), meta)
    with pytest.raises(StateFileError, match="unknown storage"):
        kt.KFAC.load(path, model)


MERGE = {"wide_mlp": lambda: _wide_mlp(n=3), **{f"case_{c.name}": builder(c) for c in LAYER_CASES}}


@pytest.mark.parametrize("make", MERGE.values(), ids=MERGE.keys())
def test_merging_low_rank_states_equals_merging_full_ones(make):
    model, batches = make()
    a = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    M.perturb(model, scale=0.2)
    b = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    merged_full = a.merge(b, gamma=0.7)
    merged_low = a.low_rank(max_fraction=1.0).merge(b.low_rank(max_fraction=1.0), gamma=0.7)
    assert torch.allclose(merged_low.to_dense(model), merged_full.to_dense(model), rtol=1e-9, atol=1e-12)
