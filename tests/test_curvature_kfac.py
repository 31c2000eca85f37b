"""KFAC against brute-force float64 oracles (DESIGN.md §3, oracles 2 and 3).

Claims checked:
* one example, MLP, ``exact`` / ``empirical``: every layer block of ``to_dense`` equals
  the exact Fisher block (after the [W | b] -> (W, b) permutation); cross-layer blocks
  are zero.
* factors follow the contract's formulas for N > 1: A = mean ã ãᵀ, G = mean Σ_v w_v
  g gᵀ (G is then exactly the bias block of the Fisher); Conv1d patches in the
  ``weight.reshape(out, -1)`` layout; Embedding A a vector of token frequencies;
  LayerNorm and ``diagonal_modules`` parameters get the exact diagonal Fisher.
* ``to_dense`` assembles kron(G, A) (Linear/Conv1d) and kron(diag A, G) (Embedding) in
  ``named_parameters`` order, damping on the diagonal.
* batching invariance; ``mc`` converges to ``exact`` at the MC rate; seed
  reproducibility; ``memory_bytes``.
* for every layer type of ``tests/cases.py``: ``to_dense`` is the Hessian of the
  penalty (a layout-free oracle, with and without damping), batching invariance and MC
  seed reproducibility.
"""

import pytest
import torch

import kfac_tutorial as kt

try:
    from . import models as M
    from . import oracles as O
    from .cases import LAYER_CASES, builder
except ImportError:  # pragma: no cover
    import models as M
    import oracles as O
    from cases import LAYER_CASES, builder

RTOL, ATOL = 1e-8, 1e-12


def _close(a, b, **kw):
    torch.testing.assert_close(
        a.to(torch.float64),
        b.to(torch.float64),
        rtol=kw.get("rtol", RTOL),
        atol=kw.get("atol", ATOL),
    )


def _has_bias(model, module_name):
    b = getattr(model.get_submodule(module_name), "bias", None)
    return b is not None and b.requires_grad


MLPS = {
    "tanh_bias": lambda n: M.mlp(n=n, act="tanh"),
    "relu_bias": lambda n: M.mlp(n=n, act="relu", seed=3),
    "tanh_nobias": lambda n: M.mlp(n=n, act="tanh", bias=False),
}


# ------------------------------------------------------------------ one example: exact


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("make", MLPS.values(), ids=MLPS.keys())
def test_kfac_one_example_layer_blocks_equal_exact_fisher_blocks(make, fisher):
    model, batches = make(1)
    F = O.fisher_dense(model, batches, fisher)
    kfac = kt.KFAC.fit(model, batches, fisher=fisher)
    D = kfac.to_dense(model)
    assert D.dtype == torch.float64 and D.shape == F.shape
    for layer in ("0", "2", "4"):
        names = O.module_param_names(model, layer)
        _close(O.block(D, model, names), O.block(F, model, names))


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_kfac_cross_layer_blocks_are_zero(fisher):
    model, batches = M.mlp(n=3)
    kfac = kt.KFAC.fit(model, batches, fisher=fisher)
    D = kfac.to_dense(model)
    layers = ["0", "2", "4"]
    for i, la in enumerate(layers):
        for lb in layers[i + 1 :]:
            off = O.block(D, model, O.module_param_names(model, la), O.module_param_names(model, lb))
            assert torch.count_nonzero(off) == 0, (la, lb)
    # and the matrix is not trivially zero
    assert torch.linalg.matrix_norm(D) > 0


