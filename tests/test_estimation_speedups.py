"""Estimation speed-ups are exact: cached probes, fused squared sums, strided conv patches."""

import importlib

import pytest
import torch
from torch import nn

import kfac_tutorial as kt

est = importlib.import_module("kfac_tutorial.curvature.estimate")


def _model_and_batches():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3, padding=1, dilation=1),
        nn.ReLU(),
        nn.Conv1d(4, 5, 3, stride=2, dilation=2),
        nn.Flatten(),
        nn.LazyLinear(6),
    )
    x = torch.randn(8, 3, 11)
    model(x)
    model = model.double()
    return model, [(x.double()[:4], None), (x.double()[4:], None)]


def test_second_fit_reuses_probe_and_matches_first():
    model, batches = _model_and_batches()
    est.clear_probe_cache()
    first = kt.KFAC.fit(model, batches, fisher="exact")
    assert len(est._PROBE_CACHE[model]) == 1
    second = kt.KFAC.fit(model, batches, fisher="exact")
    for name, f in first.factors.items():
        assert torch.equal(f.A, second.factors[name].A) and torch.equal(f.G, second.factors[name].G)
    ewc1 = kt.EWC.fit(model, batches, fisher="exact")
    ewc2 = kt.EWC.fit(model, batches, fisher="exact")
    for name in ewc1.diagonal:
        assert torch.equal(ewc1.diagonal[name], ewc2.diagonal[name])


def test_fused_squared_sum_equals_squared_per_example_gradients():
    """EWC diagonal (fused path) against torch.func per-example gradients, for conv + linear."""
    from torch.func import functional_call, grad, vmap

    model, batches = _model_and_batches()
    ewc = kt.EWC.fit(model, batches, fisher="exact")
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = torch.cat([b[0] for b in batches])
    probs = torch.softmax(model(x), -1).detach()

    def logp(p, xn, c):
        return torch.log_softmax(functional_call(model, p, (xn[None],)), -1)[0, c]

    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    for c in range(probs.shape[1]):
        g = vmap(grad(logp), in_dims=(None, 0, None))(params, x, c)
        for n in ref:
            ref[n] += (probs[:, c].reshape(-1, *[1] * (g[n].dim() - 1)) * g[n] ** 2).sum(0)
    for n in ref:
        torch.testing.assert_close(ewc.diagonal[n], ref[n] / x.shape[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("d", [5, 300, 1024, 1280, 1537])
def test_symmetrized_factor_equals_the_plain_expression_bit_for_bit(d):
    import sys

    estimate_module = sys.modules["kfac_tutorial.curvature.estimate"]
    m = torch.randn(d, d, generator=torch.Generator().manual_seed(d))
    out = estimate_module._symmetrized(m.clone(), 0.25)  # in place on the copy
    assert torch.equal(out, (m + m.T) * 0.25)
    assert torch.equal(out, out.T)
