"""One shared list of layer cases: every layer type with a rule, in a small float64 model.

Adding a layer type to the package means adding one :class:`LayerCase` here; the
oracle tests of ``test_layer_rules.py`` (and any other test parametrised over
``LAYER_CASES``) then check the new rule against brute force.

Each case builds two models around the layer under test (module ``"layer"``):

* ``many``: the layer sees several positions (tokens, conv positions) per example;
* ``one``: the layer sees exactly one position per example, where KFAC for one
  example is exact (the per-example gradient is one outer product ``g aᵀ``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

DTYPE = torch.float64


class MyLinear(nn.Linear):
    """A user's subclass: must get the Linear rule through the class hierarchy."""


class Head(nn.Module):
    """``layer`` -> tanh -> flatten (or mean over tokens) -> linear classifier."""

    def __init__(self, layer: nn.Module, width: int, classes: int = 3, pool: str = "flatten"):
        super().__init__()
        self.layer, self.pool = layer, pool
        self.out = nn.Linear(width, classes)

    def forward(self, x):
        h = torch.tanh(self.layer(x))
        h = h.mean(1) if self.pool == "mean" else h.flatten(1)
        return self.out(h)


class AttentionHead(nn.Module):
    """Self-attention over tokens -> tanh -> mean over tokens -> linear classifier.

    The input ``(N, L, E + 1)`` carries a padding flag in its last feature (1 = padding,
    passed on as ``key_padding_mask`` when ``padding``); ``attn_mask`` is fixed."""

    def __init__(
        self, layer: nn.MultiheadAttention, classes: int = 3, padding: bool = False, need_weights: bool = False, attn_mask=None
    ):
        super().__init__()
        self.layer, self.padding, self.need_weights, self.attn_mask = layer, padding, need_weights, attn_mask
        self.out = nn.Linear(layer.embed_dim, classes)

    def forward(self, x):
        h, pad = x[..., :-1], x[..., -1] > 0.5
        if not self.layer.batch_first:
            h = h.transpose(0, 1)
        o = self.layer(
            h, h, h, key_padding_mask=pad if self.padding else None, need_weights=self.need_weights, attn_mask=self.attn_mask
        )[0]
        if not self.layer.batch_first:
            o = o.transpose(0, 1)
        return self.out(torch.tanh(o).mean(1))


def attention_inputs(n: int, length: int, embed: int, seed: int, pad_last: int = 0):
    """``(n, length, embed + 1)`` random features; the last ``pad_last`` tokens of every
    other example flagged as padding (their features stay random)."""
    x = _randn(n, length, embed + 1, seed=seed)
    x[..., -1] = 0.0
    if pad_last:
        x[::2, length - pad_last :, -1] = 1.0
    return x


@dataclass(frozen=True)
class LayerCase:
    """``build(one_position, seed) -> (model, batches)``; ``kind``: the state-file kind."""

    name: str
    kind: str
    build: Callable[[bool, int], tuple]

    def __repr__(self) -> str:
        return self.name


def _finish(model: nn.Module, inputs: list, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 1)
    model = model.to(DTYPE).eval()
    batches = [
        (x.to(DTYPE) if x.is_floating_point() else x, torch.randint(0, classes, (x.shape[0],), generator=g)) for x in inputs
    ]
    return model, batches


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _linear(cls):
    def build(one: bool, seed: int):
        torch.manual_seed(seed)
        if one:
            return _finish(Head(cls(4, 5), 5), [_randn(1, 4, seed=seed)], seed=seed)
        return _finish(Head(cls(4, 5), 5, pool="mean"), [_randn(3, 3, 4, seed=seed), _randn(2, 3, 4, seed=seed + 2)], seed=seed)

    return build