# ------------------------------------------------------------------ factors, N > 1


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("make", MLPS.values(), ids=MLPS.keys())
def test_kfac_mlp_factors_follow_the_contract_formulas(make, fisher):
    model, batches = make(5)
    kfac = kt.KFAC.fit(model, batches, fisher=fisher)
    assert set(kfac.factors) == {"0", "2", "4"}
    assert kfac.diagonal == {} or all(v.numel() == 0 for v in kfac.diagonal.values())
    for layer in ("0", "2", "4"):
        A, G = O.kfac_factors(model, batches, layer, fisher=fisher)
        f = kfac.factors[layer]
        assert f.kind == "linear"
        mod = model.get_submodule(layer)
        d_in = mod.in_features + (1 if _has_bias(model, layer) else 0)
        assert tuple(f.A.shape) == (d_in, d_in)
        assert tuple(f.G.shape) == (mod.out_features, mod.out_features)
        _close(f.A, A)
        _close(f.G, G)


def test_kfac_input_factor_is_mean_outer_product_of_inputs_with_a_one_appended():
    """A, from the layer inputs alone (forward hooks), no backward pass."""
    model, batches = M.mlp(n=6, batch_sizes=[2, 4])
    kfac = kt.KFAC.fit(model, batches, fisher="exact")
    for layer in ("0", "2", "4"):
        x = torch.cat([xi for inp, _ in batches for xi in O.layer_inputs(model, inp, layer)])
        xt = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        _close(kfac.factors[layer].A, xt.T @ xt / x.shape[0])


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_kfac_gradient_factor_equals_bias_block_of_the_fisher(fisher):
    """The bias gradient is the output gradient g, so G = F[b, b] exactly (any N)."""
    model, batches = M.mlp(n=5)
    F = O.fisher_dense(model, batches, fisher)
    kfac = kt.KFAC.fit(model, batches, fisher=fisher)
    for layer in ("0", "2", "4"):
        _close(kfac.factors[layer].G, O.block(F, model, [f"{layer}.bias"]))


@pytest.mark.parametrize("weight_sharing", ["expand", "reduce"])
@pytest.mark.parametrize("pool", ["max", "mean"])
def test_kfac_conv1d_factors_use_unfolded_patches_in_weight_reshape_layout(pool, weight_sharing):
    model, batches = M.conv_classifier(pool=pool, n=3, t=5)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", weight_sharing=weight_sharing)
    f = kfac.factors["conv"]
    assert f.kind == "conv1d"
    d_in = model.conv.in_channels * model.conv.kernel_size[0] + 1
    assert tuple(f.A.shape) == (d_in, d_in)
    A, G = O.kfac_factors(model, batches, "conv", mode=weight_sharing)
    _close(f.A, A)
    _close(f.G, G)


def test_kfac_embedding_input_factor_is_a_vector_of_token_frequencies():
    model, batches = M.conv_classifier(n=4, t=6)
    kfac = kt.KFAC.fit(model, batches, fisher="exact")
    f = kfac.factors["emb"]
    assert f.kind == "embedding"
    assert tuple(f.A.shape) == (model.emb.num_embeddings,)
    assert tuple(f.G.shape) == (model.emb.embedding_dim,) * 2
    ids = batches[0][0]
    counts = torch.bincount(ids.reshape(-1), minlength=model.emb.num_embeddings)
    _close(f.A, counts.double() / ids.numel())
    A, G = O.kfac_factors(model, batches, "emb")
    _close(f.A, A)
    _close(f.G, G)


def test_kfac_layernorm_and_diagonal_modules_get_the_exact_diagonal_fisher():
    model, batches = M.masked_pool_classifier()
    F = O.fisher_dense(model, batches, "exact")
    diag = O.dense_diag_to_dict(model, F.diagonal())
    kfac = kt.KFAC.fit(model, batches, fisher="exact", diagonal_modules=("proj",))
    assert set(kfac.factors) == {"emb", "head"}
    assert set(kfac.diagonal) == {"norm.weight", "norm.bias", "proj.weight", "proj.bias"}
    for name, v in kfac.diagonal.items():
        assert v.shape == diag[name].shape, name
        _close(v, diag[name])
    # the diagonal parameters appear as a diagonal block of to_dense
    D = kfac.to_dense(model)
    names = list(kfac.diagonal)
    names = [n for n in O.trainable(model) if n in names]
    _close(O.block(D, model, names), torch.diag(O.block(F, model, names).diagonal()))


