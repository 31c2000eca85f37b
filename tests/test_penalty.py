"""Penalty and consolidation over several tasks (DESIGN.md §3, oracle 4; §4).

Claims checked:
* ``penalty(model)`` = ½ Δᵀ F̂ Δ with F̂ = ``to_dense(model)`` and Δ = θ − θ*; its
  autograd gradient is F̂ Δ, per KFAC layer G ΔW̃ A (ΔW̃ = [ΔW | Δb]); damping δ adds
  ½ δ ‖Δ‖²; at the anchor the penalty and its gradient are zero.
* the anchor is a copy of the parameters at fit time.
* ``a + b``: penalty / to_dense / memory_bytes are sums, each term with its own anchor.
* ``old.merge(new, gamma)``: EWC diagonal = γ·old + new exactly, anchor = new's; KFAC
  with identical factors: to_dense = (1 + γ)·(A ⊗ G) blocks, anchor = new's.

Every check that holds for any layer type runs over the models below and over every
layer type of ``tests/cases.py`` (``LAYER_CASES``): a new layer case is checked here too.
"""

import pytest
import torch

import kfac_tutorial as kt

try:
    from . import models as M
    from . import oracles as O
    from .cases import LAYER_CASES, builder, case_fits, kronecker_cases
except ImportError:  # pragma: no cover
    import models as M
    import oracles as O
    from cases import LAYER_CASES, builder, case_fits, kronecker_cases

RTOL, ATOL = 1e-8, 1e-12


def _close(a, b):
    torch.testing.assert_close(
        torch.as_tensor(a).to(torch.float64),
        torch.as_tensor(b).to(torch.float64),
        rtol=RTOL,
        atol=ATOL,
    )


def _grad_flat(model, value):
    params = list(O.trainable(model).values())
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


FITS = {
    "ewc_mlp": (lambda: M.mlp(n=4), kt.EWC, {}),
    "kfac_mlp": (lambda: M.mlp(n=4), kt.KFAC, {}),
    "kfac_embedding_layernorm": (M.masked_pool_classifier, kt.KFAC, {}),
    "kfac_conv1d_expand": (M.conv_classifier, kt.KFAC, {"weight_sharing": "expand"}),
    "ewc_bi_encoder": (M.bi_encoder, kt.EWC, {}),
    "kfac_bi_encoder_logit_scale": (lambda: M.bi_encoder(logit_scale=True), kt.KFAC, {}),
    "kfac_tied_embedding": (M.tied_embedding_classifier, kt.KFAC, {}),
    **case_fits(prefix="case_"),  # every layer type of tests/cases.py, EWC and KFAC
}


@pytest.mark.parametrize("damping", [0.0, 0.7])
@pytest.mark.parametrize("make,cls,kw", FITS.values(), ids=FITS.keys())
def test_penalty_is_half_quadratic_form_and_its_gradient_is_F_delta(make, cls, kw, damping):
    model, batches = make()
    est = cls.fit(model, batches, fisher="exact", damping=damping, **kw)
    delta = M.flat_delta(model, M.perturb(model, scale=0.3))
    F = est.to_dense(model)
    pen = est.penalty(model)
    assert pen.ndim == 0
    _close(pen, 0.5 * delta @ F @ delta)
    _close(_grad_flat(model, pen), F @ delta)


@pytest.mark.parametrize("make,cls,kw", FITS.values(), ids=FITS.keys())
def test_damping_adds_half_delta_norm_squared(make, cls, kw):
    model, batches = make()
    plain = cls.fit(model, batches, fisher="exact", **kw)
    damped = cls.fit(model, batches, fisher="exact", damping=0.7, **kw)
    delta = M.flat_delta(model, M.perturb(model, scale=0.3))
    _close(damped.penalty(model), plain.penalty(model) + 0.5 * 0.7 * delta @ delta)
    P = delta.numel()
    _close(damped.to_dense(model), plain.to_dense(model) + 0.7 * torch.eye(P, dtype=torch.float64))


