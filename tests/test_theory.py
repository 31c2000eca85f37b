"""Tests for kfac_tutorial.theory, the helpers of the theory chapters (1-3).

The brute-force Fisher is checked against closed forms (logistic regression, linear
Gaussian models) and against the Hessian where theory says they coincide; the pictures
are smoke-tested on the Agg backend.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import kfac_tutorial as kt  # noqa: E402
from kfac_tutorial import theory  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def logistic(seed=0, n=64, labels="sampled"):
    X, y = theory.logistic_task(n, (1.5, -0.5), corr=0.6, labels=labels, seed=seed)
    model = theory.BinaryLogistic(weight=(0.7, -0.3))
    return model, X, y


# ----------------------------------------------------------------------------- toy tasks
def test_region_task_is_deterministic_and_shaped():
    a = theory.region_task("A", (-2.0, 0.0), 0.0, n_train=50, n_dev=20, n_test=30, seed=3)
    b = theory.region_task("A", (-2.0, 0.0), 0.0, n_train=50, n_dev=20, n_test=30, seed=3)
    assert a.train[0].shape == (50, 2) and a.dev[0].shape == (20, 2) and a.test[1].shape == (30,)
    assert torch.equal(a.train[0], b.train[0]) and torch.equal(a.test[1], b.test[1])
    # the label is the side of the line through the centre, orthogonal to (cos angle, sin angle)
    X, y = a.train
    assert torch.equal(y, (X[:, 0] + 2.0 > 0).long())


def test_logistic_task_threshold_labels_follow_the_true_weights():
    X, y = theory.logistic_task(200, (2.0, -1.0), corr=0.8, labels="threshold", seed=1)
    assert X.dtype == torch.float64 and X.shape == (200, 2)
    assert torch.equal(y, (X @ torch.tensor([2.0, -1.0], dtype=torch.float64) > 0).long())
    corr = torch.corrcoef(X.T)[0, 1]
    assert abs(float(corr) - 0.8) < 0.1
    with pytest.raises(ValueError):
        theory.logistic_task(10, (1.0, 1.0), labels="bogus")


def test_binary_logistic_is_a_two_class_logistic_regression():
    model, X, _ = logistic()
    logits = model(X)
    assert logits.shape == (X.shape[0], 2)
    p = torch.softmax(logits, -1)[:, 1]
    expected = torch.sigmoid(X @ torch.tensor([0.7, -0.3], dtype=torch.float64))
    assert torch.allclose(p, expected)


def test_mlp_layout_and_deep_linear_networks():
    net = theory.mlp([3, 5, 2], seed=0)
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    linear = theory.mlp([3, 5, 2], activation=None, bias=False)
    assert all(isinstance(m, nn.Linear) for m in linear)
    x = torch.randn(4, 7, 3)
    pooled = nn.Sequential(linear, theory.MeanOverPositions())
    assert torch.allclose(pooled(x), linear(x).mean(1))


def test_tiny_text_cnn_shapes():
    cnn = theory.TinyTextCNN(vocab_size=11, dim=4, channels=3, kernel_size=3, num_classes=5)
    assert cnn(torch.randint(0, 11, (6, 9))).shape == (6, 5)


# ----------------------------------------------------------------------------- training
def test_train_toy_records_history_and_learns():
    task = theory.region_task("A", (0.0, 0.0), 0.3, n_train=200, seed=0)
    net = theory.mlp([2, 8, 2], seed=0)
    before = theory.accuracy(net, *task.test)
    history = theory.train_toy(net, *task.train, steps=60, lr=0.05, monitor={"test": task.test}, every=20)
    assert history["step"] == [0, 20, 40, 60]
    assert len(history["test"]) == 4 and history["test"][0] == pytest.approx(before)
    assert history["test"][-1] > 0.9


def test_train_toy_penalty_keeps_parameters_close():
    task = theory.region_task("A", (0.0, 0.0), 0.3, n_train=100, seed=0)
    net = theory.mlp([2, 4, 2], seed=0)
    anchor = theory.flat_parameters(net)
    penalty = theory.quadratic_penalty(torch.eye(anchor.numel()), net)
    free, held = [theory.mlp([2, 4, 2], seed=0) for _ in range(2)]
    theory.train_toy(free, *task.train, steps=50, lr=0.05)
    theory.train_toy(held, *task.train, steps=50, lr=0.05, penalty=penalty, lam=100.0)
    assert (theory.flat_parameters(held) - anchor).norm() < (theory.flat_parameters(free) - anchor).norm()


def test_minimize_finds_a_stationary_point():
    model, X, y = logistic(n=300)
    theory.minimize(model, X, y)
    loss = nn.functional.cross_entropy(model(X), y)
    (grad,) = torch.autograd.grad(loss, [model.linear.weight])
    assert grad.abs().max() < 1e-6


# ----------------------------------------------------------------------------- parameters
def test_flat_parameters_roundtrip_and_slices():
    net = theory.mlp([3, 4, 2], seed=1)
    theta = theory.flat_parameters(net)
    slices = theory.parameter_slices(net)
    assert theta.numel() == sum(p.numel() for p in net.parameters())
    assert torch.equal(theta[slices["2.weight"]], net[2].weight.detach().reshape(-1))
    theory.set_flat_parameters(net, torch.arange(theta.numel(), dtype=theta.dtype))
    assert torch.equal(theory.flat_parameters(net), torch.arange(theta.numel(), dtype=theta.dtype))
    assert theory.layer_groups(net) == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]


def test_block_diagonal_keeps_only_layer_blocks():
    net = theory.mlp([2, 3, 2], seed=0)  # blocks of 9 and 8 parameters
    M = torch.ones(17, 17)
    B = theory.block_diagonal(M, net)
    assert B[:9, :9].eq(1).all() and B[9:, 9:].eq(1).all()
    assert B[:9, 9:].eq(0).all() and B[9:, :9].eq(0).all()


# ----------------------------------------------------------------------------- brute force
def test_dense_fisher_matches_the_logistic_closed_form():
    model, X, y = logistic()
    p = torch.sigmoid(X @ model.linear.weight.detach().reshape(-1))
    exact = (X.T * (p * (1 - p))) @ X / X.shape[0]
    empirical = (X.T * (p - y) ** 2) @ X / X.shape[0]
    assert torch.allclose(theory.dense_fisher(model, X), exact, atol=1e-12)
    assert torch.allclose(theory.dense_fisher(model, X, y, fisher="empirical"), empirical, atol=1e-12)


def test_fisher_equals_hessian_for_logistic_regression():
    model, X, y = logistic(seed=2)
    assert theory.max_abs_error(theory.dense_hessian(model, X, y), theory.dense_fisher(model, X)) < 1e-12


def test_gaussian_fisher_of_a_linear_layer_is_identity_kron_input_covariance():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2, bias=False)
    X = torch.randn(10, 3)
    F = theory.dense_fisher(layer, X, likelihood="gaussian")
    X64 = X.double()
    assert torch.allclose(F, torch.kron(torch.eye(2, dtype=torch.float64), X64.T @ X64 / 10), atol=1e-12)


def test_sequence_outputs_sum_over_positions():
    torch.manual_seed(0)
    net = theory.mlp([3, 4, 2], seed=0)
    X = torch.randn(5, 6, 3)  # (N, T, d): positions are independent predictions
    per_position = theory.dense_fisher(net, X)
    flat = theory.dense_fisher(net, X.reshape(30, 3))
    assert torch.allclose(per_position, 6 * flat, atol=1e-12)


def test_dense_fisher_argument_errors():
    model, X, y = logistic()
    with pytest.raises(ValueError):
        theory.dense_fisher(model, X, fisher="empirical")
    with pytest.raises(ValueError):
        theory.dense_fisher(model, X, fisher="mc")
    with pytest.raises(ValueError):
        theory.dense_fisher(model, X, likelihood="poisson")


def test_brute_force_agrees_with_the_package():
    net = theory.mlp([3, 4, 3], dtype=torch.float64, seed=0)
    X = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    exact = theory.dense_fisher(net, X)
    ewc = kt.EWC.fit(net, [(X, y)], fisher="exact", progress=False)
    assert theory.max_abs_error(torch.diag(ewc.to_dense(net)), torch.diag(exact)) < 1e-12
    kfac = kt.KFAC.fit(net, [(X[:1], y[:1])], fisher="exact", progress=False)
    assert theory.max_abs_error(kfac.to_dense(net), theory.block_diagonal(theory.dense_fisher(net, X[:1]), net)) < 1e-12


def test_quadratic_penalty_matches_the_package_penalty():
    net = theory.mlp([3, 4, 3], dtype=torch.float64, seed=0)
    X = torch.randn(8, 3, dtype=torch.float64)
    kfac = kt.KFAC.fit(net, [(X, None)], fisher="exact", progress=False)
    reference = theory.quadratic_penalty(kfac.to_dense(net), net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert float(reference(net).detach()) == pytest.approx(float(kfac.penalty(net).detach()), rel=1e-10)


# ----------------------------------------------------------------------------- comparisons
def test_relative_error_max_abs_error_and_correlation():
    M = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    assert theory.relative_error(M, M) == 0.0
    assert theory.relative_error(2 * M, M) == pytest.approx(1.0)
    assert theory.max_abs_error(M, M + 0.5) == pytest.approx(0.5)
    assert theory.correlation(M) == pytest.approx(0.5)


def test_ellipse_points_lie_on_the_level_set():
    M = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    pts = torch.from_numpy(theory.ellipse(M, (1.0, -1.0), level=0.3, num=50))
    delta = pts - torch.tensor([1.0, -1.0], dtype=torch.float64)
    values = 0.5 * torch.einsum("ni,ij,nj->n", delta, M, delta)
    assert torch.allclose(values, torch.full_like(values, 0.3))
    with pytest.raises(ValueError):
        theory.ellipse(torch.tensor([[1.0, 0.0], [0.0, -1.0]]), (0.0, 0.0))


def test_loss_surface_is_the_loss_on_a_grid():
    model, X, y = logistic()
    W1, W2, L = theory.loss_surface(model, X, y, center=(0.7, -0.3), radius=1.0, steps=5)
    assert W1.shape == W2.shape == L.shape == (5, 5)
    assert W1[2, 2] == pytest.approx(0.7) and W2[2, 2] == pytest.approx(-0.3)
    assert L[2, 2] == pytest.approx(float(nn.functional.cross_entropy(model(X), y)))
    assert W1[0, 4] > W1[0, 0] and W2[4, 0] > W2[0, 0]  # W1 varies along columns
    with pytest.raises(ValueError):
        theory.loss_surface(theory.mlp([2, 2, 2]), X.float(), y, (0, 0), 1.0)


# ----------------------------------------------------------------------------- pictures
def test_pictures_render():
    model, X, y = logistic()
    fisher = theory.dense_fisher(model, X)
    fig, ax = plt.subplots()
    surface = theory.loss_surface(model, X, y, (0.7, -0.3), 1.0, steps=11)
    theory.plot_loss_surface(ax, surface, [surface[2].min() + d for d in (0.01, 0.05)], label="loss")
    theory.plot_ellipses(ax, {"exact": fisher, "diagonal": torch.diag(torch.diag(fisher))}, (0.7, -0.3), 0.05)
    assert len(ax.lines) >= 3

    net = theory.mlp([2, 3, 2], seed=0)
    fig = theory.plot_curvature_heatmaps({"a": torch.eye(17), "b": torch.ones(17, 17)}, {"b": 0.5}, boundaries=[9])
    assert len(fig.axes) == 3  # two panels and the colour bar

    task = theory.region_task("A", (0.0, 0.0), 0.0, n_train=20, n_dev=5, n_test=20)
    fig, ax = plt.subplots()
    theory.plot_decision_regions(ax, net, [task], steps=20)
    history = theory.train_toy(net, *task.train, steps=10, monitor={"A": task.test}, every=5)
    theory.plot_forgetting_curves(ax, {"finetune": history}, "A", chance=0.5)
    assert theory.color("KFAC") is not None and theory.color("unknown") is None
    assert not math.isnan(history["A"][-1])