@pytest.mark.parametrize(
    "make",
    [lambda: M.mlp(n=4), M.masked_pool_classifier, lambda: M.conv_classifier(n=3)],
    ids=["mlp", "embedding_layernorm", "conv1d"],
)
def test_kfac_to_dense_assembles_kronecker_blocks_in_named_parameters_order(make):
    """Linear/Conv1d: kron(G, A) over row-major vec([W | b]) permuted to (W, b);
    Embedding (V, D) row-major: kron(diag(A), G); diagonal params: diag; zero elsewhere;
    damping δ on the whole diagonal."""
    model, batches = make()
    damping = 0.3
    kfac = kt.KFAC.fit(model, batches, fisher="exact", damping=damping)
    P = O.num_params(model)
    expected = torch.zeros(P, P, dtype=torch.float64)
    sl = O.param_slices(model)
    for mod_name, f in kfac.factors.items():
        names = O.module_param_names(model, mod_name)
        idx = torch.cat([torch.arange(sl[n].start, sl[n].stop) for n in names])
        blk = O.kron_block_params_order(f.A.double(), f.G.double(), f.kind, _has_bias(model, mod_name))
        expected[idx[:, None], idx[None, :]] = blk
    for name, v in kfac.diagonal.items():
        i = torch.arange(sl[name].start, sl[name].stop)
        expected[i, i] = v.double().reshape(-1)
    expected += damping * torch.eye(P, dtype=torch.float64)
    covered = set(kfac.diagonal) | {n for m in kfac.factors for n in O.module_param_names(model, m)}
    assert covered == set(O.trainable(model))
    _close(kfac.to_dense(model), expected)


@pytest.mark.parametrize("damping", [0.0, 0.3])
@pytest.mark.parametrize("case", LAYER_CASES, ids=repr)
def test_kfac_to_dense_is_the_hessian_of_the_penalty_for_every_layer_case(case, damping):
    """A layout-free oracle of ``to_dense`` for any layer type: the penalty is
    ``½ Δᵀ F̂ Δ + ½ δ ‖Δ‖²``, so its gradient at ``θ* + e_i`` is column ``i`` of
    ``F̂ + δ I``; the columns, from autograd alone, must assemble ``to_dense``."""
    model, batches = case.build(False, 0)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", damping=damping, progress=False)
    params = list(O.trainable(model).values())
    anchor = O.flat_params(model)
    columns = []
    for i in range(anchor.numel()):
        step = torch.zeros_like(anchor)
        step[i] = 1.0
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(anchor + step, params)
        grads = torch.autograd.grad(kfac.penalty(model), params, allow_unused=True)
        columns.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]))
    D = kfac.to_dense(model)
    assert torch.linalg.matrix_norm(D - damping * torch.eye(len(columns), dtype=D.dtype)) > 0
    _close(D, torch.stack(columns, dim=1))


# ------------------------------------------------------------------ batching


@pytest.mark.parametrize("weight_sharing", ["expand", "reduce"])
@pytest.mark.parametrize(
    "make,sizes",
    [
        (lambda: M.mlp(n=7), [1, 4, 2]),
        (lambda: M.masked_pool_classifier(n=6), [2, 1, 3]),
        (lambda: M.conv_classifier(n=5), [4, 1]),
        (lambda: M.bi_encoder(n=4), [1, 3]),
    ]
    + [(builder(c), None) for c in LAYER_CASES],  # None: one example, then the rest
    ids=["mlp", "embedding_masked", "conv1d", "bi_encoder"] + [f"case_{c.name}" for c in LAYER_CASES],
)
def test_kfac_factors_are_invariant_to_batching(make, sizes, weight_sharing):
    model, batches = make()
    if sizes is None:
        sizes = [1, M.num_examples(batches) - 1]
    kw = dict(fisher="exact", weight_sharing=weight_sharing)
    one = kt.KFAC.fit(model, [M.join_batches(batches)], **kw)
    several = kt.KFAC.fit(model, M.split_batches(batches, sizes), **kw)
    assert set(one.factors) == set(several.factors)
    for name in one.factors:
        _close(several.factors[name].A, one.factors[name].A)
        _close(several.factors[name].G, one.factors[name].G)
    for name in one.diagonal:
        _close(several.diagonal[name], one.diagonal[name])


