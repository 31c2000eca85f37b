"""Packed upper triangles held in memory (``KFAC.packed()``, ``fit(storage="packed")``).

Claims checked, per layer case (every case of ``tests/cases.py``, and a mix of roots and
dense factors from ``test_auto_low_rank``'s models): the packed state's penalty and its
gradient are bit for bit the dense state's (float64); ``full_A`` / ``full_G`` and the
dense block equal the dense state's; every full symmetric 2-D factor is held as a vector
of ``d(d+1)/2`` numbers and ``memory_bytes`` counts exactly those (the oracle counts the
dense shapes independently); the memory report describes the layout; a save/load round
trip (packed or unpacked on load) keeps the penalty bit for bit (the gradient to
rounding: a reloaded root's already differs by rounding), a file written from a
packed state equals the dense state's file; merging packed states equals merging the
dense ones and stays packed; ``fit(storage="packed")`` equals ``fit(storage="auto")
.packed()`` (and ``fit(storage="dense").packed()`` where no root applies);
``low_rank`` of a packed state equals that of the dense state; an invalid ``storage``
is refused naming the choices.
"""

import pytest
import torch

import kfac_tutorial as kt
from kfac_tutorial.curvature import memory_report
from kfac_tutorial.curvature.factors import LayerFactors
from kfac_tutorial.curvature.storage import pack_triu, triu_side, unpack_triu

try:
    from . import models as M
    from .cases import LAYER_CASES
    from .test_auto_low_rank import CASES as ROOT_CASES
except ImportError:  # pragma: no cover
    import models as M
    from cases import LAYER_CASES
    from test_auto_low_rank import CASES as ROOT_CASES


def _layer_case(case):
    return lambda: case.build(False, 0)


ALL = {f"case_{c.name}": _layer_case(c) for c in LAYER_CASES}
ALL.update({f"roots_{name}": (lambda make=make: make()[:2]) for name, make in ROOT_CASES.items()})


def _fit(model, batches, storage):
    return kt.KFAC.fit(model, batches, progress=False, storage=storage)


def _penalty_and_grad(state, model):
    model.zero_grad(set_to_none=True)
    pen = state.penalty(model)
    pen.backward()
    return pen.detach(), torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def _packable(t: torch.Tensor, root: bool) -> bool:
    return not root and t.dim() == 2 and torch.equal(t, t.T)


def _expected_bytes(dense: kt.KFAC) -> int:
    """Oracle: the dense state's bytes with each symmetric full 2-D factor at ``d(d+1)/2``."""
    total = sum(d.numel() * d.element_size() for d in dense.diagonal.values())
    for f in dense.factors.values():
        for t, root in ((f.A, f.A_root), (f.G, f.G_root)):
            n = t.shape[0] * (t.shape[0] + 1) // 2 if isinstance(f, LayerFactors) and _packable(t, root) else t.numel()
            total += n * t.element_size()
    return total


@pytest.fixture(params=sorted(ALL))
def fitted(request):
    model, batches = ALL[request.param]()
    auto = _fit(model, batches, "auto")
    M.perturb(model, scale=0.3)
    return request.param, model, batches, auto


def test_triu_round_trip_is_exact():
    g = torch.Generator().manual_seed(0)
    for d in (1, 2, 7, 64):
        X = torch.randn(d, d + 3, generator=g, dtype=torch.float64)
        S = X @ X.T
        S = (S + S.T) / 2
        v = pack_triu(S)
        i, j = torch.triu_indices(d, d)
        assert torch.equal(v, S[i, j])  # the state files' row-major order
        assert triu_side(v.numel()) == d
        U = unpack_triu(v)
        assert torch.equal(U, S) and U.is_contiguous()
    with pytest.raises(ValueError):
        triu_side(5)


