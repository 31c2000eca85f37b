"""Every layer rule against brute force (float64, ``torch.func``), over ``LAYER_CASES``.

Claims, per layer type: the layer gets Kronecker factors (no fallback); for one
example at one position KFAC's block equals the exact Fisher block (this checks the
factor layout, the vec order and the bias column); EWC equals the exact diagonal with
many positions (the rule's per-example gradients); the penalty is ``½ Δᵀ F̂ Δ`` with
the dense ``F̂`` and survives a save/load round trip; the expand factors equal the
brute-force ``A`` and ``G`` built from the rule-independent layer view of the oracles.
"""

import warnings

import pytest
import torch

import kfac_tutorial as kt
from cases import LAYER_CASES
from models import flat_delta, perturb
from oracles import block, fisher_dense, kfac_factors, module_param_names


@pytest.fixture(params=LAYER_CASES, ids=repr)
def case(request):
    return request.param


def test_layer_gets_kronecker_factors_without_fallback(case):
    model, batches = case.build(False, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False, strict=True)
    assert kfac.factors["layer"].kind == case.kind
    assert not any(n.startswith("layer.") for n in kfac.diagonal)


def test_kfac_block_is_exact_for_one_example_at_one_position(case):
    model, batches = case.build(True, 0)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    F = fisher_dense(model, batches, fisher="exact")
    names = module_param_names(model, "layer")
    torch.testing.assert_close(block(kfac.to_dense(model), model, names), block(F, model, names), rtol=1e-9, atol=1e-12)


def test_ewc_is_the_exact_diagonal_with_many_positions(case):
    model, batches = case.build(False, 0)
    ewc = kt.EWC.fit(model, batches, fisher="exact", progress=False)
    F = fisher_dense(model, batches, fisher="exact")
    torch.testing.assert_close(torch.diagonal(ewc.to_dense(model)), torch.diagonal(F), rtol=1e-9, atol=1e-12)


def test_penalty_is_half_the_quadratic_form_and_survives_save_load(case, tmp_path):
    model, batches = case.build(False, 0)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    delta = perturb(model, scale=0.1, seed=3)
    d = flat_delta(model, delta)
    expected = 0.5 * d @ kfac.to_dense(model) @ d
    torch.testing.assert_close(kfac.penalty(model).detach(), expected, rtol=1e-9, atol=1e-12)
    kfac.save(tmp_path / "s.safetensors")
    loaded = kt.load(tmp_path / "s.safetensors", model)
    torch.testing.assert_close(loaded.penalty(model).detach(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("setting", ["expand", "reduce"])
def test_factors_equal_brute_force(case, setting):
    model, batches = case.build(False, 0)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", weight_sharing=setting, progress=False)
    A, G = kfac_factors(model, batches, "layer", mode=setting)
    f = kfac.factors["layer"]
    torch.testing.assert_close(f.A, A, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(f.G, G, rtol=1e-9, atol=1e-12)