# ------------------------------------------------------------------ Monte Carlo


def test_kfac_mc_gradient_factors_converge_to_exact_at_the_monte_carlo_rate():
    """Per layer, the MC G is (1/N) Σ_n (1/S) Σ_s g gᵀ with g = J_{n,b}ᵀ (p − e_y);
    its expected squared error V/S is computed exactly (all labels enumerated). As in
    the EWC test: S=1 error > V/50 (really sampled), S=1000 error < 15·V/1000 (≈ χ²₁
    tail 1e-4 in the worst case). A does not depend on the labels: identical to exact."""
    model, batches = M.mlp(n=4)
    exact = kt.KFAC.fit(model, batches, fisher="exact")
    few = kt.KFAC.fit(model, batches, fisher="mc", mc_samples=1, seed=0)
    many = kt.KFAC.fit(model, batches, fisher="mc", mc_samples=1000, seed=0)
    sl = O.param_slices(model)
    for layer in ("0", "2", "4"):
        b = sl[f"{layer}.bias"]
        G_exact, V = O.mc_categorical_error_budget(model, batches, stat=lambda u, b=b: torch.outer(u[b], u[b]))
        _close(exact.factors[layer].G, G_exact)
        err_few = float(((few.factors[layer].G.double() - G_exact) ** 2).sum())
        err_many = float(((many.factors[layer].G.double() - G_exact) ** 2).sum())
        assert err_few > V / 50, (layer, err_few, V)
        assert err_many < 15 * V / 1000, (layer, err_many, V / 1000)
        _close(many.factors[layer].A, exact.factors[layer].A)


MC_MODELS = {"embedding_layernorm": M.masked_pool_classifier, **{f"case_{c.name}": builder(c) for c in LAYER_CASES}}


@pytest.mark.parametrize("make", MC_MODELS.values(), ids=MC_MODELS.keys())
def test_kfac_mc_is_reproducible_with_a_fixed_seed_and_varies_with_the_seed(make):
    model, batches = make()
    torch.manual_seed(1)
    a = kt.KFAC.fit(model, batches, fisher="mc", mc_samples=2, seed=3)
    torch.manual_seed(2)
    b = kt.KFAC.fit(model, batches, fisher="mc", mc_samples=2, seed=3)
    c = kt.KFAC.fit(model, batches, fisher="mc", mc_samples=2, seed=4)
    assert torch.equal(a.to_dense(model), b.to_dense(model))
    assert not torch.equal(a.to_dense(model), c.to_dense(model))


# ------------------------------------------------------------------ memory


@pytest.mark.parametrize("bias", [True, False])
def test_kfac_memory_of_a_linear_layer_is_din_plus_one_squared_plus_dout_squared(bias):
    d_in, d_out = 7, 5
    model = torch.nn.Sequential(torch.nn.Linear(d_in, d_out, bias=bias)).double()
    x = torch.randn(4, d_in, dtype=torch.float64)
    y = torch.randint(0, d_out, (4,))
    kfac = kt.KFAC.fit(model, [(x, y)], fisher="exact")
    f = kfac.factors["0"]
    itemsize = f.A.element_size()
    assert f.G.element_size() == itemsize
    d_a = d_in + 1 if bias else d_in
    assert kfac.memory_bytes() == (d_a**2 + d_out**2) * itemsize