def test_packed_state_is_the_dense_state(fitted):
    name, model, _, auto = fitted
    packed = auto.packed()
    assert packed.anchor is auto.anchor and packed.diagonal is auto.diagonal
    n_packed = 0
    for m, f in auto.factors.items():
        p = packed.factors[m]
        for field in ("A", "G"):
            t, root = getattr(f, field), getattr(f, f"{field}_root")
            want = isinstance(f, LayerFactors) and type(f).__name__ != "QKVGroupFactors" and _packable(t, root)
            assert getattr(p, f"{field}_packed") == want, (m, field)
            held = getattr(p, field)
            if want:
                d = t.shape[0]
                n_packed += 1
                assert held.shape == (d * (d + 1) // 2,)
            else:
                assert held is t
        assert torch.equal(p.full_A(), f.full_A()) and torch.equal(p.full_G(), f.full_G())
    assert n_packed > 0, name
    pen_a, grad_a = _penalty_and_grad(auto, model)
    pen_p, grad_p = _penalty_and_grad(packed, model)
    assert torch.equal(pen_a, pen_p) and torch.equal(grad_a, grad_p)
    assert torch.equal(auto.to_dense(model), packed.to_dense(model))
    assert packed.memory_bytes() == _expected_bytes(auto)
    if n_packed:
        assert packed.memory_bytes() < auto.memory_bytes()
    report = memory_report(packed, model)
    assert int(report["curvature_bytes"].sum()) == packed.memory_bytes()
    described = " ".join(report["factors"])
    for m, p in packed.factors.items():
        if p.A_packed:
            assert f"A packed triu ({triu_side(p.A.numel())})" in described
        if p.G_packed:
            assert f"G packed triu ({triu_side(p.G.numel())})" in described


def test_save_load_round_trip(fitted, tmp_path):
    _, model, _, auto = fitted
    packed = auto.packed()
    auto.save(tmp_path / "dense.safetensors")
    packed.save(tmp_path / "packed.safetensors")
    assert (tmp_path / "dense.safetensors").read_bytes() == (tmp_path / "packed.safetensors").read_bytes()
    pen, grad = _penalty_and_grad(auto, model)
    for path in ("dense", "packed"):
        plain = kt.KFAC.load(tmp_path / f"{path}.safetensors", model)
        assert not any(f.A_packed or f.G_packed for f in plain.factors.values())
        kept = kt.KFAC.load(tmp_path / f"{path}.safetensors", model, packed=True)
        assert kept.memory_bytes() == packed.memory_bytes()
        for m, f in kept.factors.items():
            assert (f.A_packed, f.G_packed) == (packed.factors[m].A_packed, packed.factors[m].G_packed)
        generic = kt.load(tmp_path / f"{path}.safetensors", model)
        for state in (plain, kept, generic):
            p, g = _penalty_and_grad(state, model)
            assert torch.equal(p, pen)  # a reloaded root's gradient differs by rounding (as for auto states)
            torch.testing.assert_close(g, grad, rtol=1e-12, atol=1e-15)


def test_merge_of_packed_states_equals_merge_of_dense(fitted):
    name, model, batches, auto = fitted
    M.perturb(model, scale=0.2)
    other = _fit(model, batches[::-1], "auto")
    merged = auto.merge(other, gamma=0.7)
    merged_packed = auto.packed().merge(other.packed(), gamma=0.7)
    for m, f in merged.factors.items():
        p = merged_packed.factors[m]
        assert p.A_root == f.A_root and p.G_root == f.G_root
        torch.testing.assert_close(p.full_A(), f.full_A(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(p.full_G(), f.full_G(), rtol=1e-12, atol=1e-14)
        # a full merged factor is packed when either side's was (two roots past d/2 merge dense)
        one, two = auto.packed().factors[m], other.packed().factors[m]
        assert p.A_packed == (not p.A_root and (one.A_packed or two.A_packed))
        assert p.G_packed == (not p.G_root and (one.G_packed or two.G_packed))
    torch.testing.assert_close(merged_packed.penalty(model), merged.penalty(model), rtol=1e-12, atol=0)
    # low_rank works on the full matrices and keeps a factor it does not root packed
    lr, lr_packed = merged.low_rank(), merged_packed.low_rank()
    for m, f in lr.factors.items():
        p = lr_packed.factors[m]
        assert (p.A_root, p.G_root) == (f.A_root, f.G_root)
        torch.testing.assert_close(p.full_A(), f.full_A(), rtol=1e-12, atol=1e-14)
        assert p.G_packed == (merged_packed.factors[m].G_packed and not p.G_root)


@pytest.mark.parametrize("case", ["case_linear", "case_conv2d", "case_embedding", "roots_mlp", "roots_embedding_linear"])
def test_fit_packed_equals_packed_fit(case):
    model, batches = ALL[case]()
    fit_packed = _fit(model, batches, "packed")
    auto = _fit(model, batches, "auto").packed()
    dense = _fit(model, batches, "dense").packed()
    roots = any(f.A_root or f.G_root for f in auto.factors.values())
    assert roots == case.startswith("roots_")
    for reference in (auto,) if roots else (auto, dense):
        assert reference.memory_bytes() == fit_packed.memory_bytes()
        for m, f in reference.factors.items():
            p = fit_packed.factors[m]
            assert (p.A_root, p.G_root, p.A_packed, p.G_packed) == (f.A_root, f.G_root, f.A_packed, f.G_packed)
            assert torch.equal(p.A, f.A) and torch.equal(p.G, f.G)


def test_invalid_storage_is_refused():
    model, batches = ALL["case_linear"]()
    with pytest.raises(ValueError, match="packed"):
        _fit(model, batches, "triu")
