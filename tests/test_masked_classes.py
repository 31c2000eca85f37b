"""Classes with probability exactly zero (the linkers mask unseen concepts with a very
negative logit) contribute nothing to the exact Fisher; the estimator skips them, and
must still equal the brute-force Fisher: for an MLP and for every layer type of
``tests/cases.py``."""

import pytest
import torch
from torch import nn

import kfac_tutorial as kt
from cases import LAYER_CASES
from oracles import block, dense_diag_to_dict, fisher_dense, module_param_names

DTYPE = torch.float64


class MaskedMLP(nn.Module):
    """An MLP whose last two classes are masked with a −1e4 logit (their softmax
    probability underflows to exactly 0, as asserted in the test)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5))
        self.register_buffer("mask", torch.tensor([0.0, 0.0, 0.0, -1e4, -1e4]))

    def forward(self, x):
        return self.net(x) + self.mask


def test_exact_fisher_with_masked_classes_equals_brute_force():
    torch.manual_seed(0)
    model = MaskedMLP().to(DTYPE)
    x = torch.randn(7, 4, dtype=DTYPE)
    y = torch.randint(0, 3, (7,))
    batches = [(x, y)]
    assert (model(x).softmax(-1)[:, 3:] == 0).all()  # the masked classes have p exactly 0
    dense = fisher_dense(model, batches, fisher="exact")
    ewc = kt.EWC.fit(model, batches, fisher="exact", progress=False)
    want = dense_diag_to_dict(model, dense.diagonal())
    for name, d in ewc.diagonal.items():
        torch.testing.assert_close(d.to(DTYPE), want[name], rtol=1e-9, atol=1e-12)
    kfac = kt.KFAC.fit(model, [(x[:1], y[:1])], fisher="exact", progress=False)
    one = fisher_dense(model, [(x[:1], y[:1])], fisher="exact")
    approx = kfac.to_dense(model)
    for layer in ("net.0", "net.2"):  # one example: each KFAC block is the exact block
        names = module_param_names(model, layer)
        torch.testing.assert_close(block(approx, model, names), block(one, model, names), rtol=1e-9, atol=1e-12)


class MaskedExtraClasses(nn.Module):
    """A layer case's model with two more classes (copies of its first two logits) masked
    with −1e4: their probability is exactly 0 but their Jacobian is not."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        logits = self.net(x)
        return torch.cat([logits, logits[:, :2] - 1e4], dim=1)


@pytest.mark.parametrize("case", LAYER_CASES, ids=repr)
def test_masked_classes_for_every_layer_case_equal_brute_force(case):
    net, batches = case.build(False, 0)
    model = MaskedExtraClasses(net)
    assert all((model(x).softmax(-1)[:, -2:] == 0).all() for x, _ in batches)
    dense = fisher_dense(model, batches, fisher="exact")
    ewc = kt.EWC.fit(model, batches, fisher="exact", progress=False)
    want = dense_diag_to_dict(model, dense.diagonal())
    assert set(ewc.diagonal) == set(want)
    for name, d in ewc.diagonal.items():
        torch.testing.assert_close(d.to(DTYPE), want[name], rtol=1e-9, atol=1e-12)
    net, batches = case.build(True, 0)  # one example at one position: the block is exact
    model = MaskedExtraClasses(net)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    assert "net.layer" in kfac.factors
    one, names = fisher_dense(model, batches, fisher="exact"), module_param_names(model, "net.layer")
    torch.testing.assert_close(block(kfac.to_dense(model), model, names), block(one, model, names), rtol=1e-9, atol=1e-12)