class _BagOfEmbeddings(torch.nn.Module):
    def __init__(self, vocab, classes):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, classes)

    def forward(self, ids):
        return self.emb(ids).mean(1)


def test_kfac_embedding_memory_is_linear_in_the_vocabulary():
    V, C = 2000, 4
    model = _BagOfEmbeddings(V, C).double()
    ids = torch.randint(0, V, (3, 5))
    y = torch.randint(0, C, (3,))
    kfac = kt.KFAC.fit(model, [(ids, y)], fisher="exact")
    f = kfac.factors["emb"]
    assert tuple(f.A.shape) == (V,)
    assert kfac.memory_bytes() == (V + C * C) * f.A.element_size()
    assert kfac.memory_bytes() < V * C * f.A.element_size()  # smaller than the weight


# ------------------------------------------------------------------ trainability, dtype, mode


def test_kfac_linear_with_a_frozen_bias_has_no_homogeneous_coordinate():
    model, batches = M.mlp(n=1)
    model[2].bias.requires_grad_(False)
    kfac = kt.KFAC.fit(model, batches, fisher="exact")
    f = kfac.factors["2"]
    assert tuple(f.A.shape) == (model[2].in_features,) * 2
    F = O.fisher_dense(model, batches, "exact")  # over trainable params only
    D = kfac.to_dense(model)
    assert D.shape == F.shape
    for layer in ("0", "2", "4"):  # one example: blocks still exact
        names = O.module_param_names(model, layer)
        _close(O.block(D, model, names), O.block(F, model, names))


def test_kfac_of_a_float32_model_gives_a_float64_dense_matrix_close_to_the_float64_fit():
    model64, batches64 = M.mlp(n=4)
    ref = kt.KFAC.fit(model64, batches64, fisher="exact").to_dense(model64)
    model32 = M.mlp(n=4)[0].float()
    batches32 = [(x.float(), y) for x, y in batches64]
    D = kt.KFAC.fit(model32, batches32, fisher="exact").to_dense(model32)
    assert D.dtype == torch.float64 and D.shape == ref.shape
    # float32 forward/backward: agreement to single precision only
    torch.testing.assert_close(D, ref, rtol=1e-4, atol=1e-6)


def test_kfac_fisher_is_computed_in_eval_mode_without_dropout():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Dropout(0.5), torch.nn.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    batches = [(x, torch.randint(0, 3, (5,)))]
    expected = {name: O.kfac_factors(model, batches, name) for name in ("0", "3")}  # eval()
    model.train()
    kfac = kt.KFAC.fit(model, batches, fisher="exact")
    for name, (A, G) in expected.items():
        _close(kfac.factors[name].A, A)
        _close(kfac.factors[name].G, G)


@pytest.mark.parametrize(
    "make",
    [M.tied_embedding_classifier, lambda: M.bi_encoder(logit_scale=True)],
    ids=["tied_input_output_embedding", "bi_encoder_logit_scale"],
)
def test_kfac_parameters_held_diagonally_get_the_exact_diagonal_fisher(make):
    """Whatever KFAC keeps in ``diagonal`` (a parameter outside any layer, a weight
    also used outside its module) has EWC's definition: the exact Fisher diagonal; and
    every trainable parameter is covered exactly once."""
    model, batches = make()
    F = O.fisher_dense(model, batches, "exact")
    diag = O.dense_diag_to_dict(model, F.diagonal())
    kfac = kt.KFAC.fit(model, batches, fisher="exact")
    assert kfac.diagonal, "expected at least one diagonally held parameter"
    in_kron = [n for m in kfac.factors for n in O.module_param_names(model, m)]
    assert len(in_kron) == len(set(in_kron))
    assert set(in_kron).isdisjoint(kfac.diagonal)
    assert set(in_kron) | set(kfac.diagonal) == set(O.trainable(model))
    for name, v in kfac.diagonal.items():
        _close(v, diag[name])
