"""Exact low-rank storage chosen at fit time (``KFAC.fit(storage="auto")``, the default).

Claims checked: a 2-D factor of side ``d ≥ ROOT_MIN_SIDE`` is held as a root exactly when
its contributing rows number at most ``d/2`` (rows counted independently here: examples
or positions, times backprop vectors for ``G``), and never under ``storage="dense"``;
the root's ``R Rᵀ`` equals the dense fit's factor, so the penalty, its gradient and
the dense block agree (float64 and float32); a factor whose rows pass ``d/2`` part-way
through the fit is bit for bit the dense one; small layers (every case of
``tests/cases.py``) are bit for bit the dense fit; an auto state survives a save/load
round trip with a bit-identical penalty; merging two auto states equals merging the
dense ones (a root kept while the concatenation has at most ``d/2`` columns); an
invalid ``storage`` is refused naming the choices.
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import kfac_tutorial as kt
from kfac_tutorial.curvature.accumulate import ROOT_MIN_SIDE, Accumulator, RowSum, _expand_add

try:
    from . import models as M
    from .cases import LAYER_CASES, builder
except ImportError:  # pragma: no cover
    import models as M
    from cases import LAYER_CASES, builder

CLASSES = 3


class SharedNames(nn.Module):
    """A query encoder also applied to fixed candidate names once per batch (a shared
    call): ``logits = mean_t(enc(x)) · mean_t(enc(names))ᵀ``."""

    def __init__(self, d_in=72, d_out=66, names=CLASSES):
        super().__init__()
        self.enc = nn.Linear(d_in, d_out)
        self.register_buffer("names", torch.randn(names, 2, d_in))

    def forward(self, x):
        q = torch.tanh(self.enc(x)).mean(1)
        k = torch.tanh(self.enc(self.names)).mean(1)
        return q @ k.T


class EmbeddingLinear(nn.Module):
    def __init__(self, vocab=200, dim=72, hidden=66):
        super().__init__()
        self.emb, self.hidden, self.out = nn.Embedding(vocab, dim), nn.Linear(dim, hidden), nn.Linear(hidden, CLASSES)

    def forward(self, ids):
        return self.out(torch.tanh(self.hidden(self.emb(ids).mean(1))))


def _batches(make_x, sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [(make_x(n, g), torch.randint(0, CLASSES, (n,), generator=g)) for n in sizes]


def _mlp(dtype=torch.float64, sizes=(8, 8, 8)):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 80), nn.Tanh(), nn.Linear(80, 70, bias=False), nn.Tanh(), nn.Linear(70, CLASSES))
    model = model.to(dtype)
    return model, _batches(lambda n, g: torch.randn(n, 100, generator=g, dtype=dtype), sizes, 1), {"0": 1, "2": 1, "4": 1}


def _conv1d():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(70, 66, 3), nn.Tanh(), nn.Flatten(), nn.Linear(66 * 4, CLASSES)).double()
    return model, _batches(lambda n, g: torch.randn(n, 70, 6, generator=g, dtype=torch.float64), (5, 5), 2), {"0": 4, "3": 1}


def _conv2d():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(8, 64, 3), nn.Tanh(), nn.Flatten(), nn.Linear(64 * 9, CLASSES)).double()
    return model, _batches(lambda n, g: torch.randn(n, 8, 5, 5, generator=g, dtype=torch.float64), (2, 2), 3), {"0": 9, "3": 1}


def _hf_conv1d():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(3)
    model = nn.Sequential(Conv1D(72, 68), nn.Tanh(), nn.Flatten(), nn.Linear(72 * 3, CLASSES)).double()
    return model, _batches(lambda n, g: torch.randn(n, 3, 68, generator=g, dtype=torch.float64), (4, 3), 4), {"0": 3, "3": 1}


def _embedding_linear():
    torch.manual_seed(4)
    model = EmbeddingLinear().double()
    return model, _batches(lambda n, g: torch.randint(0, 200, (n, 4), generator=g), (5, 4), 5), {"emb": 4, "hidden": 1, "out": 1}


CASES = {"mlp": _mlp, "conv1d": _conv1d, "conv2d": _conv2d, "hf_conv1d": _hf_conv1d, "embedding_linear": _embedding_linear}


def _fit(model, batches, storage="auto", **kw):
    return kt.KFAC.fit(model, batches, progress=False, storage=storage, **kw)


def _expected_root(side: int, rows: int) -> bool:
    return side >= ROOT_MIN_SIDE and 2 * rows <= side


def _penalty_and_grad(state, model):
    model.zero_grad(set_to_none=True)
    pen = state.penalty(model)
    pen.backward()
    return pen.detach(), torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("fisher", ["mc", "exact"])
@pytest.mark.parametrize("weight_sharing", ["reduce", "expand"])
@pytest.mark.parametrize("case", CASES)
def test_roots_exactly_where_rows_are_few_and_equal_to_the_dense_fit(case, weight_sharing, fisher):
    model, batches, positions = CASES[case]()
    auto = _fit(model, batches, fisher=fisher, weight_sharing=weight_sharing)
    dense = _fit(model, batches, fisher=fisher, weight_sharing=weight_sharing, storage="dense")
    n = sum(len(y) for _, y in batches)
    vectors = CLASSES if fisher == "exact" else 1
    assert set(auto.factors) == set(positions)
    for name, f in auto.factors.items():
        d = dense.factors[name]
        assert not (d.A_root or d.G_root)
        expand = weight_sharing == "expand" or f.kind == "embedding"
        rows = n * (positions[name] if expand else 1)
        a_side, g_side = d.A.shape[0], d.G.shape[0]
        assert f.A_root == (d.A.dim() == 2 and _expected_root(a_side, rows)), name
        assert f.G_root == _expected_root(g_side, rows * vectors), name
        if f.A_root:
            assert f.A.shape == (a_side, rows) and f.A.is_contiguous()
        if f.G_root:
            assert f.G.shape == (g_side, rows * vectors) and f.G.is_contiguous()
        torch.testing.assert_close(f.full_A(), d.A, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(f.full_G(), d.G, rtol=1e-12, atol=1e-14)
    if case == "mlp" and fisher == "mc":
        assert auto.memory_bytes() < dense.memory_bytes() / 2
    M.perturb(model, scale=0.3)
    p_auto, g_auto = _penalty_and_grad(auto, model)
    p_dense, g_dense = _penalty_and_grad(dense, model)
    torch.testing.assert_close(p_auto, p_dense, rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(g_auto, g_dense, rtol=1e-10, atol=1e-13)
    # the dense block of the classifier (G 3 × 3 dense, A a root where rows are few)
    offsets, params, start = {}, dict(model.named_parameters()), 0
    for pname, p in params.items():
        offsets[pname], start = start, start + p.numel()
    last = list(auto.factors)[-1]
    block, idx = auto.factors[last].dense_block(offsets, params)
    block_dense, idx_dense = dense.factors[last].dense_block(offsets, params)
    assert torch.equal(idx, idx_dense)
    torch.testing.assert_close(block, block_dense, rtol=1e-11, atol=1e-14)


def test_float32_fit_matches_the_dense_fit_to_float_rounding():
    model, batches, _ = _mlp(torch.float32)
    auto, dense = _fit(model, batches), _fit(model, batches, storage="dense")
    assert auto.factors["0"].A_root and auto.factors["0"].G_root and auto.factors["0"].A.dtype == torch.float32
    for name, f in auto.factors.items():
        torch.testing.assert_close(f.full_A(), dense.factors[name].A, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(f.full_G(), dense.factors[name].G, rtol=1e-5, atol=1e-8)
    M.perturb(model, scale=0.3)
    p_auto, g_auto = _penalty_and_grad(auto, model)
    p_dense, g_dense = _penalty_and_grad(dense, model)
    torch.testing.assert_close(p_auto, p_dense, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(g_auto, g_dense, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weight_sharing", ["reduce", "expand"])
def test_shared_call_rows_carry_their_multiplicity(weight_sharing):
    torch.manual_seed(5)
    model = SharedNames().double()
    batches = _batches(lambda n, g: torch.randn(n, 2, 72, generator=g, dtype=torch.float64), (4, 4), 6)
    auto = _fit(model, batches, fisher="mc", weight_sharing=weight_sharing)
    dense = _fit(model, batches, fisher="mc", weight_sharing=weight_sharing, storage="dense")
    f, d = auto.factors["enc"], dense.factors["enc"]
    # expand: 4 examples × (2 own + 3·2 shared tokens) G rows per batch pass d/2 = 33
    assert f.A_root and f.G_root == (weight_sharing == "reduce")
    torch.testing.assert_close(f.full_A(), d.A, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(f.full_G(), d.G, rtol=1e-12, atol=1e-14)


def test_a_factor_densified_part_way_is_bit_identical_to_the_dense_fit():
    # mc, 8 examples per batch: G of layer "0" (d = 80) holds 8, 16, ..., 40 rows, then
    # the sixth batch takes it past d/2 = 40; exact: G has 3 rows per example from the start
    model, batches, _ = _mlp(sizes=(8,) * 6)
    for fisher in ("mc", "exact"):
        auto, dense = _fit(model, batches, fisher=fisher), _fit(model, batches, fisher=fisher, storage="dense")
        for name, f in auto.factors.items():
            assert not f.G_root, name
            assert torch.equal(f.G, dense.factors[name].G), name
            assert f.A_root == (name == "0")  # 48 rows: 2·48 ≤ 101, but not 81 or 71
            if not f.A_root:
                assert torch.equal(f.A, dense.factors[name].A)


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: c.name)
def test_small_layers_stay_dense_and_bit_identical(case):
    model, batches = builder(case)()
    auto, dense = _fit(model, batches, fisher="mc"), _fit(model, batches, fisher="mc", storage="dense")
    for name, f in auto.factors.items():
        assert not (f.A_root or f.G_root)
        assert torch.equal(f.A, dense.factors[name].A) and torch.equal(f.G, dense.factors[name].G)


def test_dense_storage_never_roots_and_matches_an_independent_moment():
    model, batches, _ = _mlp(sizes=(8,))
    dense = _fit(model, batches, fisher="empirical", storage="dense")
    assert not any(f.A_root or f.G_root for f in dense.factors.values())
    x = batches[0][0]
    a = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    torch.testing.assert_close(dense.factors["0"].A, a.T @ a / len(x), rtol=1e-13, atol=1e-15)


def test_negative_weight_turns_the_sum_dense():
    acc = Accumulator(SimpleNamespace(params={}), "reduce", torch.float64, torch.device("cpu"))
    X = torch.randn(3, 70, dtype=torch.float64)
    acc._add(acc.G, "m", X, 0.5, _expand_add, True)
    assert isinstance(acc.G["m"], RowSum)
    acc._add(acc.G, "m", X, -0.25, _expand_add, True)
    assert isinstance(acc.G["m"], torch.Tensor)
    torch.testing.assert_close(acc.G["m"], 0.25 * X.T @ X, rtol=1e-13, atol=1e-14)


def test_save_load_round_trip_keeps_roots_and_the_penalty_bit_for_bit(tmp_path):
    model, batches, _ = _mlp()
    auto = _fit(model, batches)
    M.perturb(model, scale=0.2)
    path = tmp_path / "auto.safetensors"
    auto.save(path)
    specs = {s["module"]: s for s in auto._meta()["factors"]}
    assert specs["0"]["A_storage"] == "root" and specs["0"]["G_storage"] == "root"
    loaded = kt.KFAC.load(path, model)
    for name, f in auto.factors.items():
        g = loaded.factors[name]
        assert (g.A_root, g.G_root) == (f.A_root, f.G_root)
        assert torch.equal(g.A, f.A) and torch.equal(g.G, f.G)
    assert torch.equal(loaded.penalty(model), auto.penalty(model))


@pytest.mark.parametrize("gamma", [1.0, 0.3])
def test_merge_of_auto_states_equals_merge_of_dense_states(gamma):
    model, batches, _ = _mlp()
    first = (_fit(model, batches[:1]), _fit(model, batches[:1], storage="dense"))
    M.perturb(model, scale=0.2)
    second = (_fit(model, batches[1:2], seed=1), _fit(model, batches[1:2], seed=1, storage="dense"))
    auto, dense = first[0].merge(second[0], gamma), first[1].merge(second[1], gamma)
    for name, f in auto.factors.items():
        d = dense.factors[name]
        torch.testing.assert_close(f.full_A(), d.A, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(f.full_G(), d.G, rtol=1e-12, atol=1e-14)
    # 8 + 8 columns: A of "0" (101), "2" (81), "4" (71) and G of "0" (80), "2" (70) stay roots
    assert all(f.A_root for f in auto.factors.values()) and auto.factors["0"].G_root and not auto.factors["4"].G_root
    assert auto.factors["0"].A.shape == (101, 16)
    # a third task of 24 examples: 16 + 24 = 40 columns fit in A "0" (101), "2" (81) and
    # G "0" (80), not in A "4" (71) or G "2" (70)
    third = auto.merge(_fit(model, batches, seed=2), gamma)
    third_dense = dense.merge(_fit(model, batches, seed=2, storage="dense"), gamma)
    assert [(f.A_root, f.G_root) for f in third.factors.values()] == [(True, True), (True, False), (False, False)]
    for name, f in third.factors.items():
        torch.testing.assert_close(f.full_A(), third_dense.factors[name].A, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(f.full_G(), third_dense.factors[name].G, rtol=1e-12, atol=1e-14)


def test_invalid_storage_is_refused_naming_the_choices():
    model, batches, _ = _mlp(sizes=(2,))
    with pytest.raises(ValueError, match=r"storage='roots'.*'auto', 'dense'"):
        _fit(model, batches, storage="roots")
