"""The fit-cost optimisations give the old results: zero-gradient positions skipped in the
EWC squared sums, probe passes that double as the first backprop vector's backward pass,
the two-example broadcast check. Oracles: torch.func per-example gradients and the dense
brute-force Fisher of tests/oracles.py."""

import importlib

import pytest
import torch
from torch import nn
from torch.func import grad, vmap

import kfac_tutorial as kt
from kfac_tutorial.curvature.rules.linear import squared_outer_sum

from oracles import dense_diag_to_dict, fisher_dense

est = importlib.import_module("kfac_tutorial.curvature.estimate")


# -- squared_outer_sum ---------------------------------------------------------------------
def _per_example_squares(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``Σ_n (∂/∂W Σ_s g_s · (W a_s))²`` by torch.func, one example at a time."""
    a = a.expand(g.shape[0], *a.shape[1:])
    w0 = torch.zeros(g.shape[-1], a.shape[-1], dtype=torch.float64)

    def f(w, an, gn):
        return (gn * (an @ w.T)).sum()

    return vmap(grad(f), in_dims=(None, 0, 0))(w0, a, g).square().sum(0)


def _gradient_patterns():
    gen = torch.Generator().manual_seed(0)
    B, P, din, dout = 6, 5, 4, 3
    a = torch.randn(B, P, din, generator=gen, dtype=torch.float64)
    g = torch.randn(B, P, dout, generator=gen, dtype=torch.float64)
    cls = torch.zeros_like(g)
    cls[:, 0] = g[:, 0]  # a CLS head: only position 0 gets a gradient
    single = torch.zeros_like(g)
    for n in range(B):  # one position per example, a different one each; example 5 none
        if n < 5:
            single[n, n] = g[n, n]
    padded = g.clone()
    padded[:3, 3:] = 0  # trailing padding of half the batch
    padded[4] = 0  # an example without gradient
    padded[5, 0] = 0  # a leading zero position
    holes = g.clone()
    holes[:, 2] = 0  # a position zero for every example, between live ones
    holes[1, 1, 0] = 0  # an entry, not a whole position
    return {"dense": (a, g), "cls": (a, cls), "single": (a, single), "padded": (a, padded), "holes": (a, holes),
            "shared_inputs": (a[:1], padded), "all_zero": (a, torch.zeros_like(g))}  # fmt: skip


@pytest.mark.parametrize("case", ["dense", "cls", "single", "padded", "holes", "shared_inputs", "all_zero"])
def test_squared_outer_sum_skipping_zero_positions_equals_per_example_gradients(case):
    a, g = _gradient_patterns()[case]
    got = squared_outer_sum(a, g, torch.float64)
    ref = _per_example_squares(a, g)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    if case != "all_zero":
        # not the square of the batch-summed gradient (the classic bug)
        assert not torch.allclose(
            got, _per_example_squares(a.expand(g.shape[0], -1, -1).sum(0, keepdim=True), g.sum(0, keepdim=True))
        )


# -- probes: misaligned rows and unexplained parameters -------------------------------------
class Mixer(nn.Module):
    """Linear -> (rows mixed over the batch) -> Linear. ``mode``: ``roll`` (output ``n``
    sees rows ``n`` and ``n−1``, so example 0 sees row ``B−1``: the first pass sees it) or
    ``prefix`` (output ``n ≥ 1`` sees rows ``n`` and ``n−1``, output 0 row 0 only: only
    the second pass sees that row 0 feeds example 1)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = self.a(x)
        prev = h.roll(1, 0) if self.mode == "roll" else torch.cat([torch.zeros_like(h[:1]), h[:-1]])
        return self.b(torch.tanh(h + 0.5 * prev))


class FunctionalReuse(nn.Module):
    """A Linear whose weight is also used functionally: its calls do not explain it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(h) + 0.3 * nn.functional.linear(h, self.b.weight)


def _data(n=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return [(x, torch.randint(0, 3, (n,), generator=gen))]


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("model_fn", [lambda: Mixer("roll"), lambda: Mixer("prefix"), FunctionalReuse])
def test_probes_catch_misaligned_rows_and_unexplained_parameters(model_fn, fisher):
    torch.manual_seed(0)
    model = model_fn().double().eval()
    batches = _data()
    est.clear_probe_cache()
    kwargs = {"fisher": fisher}
    ewc = kt.EWC.fit(model, batches, **kwargs)
    ref = dense_diag_to_dict(model, torch.diagonal(fisher_dense(model, batches, fisher=fisher)))
    for name, d in ref.items():
        torch.testing.assert_close(ewc.diagonal[name], d, rtol=1e-9, atol=1e-12)
    cache = next(iter(est._PROBE_CACHE[model].values()))
    if isinstance(model, Mixer):
        assert cache[1][("a", 0)] is False and cache[1][("b", 0)] is True
    else:
        assert cache[0] == {"b.weight"}  # the functional use: the calls do not explain it
        with pytest.warns(est.DiagonalFallbackWarning):
            kt.KFAC.fit(model, batches, **kwargs)


def test_aligned_rows_stay_aligned():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    est.clear_probe_cache()
    kt.EWC.fit(model, _data(), fisher="mc")
    unexplained, aligned = next(iter(est._PROBE_CACHE[model].values()))
    assert unexplained == frozenset() and aligned == {("0", 0): True, ("2", 0): True}


# -- the probe passes double as the first vector's backward ---------------------------------
def _tiny_bert(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip

    class Cls(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = transformers.BertModel(config, add_pooling_layer=False)
            self.head = nn.Linear(8, 3)

        def forward(self, inputs):
            return self.head(self.bert(**inputs).last_hidden_state[:, 0])

    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in (5, 4):
        ids = torch.randint(1, 50, (b, 7), generator=gen)
        mask = torch.ones(b, 7, dtype=torch.long)
        mask[: b // 2, 5:] = 0
        batches.append(({"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (b,), generator=gen)))
    return Cls().double().eval(), batches


@pytest.mark.parametrize("fisher", ["mc", "empirical"])
@pytest.mark.parametrize("cls", [kt.EWC, kt.KFAC])
def test_first_fit_with_probe_passes_equals_cached_fit(cls, fisher):
    """A first fit (probes, whose passes give the first vector's gradients) equals a second
    fit of the same model (probes cached: every vector's backward pass of its own)."""
    model, batches = _tiny_bert()
    est.clear_probe_cache()
    first = cls.fit(model, batches, fisher=fisher, mc_samples=2, progress=False)
    second = cls.fit(model, batches, fisher=fisher, mc_samples=2, progress=False)
    for name, d in getattr(first, "diagonal", {}).items():
        torch.testing.assert_close(d, second.diagonal[name], rtol=1e-10, atol=1e-14)
    for name, f in getattr(first, "factors", {}).items():
        torch.testing.assert_close(f.A, second.factors[name].A, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(f.G, second.factors[name].G, rtol=1e-10, atol=1e-14)


def test_stock_bert_ewc_diagonal_equals_brute_force():
    """Zero-gradient positions (CLS head, padding), probe reuse and the broadcast position
    call together: the EWC diagonal against the dense empirical Fisher."""
    model, batches = _tiny_bert(1)
    est.clear_probe_cache()
    ewc = kt.EWC.fit(model, batches, fisher="empirical", progress=False)
    names = ["head.weight", "bert.encoder.layer.1.output.dense.weight", "bert.encoder.layer.1.attention.self.query.weight"]
    frozen = [p for n, p in model.named_parameters() if n not in names]
    for p in frozen:
        p.requires_grad_(False)
    try:
        ref = dense_diag_to_dict(model, torch.diagonal(fisher_dense(model, batches, fisher="empirical")))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    for name in names:
        torch.testing.assert_close(ewc.diagonal[name], ref[name], rtol=1e-9, atol=1e-14)


# -- the broadcast check on 2 examples --------------------------------------------------------
class PositionModel(nn.Module):
    """Token + position embeddings, the positions called with ``(1, T)`` ids (broadcast).
    ``sensitive``: ``"sum"`` adds the position output summed over its rows (changes when
    the call is expanded to the batch), ``"large"`` does so only when it has more than 2
    rows (so 2 examples alone do not show it), ``None`` is insensitive."""

    def __init__(self, sensitive):
        super().__init__()
        self.sensitive = sensitive
        self.tok, self.pos = nn.Embedding(11, 4), nn.Embedding(6, 4)
        self.lin, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        pos = self.pos(torch.arange(x.shape[1])[None])
        h = self.tok(x) + pos
        if self.sensitive == "sum" or (self.sensitive == "large" and pos.shape[0] > 2):
            h = h + pos.sum(0, keepdim=True)
        return self.head(torch.tanh(self.lin(h)).mean(1))


@pytest.mark.parametrize("sensitive", [None, "sum", "large"])
def test_broadcast_check_catches_models_that_expansion_changes(sensitive):
    torch.manual_seed(0)
    model = PositionModel(sensitive).double().eval()
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, 11, (5, 6), generator=gen), torch.randint(0, 3, (5,), generator=gen))]
    est.clear_probe_cache()
    ewc = kt.EWC.fit(model, batches, fisher="exact")
    ref = dense_diag_to_dict(model, torch.diagonal(fisher_dense(model, batches, fisher="exact")))
    for name, d in ref.items():
        torch.testing.assert_close(ewc.diagonal[name], d, rtol=1e-9, atol=1e-13)
    broadcast_ok = [v for k, v in est._PROBE_CACHE[model].items() if k[0] == "broadcast"]
    assert broadcast_ok == [sensitive is None]


def test_first_examples_slices_only_batch_tensors():
    x = torch.arange(12).reshape(4, 3)
    assert torch.equal(est._first_examples(x, 4, 2), x[:2])
    d = est._first_examples({"ids": x, "mask": x > 2, "flag": True}, 4, 2)
    assert torch.equal(d["ids"], x[:2]) and d["mask"].shape == (2, 3) and d["flag"] is True
    assert est._first_examples({"ids": x, "other": torch.ones(3)}, 4, 2) is None
    assert est._first_examples([x], 4, 2) is None


class SumPooled(nn.Module):
    """A Linear over tokens whose output is sum-pooled right away: autograd hands its
    gradient back as an expanded (zero-stride) tensor."""

    def __init__(self):
        super().__init__()
        self.emb, self.lin, self.head = nn.Embedding(9, 4), nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(self.emb(x)).sum(1)))


@pytest.mark.parametrize("cls", [kt.EWC, kt.KFAC])
def test_probe_reuse_with_expanded_gradients(cls):
    torch.manual_seed(0)
    model = SumPooled().double().eval()
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randint(0, 9, (4, 6), generator=gen), None) for _ in range(2)]
    est.clear_probe_cache()
    first = cls.fit(model, batches, fisher="mc", mc_samples=2)
    second = cls.fit(model, batches, fisher="mc", mc_samples=2)
    for name, d in first.diagonal.items():
        torch.testing.assert_close(d, second.diagonal[name], rtol=1e-10, atol=1e-14)
    for name, f in getattr(first, "factors", {}).items():
        torch.testing.assert_close(f.G, second.factors[name].G, rtol=1e-10, atol=1e-14)
