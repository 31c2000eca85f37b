"""Toy problems of the theory chapters: two-dimensional tasks whose loss surface can be
drawn, networks with a few dozen parameters, and a tiny full-batch trainer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# =============================================================================== toy tasks
@dataclass
class ToyTask:
    """A toy classification task with three splits of ``(X, y)`` pairs.

    Attributes:
        name: short name (``"A"``, ``"B"``).
        train, dev, test: ``(X, y)`` with ``X`` of shape ``(n, d)`` (float) and ``y`` of
            shape ``(n,)`` (long class indices).
    """

    name: str
    train: tuple[Tensor, Tensor]
    dev: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]


def region_task(
    name: str,
    center: Sequence[float],
    angle: float,
    n_train: int = 400,
    n_dev: int = 200,
    n_test: int = 400,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ToyTask:
    """Two classes in one region of the plane, split by a line through the region's centre.

    Inputs are standard normal points shifted to ``center``; the label is 1 on the side
    of the line that the unit vector ``(cos angle, sin angle)`` points to. Two tasks with
    different centres and angles need different decision boundaries in different places,
    so one small network can learn both, but training on the second alone overwrites the
    first: a two-dimensional picture of catastrophic forgetting.

    Returns: a :class:`ToyTask` whose splits have ``X`` ``(n, 2)`` of ``dtype`` and ``y`` ``(n,)``.
    """
    gen = torch.Generator().manual_seed(seed)
    direction = torch.tensor([math.cos(angle), math.sin(angle)])
    shift = torch.tensor([float(c) for c in center])

    def draw(n: int) -> tuple[Tensor, Tensor]:
        z = torch.randn(n, 2, generator=gen)
        return (z + shift).to(dtype), (z @ direction > 0).long()

    return ToyTask(name, draw(n_train), draw(n_dev), draw(n_test))


def logistic_task(
    n: int,
    w_true: Sequence[float],
    corr: float = 0.0,
    scales: Sequence[float] = (1.0, 1.0),
    labels: str = "sampled",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Binary logistic-regression data in two dimensions, no intercept.

    ``x ~ N(0, Σ)`` with ``Σ = diag(scales) [[1, corr], [corr, 1]] diag(scales)``.
    ``labels="sampled"``: ``y ~ Bernoulli(σ(w_trueᵀ x))`` (the model family is right);
    ``labels="threshold"``: ``y = 1[w_trueᵀ x > 0]`` (noise-free labels a logistic model can
    fit ever more confidently: its maximum-likelihood weights grow without bound).

    Returns: ``X`` ``(n, 2)`` of ``dtype`` and ``y`` ``(n,)`` long.
    """
    if labels not in ("sampled", "threshold"):
        raise ValueError(f"labels={labels!r}: choose 'sampled' or 'threshold'")
    gen = torch.Generator().manual_seed(seed)
    cov = torch.tensor([[1.0, corr], [corr, 1.0]], dtype=torch.float64)
    s = torch.tensor([float(v) for v in scales], dtype=torch.float64)
    chol = torch.linalg.cholesky(cov * s[:, None] * s[None, :])
    X = torch.randn(n, 2, generator=gen, dtype=torch.float64) @ chol.T
    logit = X @ torch.tensor([float(v) for v in w_true], dtype=torch.float64)
    if labels == "sampled":
        y = (torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid(logit)).long()
    else:
        y = (logit > 0).long()
    return X.to(dtype), y


