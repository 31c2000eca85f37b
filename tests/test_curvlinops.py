"""Cross-check KFAC against an independent implementation: curvlinops'
``KFACLinearOperator`` (curvlinops-for-pytorch >= 3, DESIGN.md §3 oracle 5).

Conventions and conversion (read off curvlinops/kfac.py, v3.0.1):

* ``separate_weight_and_bias=False`` makes curvlinops use one factor pair for [W | b]
  with the 1 appended as the last input column, exactly like ``kfac_tutorial``;
  ``op @ I`` is then the dense matrix in ``params`` order (W row-major, then b), which
  is our ``to_dense`` order when ``params`` is the ``named_parameters`` list.
* ``fisher_type``: ``TYPE2`` (exact output Hessian, via its symmetric square root) ↔
  ``"exact"``; ``EMPIRICAL`` ↔ ``"empirical"``. (``MC`` draws labels with its own RNG,
  so it cannot be compared sample by sample.)
* Scaling. curvlinops A = Σ a aᵀ / (N · #positions) for expand and Σ ā āᵀ / N for
  reduce — the same as ours. Its G depends on the loss reduction:
  - ``CrossEntropyLoss(reduction="mean")`` with one prediction per example: the
    backpropagated vectors carry 1/B and curvlinops multiplies by B²/N, so
    G = (1/N) Σ_n Σ_v g gᵀ = our G (mean per-example Fisher).
  - ``reduction="sum"``: G = Σ_n Σ_v g gᵀ = N · our G (curvlinops approximates the
    Fisher of the summed loss; ours the mean per-example Fisher). With T predictions
    per example and "mean", curvlinops would divide by N·T instead, so for per-token
    outputs we use "sum" and divide by N.

Every layer type of ``tests/cases.py`` that curvlinops supports (Linear and Conv2d, and
subclasses) is compared as well, in both weight-sharing settings.
"""

import pytest
import torch
from torch import nn

import kfac_tutorial as kt

try:
    from . import models as M
    from . import oracles as O
    from .cases import LAYER_CASES
except ImportError:  # pragma: no cover
    import models as M
    import oracles as O
    from cases import LAYER_CASES

curvlinops = pytest.importorskip("curvlinops")
from curvlinops import FisherType, KFACLinearOperator, KFACType  # noqa: E402

RTOL, ATOL = 1e-8, 1e-12
FISHER = {"exact": FisherType.TYPE2, "empirical": FisherType.EMPIRICAL}


def _close(a, b):
    torch.testing.assert_close(a.to(torch.float64), b.to(torch.float64), rtol=RTOL, atol=ATOL)


def _curvlinops(model, batches, fisher, reduction, approx=KFACType.EXPAND):
    op = KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(reduction=reduction),
        [p for p in model.parameters() if p.requires_grad],
        batches,
        fisher_type=FISHER[fisher],
        kfac_approx=approx,
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    op.compute_kronecker_factors()
    return op


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_kfac_mlp_matches_curvlinops_with_mean_reduction(fisher, act):
    model, batches = M.mlp(n=7, act=act, batch_sizes=[3, 1, 3])
    ours = kt.KFAC.fit(model, batches, fisher=fisher)
    op = _curvlinops(model, batches, fisher, "mean")
    assert set(op._input_covariances) == set(ours.factors) == {"0", "2", "4"}
    for name, f in ours.factors.items():
        _close(f.A, op._input_covariances[name])
        _close(f.G, op._gradient_covariances[name])
    P = O.num_params(model)
    dense = op @ torch.eye(P, dtype=torch.float64)
    _close(ours.to_dense(model), dense)


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_kfac_mlp_without_bias_matches_curvlinops(fisher):
    model, batches = M.mlp(n=5, bias=False, batch_sizes=[2, 3])
    ours = kt.KFAC.fit(model, batches, fisher=fisher)
    op = _curvlinops(model, batches, fisher, "mean")
    _close(ours.to_dense(model), op @ torch.eye(O.num_params(model), dtype=torch.float64))


def test_curvlinops_sum_reduction_gradient_factor_is_N_times_ours():
    model, batches = M.mlp(n=6, batch_sizes=[4, 2])
    N = M.num_examples(batches)
    ours = kt.KFAC.fit(model, batches, fisher="exact")
    op = _curvlinops(model, batches, "exact", "sum")
    for name, f in ours.factors.items():
        _close(f.A, op._input_covariances[name])
        _close(N * f.G, op._gradient_covariances[name])


class _ClassDimSecond(nn.Module):
    """curvlinops' CrossEntropyLoss wants (B, C, T) for per-token logits."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).transpose(1, 2)


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_kfac_expand_per_token_outputs_match_curvlinops_expand(fisher):
    model, batches = M.token_tagger(n=4, t=3)
    N = M.num_examples(batches)
    ours = kt.KFAC.fit(model, batches, fisher=fisher, weight_sharing="expand")
    op = _curvlinops(_ClassDimSecond(model), batches, fisher, "sum", KFACType.EXPAND)
    for name in ("l1", "l2"):
        _close(ours.factors[name].A, op._input_covariances[f"net.{name}"])
        _close(N * ours.factors[name].G, op._gradient_covariances[f"net.{name}"])


class _PoolThenClassify(nn.Module):
    """Reduce setting: Linear per position -> tanh -> mean over T -> Linear."""

    def __init__(self, d=3, h=4, classes=3):
        super().__init__()
        self.l1 = nn.Linear(d, h)
        self.head = nn.Linear(h, classes)

    def forward(self, x):
        return self.head(torch.tanh(self.l1(x)).mean(1))


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_kfac_reduce_with_pooled_outputs_matches_curvlinops_reduce(fisher):
    torch.manual_seed(0)
    model = _PoolThenClassify().double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (5,), generator=g)
    batches = M.split_batches([(x, y)], [2, 3])
    ours = kt.KFAC.fit(model, batches, fisher=fisher, weight_sharing="reduce")
    op = _curvlinops(model, batches, fisher, "mean", KFACType.REDUCE)
    for name in ("l1", "head"):
        _close(ours.factors[name].A, op._input_covariances[name])
        _close(ours.factors[name].G, op._gradient_covariances[name])
    _close(ours.to_dense(model), op @ torch.eye(O.num_params(model), dtype=torch.float64))


# the layer cases whose layer type curvlinops' KFAC supports (Linear, Conv2d, subclasses)
CURVLINOPS_CASES = [c for c in LAYER_CASES if isinstance(c.build(False, 0)[0].layer, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("mode", ["expand", "reduce"])
@pytest.mark.parametrize("case", CURVLINOPS_CASES, ids=repr)
def test_every_layer_case_curvlinops_supports_matches_it(case, mode, fisher):
    """One prediction per example, mean reduction: A and G agree as they are, for both
    weight-sharing settings, and so does the dense matrix."""
    model, batches = case.build(False, 0)
    ours = kt.KFAC.fit(model, batches, fisher=fisher, weight_sharing=mode, progress=False)
    op = _curvlinops(model, batches, fisher, "mean", {"expand": KFACType.EXPAND, "reduce": KFACType.REDUCE}[mode])
    assert set(op._input_covariances) == set(ours.factors) == {"layer", "out"}
    for name, f in ours.factors.items():
        _close(f.A, op._input_covariances[name])
        _close(f.G, op._gradient_covariances[name])
    _close(ours.to_dense(model), op @ torch.eye(O.num_params(model), dtype=torch.float64))