def test_kfac_penalty_gradient_per_layer_is_G_dW_A():
    """DESIGN.md oracle 4: ∂/∂[W | b] of ½ tr(ΔW̃ᵀ G ΔW̃ A) = G ΔW̃ A."""
    model, batches = M.mlp(n=5)
    kfac = kt.KFAC.fit(model, batches, fisher="exact")
    delta = M.perturb(model, scale=0.3)
    pen = kfac.penalty(model)
    names = list(O.trainable(model))
    grads = dict(zip(names, torch.autograd.grad(pen, [O.trainable(model)[n] for n in names])))
    total = 0.0
    for layer in ("0", "2", "4"):
        f = kfac.factors[layer]
        dW = torch.cat([delta[f"{layer}.weight"], delta[f"{layer}.bias"][:, None]], dim=1)
        expected = f.G.double() @ dW @ f.A.double()
        _close(grads[f"{layer}.weight"], expected[:, :-1])
        _close(grads[f"{layer}.bias"], expected[:, -1])
        total = total + 0.5 * (dW * expected).sum()
    _close(pen, total)


@pytest.mark.parametrize("make,cls,kw", FITS.values(), ids=FITS.keys())
def test_penalty_is_zero_with_zero_gradient_at_the_anchor(make, cls, kw):
    model, batches = make()
    est = cls.fit(model, batches, fisher="exact", damping=0.5, **kw)
    pen = est.penalty(model)
    assert float(pen.detach()) == 0.0
    g = _grad_flat(model, pen)
    assert torch.count_nonzero(g) == 0


def test_anchor_is_a_copy_of_the_parameters_at_fit_time():
    model, batches = M.mlp(n=3)
    theta_star = {n: p.detach().clone() for n, p in model.named_parameters()}
    ewc = kt.EWC.fit(model, batches, fisher="exact")
    kfac = kt.KFAC.fit(model, batches, fisher="exact")
    M.perturb(model, scale=0.5)  # in-place change must not move the anchors
    for est in (ewc, kfac):
        assert set(est.anchor) == set(theta_star)
        for n, v in theta_star.items():
            assert torch.equal(est.anchor[n].to(v.dtype), v), n
    assert float(ewc.penalty(model).detach()) > 0 and float(kfac.penalty(model).detach()) > 0


def test_penalty_is_differentiable_and_usable_in_a_training_step():
    model, batches = M.masked_pool_classifier()
    kfac = kt.KFAC.fit(model, batches, fisher="exact")
    M.perturb(model, scale=0.3)
    before = float(kfac.penalty(model).detach())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        kfac.penalty(model).backward()
        opt.step()
    assert float(kfac.penalty(model).detach()) < before


# ------------------------------------------------------------------ several tasks


# the MLP, then every layer type of tests/cases.py: ``seed -> (model, batches)``, where
# the data (not the shapes) depend on the seed
TASKS = {"mlp": lambda seed: M.mlp(n=4, seed=seed)}
TASKS.update({f"case_{c.name}": (lambda seed, c=c: c.build(False, seed)) for c in LAYER_CASES})


def _two_tasks(cls_a, cls_b, make=TASKS["mlp"]):
    """Fit a on task 1 at θ1, move the model, fit b on task 2 at θ2, move again."""
    model, batches1 = make(0)
    _, batches2 = make(5)
    a = cls_a.fit(model, batches1, fisher="exact")
    M.perturb(model, scale=0.2, seed=1)
    b = cls_b.fit(model, batches2, fisher="exact")
    M.perturb(model, scale=0.2, seed=2)
    return model, a, b


