"""Clear errors and one honest warning: what a fit refuses, and what it says when a
module falls back to a diagonal Fisher."""

import math
import warnings

import pytest
import torch
from torch import nn

import kfac_tutorial as kt
from kfac_tutorial.curvature import DiagonalFallbackWarning


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def _batches(n=3):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 4, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("cls", [kt.EWC, kt.KFAC])
def test_non_finite_inputs_name_the_batch(cls):
    batches = _batches()
    batches[1][0][2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"batch 1: the inputs contain NaN or inf"):
        cls.fit(_mlp(), batches, progress=False)


@pytest.mark.parametrize("cls", [kt.EWC, kt.KFAC])
def test_non_finite_logits_name_the_batch(cls):
    model = _mlp()
    with torch.no_grad():
        model[2].bias[0] = float("inf")
    with pytest.raises(ValueError, match=r"batch 0: the model's logits contain NaN or inf"):
        cls.fit(model, _batches(), progress=False)


@pytest.mark.parametrize("fisher", ["exact", "mc", "empirical"])
def test_labels_out_of_range_name_the_class_count(fisher):
    batches = _batches()
    batches[2][1][0] = 3
    with pytest.raises(ValueError, match=r"batch 2: label 3 is out of range for 3 classes"):
        kt.KFAC.fit(_mlp(), batches, fisher=fisher, progress=False)


def test_ignore_index_labels_are_accepted():
    batches = _batches()
    batches[0][1][0] = -100
    kt.EWC.fit(_mlp(), batches, fisher="empirical", progress=False)


@pytest.mark.parametrize("gamma", [-1.0, math.nan, math.inf])
@pytest.mark.parametrize("cls", [kt.EWC, kt.KFAC])
def test_invalid_gamma_is_refused(cls, gamma):
    state = cls.fit(_mlp(), _batches(1), progress=False)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        state.merge(state, gamma=gamma)


@pytest.mark.parametrize("damping", [-1.0, math.nan, math.inf])
@pytest.mark.parametrize("cls", [kt.EWC, kt.KFAC])
def test_invalid_damping_is_refused(cls, damping):
    with pytest.raises(ValueError, match="damping must be a finite number >= 0"):
        cls.fit(_mlp(), _batches(1), damping=damping, progress=False)
    state = cls.fit(_mlp(), _batches(1), progress=False)
    with pytest.raises(ValueError, match="damping must be a finite number >= 0"):
        type(state)(state.anchor, state.diagonal, damping=damping)


class FunctionalHead(nn.Module):
    """A matrix used with ``F.linear`` outside any module call: no rule can record it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 5)
        self.proj = nn.Linear(5, 3)

    def forward(self, x):
        return nn.functional.linear(torch.tanh(self.body(x)), self.proj.weight, self.proj.bias)


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, groups=2)
        self.out = nn.Linear(4 * 2, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.conv(x.reshape(-1, 2, 2).repeat(1, 1, 2))).flatten(1))


class Attention(nn.Module):
    """An ``nn.MultiheadAttention`` configuration its rule does not cover (``add_bias_kv``):
    both projections, applied functionally by the stock forward, fall back."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True, add_bias_kv=True)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = x.reshape(-1, 1, 4).expand(-1, 3, 4)
        return self.out(self.attn(h, h, h, need_weights=False)[0].mean(1))


@pytest.mark.parametrize(
    "model_cls, names, reason",
    [
        (FunctionalHead, ["'proj'"], "used outside its forward call"),
        (Grouped, ["'conv'"], "grouped convolution (groups=2)"),
        (Attention, ["'attn'", "'attn.out_proj'"], "add_bias_kv=True"),
    ],
)
def test_fallback_is_named_in_one_warning_and_strict_raises(model_cls, names, reason):
    torch.manual_seed(0)
    model = model_cls()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kfac = kt.KFAC.fit(model, _batches(), fisher="exact", progress=False)
    fallback = [w for w in caught if issubclass(w.category, DiagonalFallbackWarning)]
    assert len(fallback) == 1
    message = str(fallback[0].message)
    assert reason in message and all(n in message for n in names)
    assert "'body'" not in message and "'out'" not in message
    # the fallback is the exact diagonal Fisher of those parameters (EWC's entries)
    ewc = kt.EWC.fit(model, _batches(), fisher="exact", progress=False)
    for n, d in kfac.diagonal.items():
        torch.testing.assert_close(d, ewc.diagonal[n], rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match=names[0]):
        kt.KFAC.fit(model, _batches(), fisher="exact", progress=False, strict=True)


def test_diagonal_modules_and_small_parameters_do_not_warn():
    model = FunctionalHead()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kt.KFAC.fit(model, _batches(), fisher="exact", progress=False, diagonal_modules=["proj"])
        kt.KFAC.fit(nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)), _batches(), progress=False)