def _conv1d(one: bool, seed: int):
    torch.manual_seed(seed)
    if one:  # kernel over the whole length: one output position
        return _finish(Head(nn.Conv1d(2, 3, 5), 3), [_randn(1, 2, 5, seed=seed)], seed=seed)
    return _finish(Head(nn.Conv1d(2, 3, 3, stride=2, padding=1, dilation=2), 3 * 3), [_randn(4, 2, 7, seed=seed)], seed=seed)


def _conv2d(one: bool, seed: int):
    torch.manual_seed(seed)
    if one:
        return _finish(Head(nn.Conv2d(2, 3, (3, 2)), 3), [_randn(1, 2, 3, 2, seed=seed)], seed=seed)
    layer = nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=1, dilation=(2, 1))
    x = _randn(4, 2, 4, 5, seed=seed)
    width = layer(x).flatten(1).shape[1]
    return _finish(Head(layer, width), [x[:3], x[3:]], seed=seed)


def _hf_conv1d(one: bool, seed: int):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(seed)
    layer = Conv1D(5, 4)  # nf = 5 outputs, nx = 4 inputs; weight (4, 5)
    nn.init.normal_(layer.bias)
    if one:
        return _finish(Head(layer, 5), [_randn(1, 4, seed=seed)], seed=seed)
    return _finish(Head(layer, 5, pool="mean"), [_randn(3, 3, 4, seed=seed)], seed=seed)


def _embedding(one: bool, seed: int):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if one:
        return _finish(Head(nn.Embedding(6, 4), 4), [torch.randint(0, 6, (1, 1), generator=g)], seed=seed)
    return _finish(Head(nn.Embedding(6, 4), 4, pool="mean"), [torch.randint(0, 6, (4, 3), generator=g)], seed=seed)


def _attention(one: bool, seed: int):
    torch.manual_seed(seed)
    layer = nn.MultiheadAttention(4, 2, batch_first=True)
    nn.init.normal_(layer.in_proj_bias)
    if one:  # one token: the in-projection's per-example gradient is one outer product
        return _finish(AttentionHead(layer), [attention_inputs(1, 1, 4, seed)], seed=seed)
    return _finish(AttentionHead(layer), [attention_inputs(3, 3, 4, seed), attention_inputs(2, 3, 4, seed + 2)], seed=seed)


LAYER_CASES = [
    LayerCase("linear", "linear", _linear(nn.Linear)),
    LayerCase("linear_subclass", "linear", _linear(MyLinear)),
    LayerCase("conv1d", "conv1d", _conv1d),
    LayerCase("conv2d", "conv2d", _conv2d),
    LayerCase("hf_conv1d", "transposed_linear", _hf_conv1d),
    LayerCase("embedding", "embedding", _embedding),
    LayerCase("multihead_attention", "multihead_attention", _attention),
]


# --------------------------------------------------------------------------- views for other test files
def builder(case: LayerCase, one: bool = False, seed: int = 0) -> Callable[[], tuple]:
    """``() -> (model, batches)`` of ``case``: the shape of the older test files' factories."""
    return lambda: case.build(one, seed)


def case_fits(cls_names=("EWC", "KFAC"), cases=None, prefix: str = "") -> dict:
    """``{id: (make, cls, kwargs)}`` for every case and estimator: the old files' private
    ``(make, cls, kw)`` tables, filled from ``LAYER_CASES`` (several positions per example)."""
    import kfac_tutorial as kt

    return {
        f"{prefix}{cls_name.lower()}_{case.name}": (builder(case), getattr(kt, cls_name), {})
        for case in (LAYER_CASES if cases is None else cases)
        for cls_name in cls_names
    }


def kronecker_cases(cases=None) -> list:
    """The cases whose rule stores one :class:`~kfac_tutorial.curvature.factors.LayerFactors`
    (``G ⊗ A`` over one weight and its bias), for checks that read ``A`` and ``G``."""
    from kfac_tutorial.curvature.factors import FACTOR_TYPES, LayerFactors

    return [c for c in (LAYER_CASES if cases is None else cases) if issubclass(FACTOR_TYPES.get(c.kind, object), LayerFactors)]