@pytest.mark.parametrize(
    "cls_a,cls_b",
    [(kt.EWC, kt.EWC), (kt.KFAC, kt.KFAC), (kt.EWC, kt.KFAC), (kt.KFAC, kt.EWC)],
    ids=["ewc+ewc", "kfac+kfac", "ewc+kfac", "kfac+ewc"],
)
@pytest.mark.parametrize("make", TASKS.values(), ids=TASKS.keys())
def test_sum_of_consolidations_sums_penalties_with_their_own_anchors(cls_a, cls_b, make):
    model, a, b = _two_tasks(cls_a, cls_b, make)
    theta = O.flat_params(model)

    def anchor(e):
        return torch.cat([e.anchor[n].double().reshape(-1) for n in O.trainable(model)])

    da, db = theta - anchor(a), theta - anchor(b)
    assert not torch.allclose(da, db)  # two different anchors
    s = a + b
    Fa, Fb = a.to_dense(model), b.to_dense(model)
    _close(s.penalty(model), 0.5 * da @ Fa @ da + 0.5 * db @ Fb @ db)
    _close(s.penalty(model), a.penalty(model) + b.penalty(model))
    _close(_grad_flat(model, s.penalty(model)), Fa @ da + Fb @ db)
    _close(s.to_dense(model), Fa + Fb)
    assert s.memory_bytes() == a.memory_bytes() + b.memory_bytes()


def test_sum_of_three_consolidations_is_associative_in_its_penalty():
    model, a, b = _two_tasks(kt.EWC, kt.KFAC)
    _, batches3 = M.mlp(n=3, seed=9)
    c = kt.KFAC.fit(model, batches3, fisher="exact")
    M.perturb(model, scale=0.1, seed=4)
    total = a.penalty(model) + b.penalty(model) + c.penalty(model)
    _close((a + b + c).penalty(model), total)
    _close((a + (b + c)).penalty(model), total)


@pytest.mark.parametrize("make", TASKS.values(), ids=TASKS.keys())
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_ewc_merge_is_gamma_old_plus_new_with_the_new_anchor(gamma, make):
    model, old, new = _two_tasks(kt.EWC, kt.EWC, make)
    merged = old.merge(new, gamma)
    assert isinstance(merged, kt.EWC)
    for n in O.trainable(model):
        _close(merged.diagonal[n], gamma * old.diagonal[n] + new.diagonal[n])
        assert torch.equal(merged.anchor[n], new.anchor[n]), n
    delta = O.flat_params(model) - torch.cat([new.anchor[n].double().reshape(-1) for n in O.trainable(model)])
    dense = gamma * old.to_dense(model) + new.to_dense(model)
    _close(merged.to_dense(model), dense)
    _close(merged.penalty(model), 0.5 * delta @ dense @ delta)


MERGE_MODELS = {
    "embedding_layernorm": M.masked_pool_classifier,  # Kronecker blocks and diagonal params
    **{f"case_{c.name}": builder(c) for c in LAYER_CASES},
}


@pytest.mark.parametrize("make", MERGE_MODELS.values(), ids=MERGE_MODELS.keys())
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_kfac_merge_of_identical_factors_is_one_plus_gamma_times_kron(gamma, make):
    model, batches = make()
    old = kt.KFAC.fit(model, batches, fisher="exact")
    new = kt.KFAC.fit(model, batches, fisher="exact")  # identical factors
    merged = old.merge(new, gamma)
    assert isinstance(merged, kt.KFAC)
    M.perturb(model, scale=0.2, seed=1)
    _close(merged.to_dense(model), (1 + gamma) * new.to_dense(model))
    _close(merged.penalty(model), (1 + gamma) * new.penalty(model))


KRONECKER_TASKS = {"mlp": TASKS["mlp"], **{f"case_{c.name}": TASKS[f"case_{c.name}"] for c in kronecker_cases()}}


@pytest.mark.parametrize("make", KRONECKER_TASKS.values(), ids=KRONECKER_TASKS.keys())
def test_kfac_merge_keeps_the_new_anchor_and_factor_shapes(make):
    model, old, new = _two_tasks(kt.KFAC, kt.KFAC, make)
    merged = old.merge(new, 0.5)
    for n in O.trainable(model):
        assert torch.equal(merged.anchor[n], new.anchor[n]), n
    for name, f in new.factors.items():
        assert merged.factors[name].A.shape == f.A.shape
        assert merged.factors[name].G.shape == f.G.shape
    assert merged.memory_bytes() == new.memory_bytes()