class BinaryLogistic(nn.Module):
    """Logistic regression ``p(y=1|x) = σ(wᵀx)`` written as a two-class classifier.

    One layer, ``self.linear = nn.Linear(d, 1, bias=False)`` (``d`` weights, so the loss
    surface of a two-dimensional problem is a picture). ``forward``: ``(B, d)`` →
    ``(B, 2)`` logits ``[0, wᵀx]``, the form every curvature routine expects. KFAC sees
    the input factor ``A = E[x xᵀ]`` ``(d, d)`` and the output factor
    ``G = E[g²]`` ``(1, 1)``, with ``g = p − y`` (sampled or exact).
    """

    def __init__(self, in_features: int = 2, weight: Optional[Sequence[float]] = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.linear = nn.Linear(in_features, 1, bias=False, dtype=dtype)
        if weight is not None:
            with torch.no_grad():
                self.linear.weight.copy_(torch.tensor([list(weight)], dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        s = self.linear(x)
        return torch.cat([torch.zeros_like(s), s], dim=-1)


def mlp(
    sizes: Sequence[int],
    activation: Callable[[], nn.Module] = nn.Tanh,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: Optional[int] = None,
) -> nn.Sequential:
    """``Linear → activation → … → Linear`` with layer widths ``sizes`` (input first).

    ``activation=None`` gives a deep *linear* network. Layers are named ``"0"``, ``"2"``, …
    (or ``"0"``, ``"1"``, … without activations), as ``nn.Sequential`` numbers them.
    """
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(d_in, d_out, bias=bias, dtype=dtype))
        if activation is not None and i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class MeanOverPositions(nn.Module):
    """``(B, T, d)`` → ``(B, d)``: the mean over positions. Placed after a network that acts
    on every position, it turns a per-position (*expand*) model into a pooled (*reduce*) one."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=1)


class TinyTextCNN(nn.Module):
    """A miniature of the CNN linker: token ids → embedding → Conv1d → tanh → mean → Linear.

    ``forward``: ids ``(B, T)`` (long) → logits ``(B, num_classes)``. Submodules
    ``embedding`` (``(V, D)`` table), ``conv`` (``D → channels``, ``kernel_size``, same
    length) and ``head`` (``channels → num_classes``): one of each layer type that KFAC
    treats differently (diagonal ``A``, KFC patches, plain linear).
    """

    def __init__(
        self,
        vocab_size: int = 20,
        dim: int = 6,
        channels: int = 5,
        kernel_size: int = 3,
        num_classes: int = 4,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, dtype=dtype)
        self.conv = nn.Conv1d(dim, channels, kernel_size, padding=kernel_size // 2, dtype=dtype)
        self.head = nn.Linear(channels, num_classes, dtype=dtype)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embedding(ids).transpose(1, 2)  # (B, D, T)
        h = torch.tanh(self.conv(h))  # (B, channels, T)
        return self.head(h.mean(dim=2))  # (B, num_classes)


# =============================================================================== training
@torch.no_grad()
def accuracy(model: nn.Module, X: Tensor, y: Tensor) -> float:
    """Fraction of rows of ``X`` ``(n, d)`` whose arg-max logit equals ``y`` ``(n,)``."""
    was_training = model.training
    model.eval()
    acc = float((model(X).argmax(-1) == y).double().mean())
    model.train(was_training)
    return acc


def train_toy(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float = 1e-2,
    penalty: Optional[Callable[[nn.Module], Tensor]] = None,
    lam: float = 0.0,
    monitor: Optional[Mapping[str, tuple[Tensor, Tensor]]] = None,
    every: int = 10,
) -> dict[str, list[float]]:
    """Full-batch Adam on ``cross_entropy(model(X), y) + lam * penalty(model)``.

    A toy loop for the seconds-long demonstrations of the theory chapters (the linkers
    use :func:`kfac_tutorial.training.train`). ``X`` ``(n, d)``, ``y`` ``(n,)``.

    Returns: ``{"step": [...], name: [accuracy on monitor[name] at that step, ...]}``,
    recorded every ``every`` steps and after the last one (empty lists without ``monitor``).
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    monitor = dict(monitor or {})
    history: dict[str, list[float]] = {"step": [], **{k: [] for k in monitor}}

    def record(step: int) -> None:
        if monitor:
            history["step"].append(step)
            for k, (Xm, ym) in monitor.items():
                history[k].append(accuracy(model, Xm, ym))

    model.train()
    for step in range(steps):
        if step % every == 0:
            record(step)
        loss = F.cross_entropy(model(X), y)
        if penalty is not None and lam:
            loss = loss + lam * penalty(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    record(steps)
    model.eval()
    return history


def minimize(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    penalty: Optional[Callable[[nn.Module], Tensor]] = None,
    lam: float = 1.0,
    max_iter: int = 500,
) -> nn.Module:
    """Minimise ``cross_entropy(model(X), y) + lam * penalty(model)`` to convergence with
    full-batch L-BFGS (strong Wolfe line search): for the convex two-weight problems,
    where the exact minimiser is the point of the picture. Returns ``model`` (in place)."""
    opt = torch.optim.LBFGS(
        model.parameters(),
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=20,
    )

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(X), y)
        if penalty is not None and lam:
            loss = loss + lam * penalty(model)
        loss.backward()
        return loss

    opt.step(closure)
    model.eval()
    return model
