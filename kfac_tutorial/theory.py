"""Helpers for the theory chapters (1-3): toy problems, brute-force curvature, pictures.

Everything here is small on purpose: two-dimensional problems whose loss surface can be
drawn, and networks with a few dozen parameters whose dense ``(P, P)`` Fisher can be
computed by brute force in float64 with ``torch.func``. That brute force is the
reference the book checks :class:`kfac_tutorial.EWC` and :class:`kfac_tutorial.KFAC`
against; the consolidation code itself never uses it.

Conventions are those of :mod:`kfac_tutorial.consolidation`: the flat parameter vector
``θ`` stacks the trainable parameters in ``model.named_parameters()`` order, each
flattened row-major, and every Fisher is the **mean** per-example Fisher
``(1/N) Σ_n E_y[∇log p(y|x_n) ∇log p(y|x_n)ᵀ]``.

Sections: toy tasks and models; a tiny full-batch trainer; brute-force curvature;
matrix comparisons; pictures (loss surfaces, Fisher ellipses, heatmaps).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BinaryLogistic", "MeanOverPositions", "TinyTextCNN", "ToyTask", "accuracy", "block_diagonal", "color", "correlation",
    "dense_fisher", "dense_hessian", "ellipse", "flat_parameters", "layer_groups",
    "logistic_task", "loss_surface", "max_abs_error", "minimize", "mlp", "parameter_slices",
    "plot_decision_regions", "plot_forgetting_curves", "quadratic_penalty",
    "plot_curvature_heatmaps", "plot_ellipses", "plot_loss_surface", "region_task",
    "relative_error", "set_flat_parameters", "train_toy", "use_style",
]


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


def region_task(name: str, center: Sequence[float], angle: float, n_train: int = 400, n_dev: int = 200,
                n_test: int = 400, seed: int = 0, dtype: torch.dtype = torch.float32) -> ToyTask:
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


def logistic_task(n: int, w_true: Sequence[float], corr: float = 0.0, scales: Sequence[float] = (1.0, 1.0),
                  labels: str = "sampled", seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
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


def mlp(sizes: Sequence[int], activation: Callable[[], nn.Module] = nn.Tanh, bias: bool = True,
        dtype: torch.dtype = torch.float32, seed: Optional[int] = None) -> nn.Sequential:
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

    def __init__(self, vocab_size: int = 20, dim: int = 6, channels: int = 5, kernel_size: int = 3,
                 num_classes: int = 4, dtype: torch.dtype = torch.float32):
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


def train_toy(model: nn.Module, X: Tensor, y: Tensor, *, steps: int, lr: float = 1e-2,
              penalty: Optional[Callable[[nn.Module], Tensor]] = None, lam: float = 0.0,
              monitor: Optional[Mapping[str, tuple[Tensor, Tensor]]] = None, every: int = 10) -> dict[str, list[float]]:
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


def minimize(model: nn.Module, X: Tensor, y: Tensor, *, penalty: Optional[Callable[[nn.Module], Tensor]] = None,
             lam: float = 1.0, max_iter: int = 500) -> nn.Module:
    """Minimise ``cross_entropy(model(X), y) + lam * penalty(model)`` to convergence with
    full-batch L-BFGS (strong Wolfe line search): for the convex two-weight problems,
    where the exact minimiser is the point of the picture. Returns ``model`` (in place)."""
    opt = torch.optim.LBFGS(model.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-15, history_size=20)

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


# =============================================================================== parameters
def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def parameter_slices(model: nn.Module) -> dict[str, slice]:
    """``{name: slice}`` of every trainable parameter in the flat vector ``θ`` ``(P,)``."""
    out, start = {}, 0
    for name, p in _trainable(model).items():
        out[name] = slice(start, start + p.numel())
        start += p.numel()
    return out


def flat_parameters(model: nn.Module) -> Tensor:
    """``θ``: the trainable parameters as one detached ``(P,)`` vector (row-major)."""
    return torch.cat([p.detach().reshape(-1) for p in _trainable(model).values()])


@torch.no_grad()
def set_flat_parameters(model: nn.Module, theta: Tensor) -> None:
    """Write a ``(P,)`` vector back into the trainable parameters (inverse of
    :func:`flat_parameters`)."""
    for name, sl in parameter_slices(model).items():
        p = dict(model.named_parameters())[name]
        p.copy_(theta[sl].reshape(p.shape).to(p.dtype))


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Trainable parameter names grouped by the module that owns them (weight with its
    bias): the blocks of a block-diagonal (layer-wise) curvature, in parameter order."""
    groups: dict[str, list[str]] = {}
    for name in _trainable(model):
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        groups.setdefault(owner, []).append(name)
    return list(groups.values())


# =============================================================================== brute force
def _as_float64(model: nn.Module, inputs):
    m = copy.deepcopy(model).to(torch.float64).eval()
    if isinstance(inputs, Tensor):
        x = inputs.to(torch.float64) if inputs.is_floating_point() else inputs
    else:
        x = {k: (v.to(torch.float64) if v.is_floating_point() else v) for k, v in inputs.items()}
    return m, x


def _jacobian(model: nn.Module, inputs) -> tuple[Tensor, Tensor, nn.Module]:
    """float64 ``(outputs, J)``: outputs ``(N, *out)``, ``J`` ``(N, *out, P)`` with
    ``J[n, ..., i] = ∂ outputs[n, ...] / ∂θ_i`` (full-batch Jacobian, then sliced per row)."""
    from torch.func import functional_call, jacrev

    m, x = _as_float64(model, inputs)
    names = list(_trainable(m))
    shapes = [p.shape for p in _trainable(m).values()]
    sizes = [p.numel() for p in _trainable(m).values()]
    fixed = {k: v.detach() for k, v in {**dict(m.named_parameters()), **dict(m.named_buffers())}.items()}

    def f(theta: Tensor) -> Tensor:
        pieces = torch.split(theta, sizes)
        params = {n: t.reshape(s) for n, t, s in zip(names, pieces, shapes)}
        return functional_call(m, {**fixed, **params}, (x,))

    theta = flat_parameters(m)
    with torch.no_grad():
        out = f(theta)
    return out, jacrev(f)(theta), m


def dense_fisher(model: nn.Module, inputs, targets: Optional[Tensor] = None, *, fisher: str = "exact",
                 likelihood: str = "categorical") -> Tensor:
    """Brute-force mean per-example Fisher ``(P, P)`` in float64 (small models only).

    ``model(inputs)`` gives ``(N, C)`` or ``(N, T, C)`` outputs (then positions ``t`` are
    independent predictions). With ``J_{n,t}`` ``(C, P)`` the Jacobian of example ``n``'s
    outputs at position ``t``:

    * ``fisher="exact"``: ``(1/N) Σ_n Σ_t J_{n,t}ᵀ M_{n,t} J_{n,t}`` with
      ``M = diag(p) − p pᵀ`` (categorical, ``p = softmax``) or ``M = I`` (Gaussian
      ``N(f, I)``: the Gauss-Newton matrix).
    * ``fisher="empirical"``: ``(1/N) Σ_n r_n r_nᵀ`` with the per-example loss gradient
      ``r_n = Σ_t J_{n,t}ᵀ (p − e_y)`` (categorical) or ``Σ_t J_{n,t}ᵀ (f − y)`` (Gaussian).

    Independent of :mod:`kfac_tutorial.curvature` (it is the reference for it).
    """
    out, J, _ = _jacobian(model, inputs)
    N, P = out.shape[0], J.shape[-1]
    seq = out.dim() == 3
    out3 = out if seq else out.unsqueeze(1)  # (N, T, C)
    J4 = J if seq else J.unsqueeze(1)  # (N, T, C, P)
    if likelihood not in ("categorical", "gaussian"):
        raise ValueError(f"likelihood={likelihood!r}: choose 'categorical' or 'gaussian'")
    if fisher == "exact":
        if likelihood == "categorical":
            p = torch.softmax(out3, dim=-1)
            M = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # (N, T, C, C)
            return torch.einsum("ntci,ntcd,ntdj->ij", J4, M, J4) / N
        return torch.einsum("ntci,ntcj->ij", J4, J4) / N
    if fisher == "empirical":
        if targets is None:
            raise ValueError("the empirical Fisher needs the data targets")
        if likelihood == "categorical":
            y = targets if seq else targets.unsqueeze(1)
            residual = torch.softmax(out3, dim=-1) - F.one_hot(y, out3.shape[-1]).to(out3.dtype)
        else:
            y = targets.to(torch.float64)
            residual = out3 - (y if seq else y.unsqueeze(1))
        r = torch.einsum("ntci,ntc->ni", J4, residual)  # per-example loss gradients (N, P)
        return r.T @ r / N
    raise ValueError(f"fisher={fisher!r}: the brute force knows 'exact' and 'empirical'")


def dense_hessian(model: nn.Module, inputs, targets: Tensor) -> Tensor:
    """Brute-force ``(P, P)`` Hessian of the mean cross-entropy in float64."""
    from torch.func import functional_call, hessian

    m, x = _as_float64(model, inputs)
    names = list(_trainable(m))
    shapes = [p.shape for p in _trainable(m).values()]
    sizes = [p.numel() for p in _trainable(m).values()]
    fixed = {k: v.detach() for k, v in {**dict(m.named_parameters()), **dict(m.named_buffers())}.items()}

    def loss(theta: Tensor) -> Tensor:
        params = {n: t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return F.cross_entropy(functional_call(m, {**fixed, **params}, (x,)), targets)

    return hessian(loss)(flat_parameters(m))


# =============================================================================== comparisons
def relative_error(approx: Tensor, exact: Tensor) -> float:
    """``‖approx − exact‖_F / ‖exact‖_F`` (both ``(P, P)``), in float64."""
    a, e = approx.double(), exact.double()
    return float(torch.linalg.norm(a - e) / torch.linalg.norm(e))


def max_abs_error(a: Tensor, b: Tensor) -> float:
    """``max |a − b|`` over all entries, in float64."""
    return float((a.double() - b.double()).abs().max())


def block_diagonal(matrix: Tensor, model: nn.Module, groups: Optional[Iterable[Sequence[str]]] = None) -> Tensor:
    """``matrix`` ``(P, P)`` with every entry outside the diagonal blocks set to zero.

    A block is a group of parameter names (default :func:`layer_groups`: one block per
    layer, weight and bias together), the structure a layer-wise KFAC can represent.
    """
    slices = parameter_slices(model)
    mask = torch.zeros(matrix.shape, dtype=torch.bool, device=matrix.device)
    for group in groups if groups is not None else layer_groups(model):
        idx = torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in group])
        mask[idx.unsqueeze(1), idx.unsqueeze(0)] = True
    return matrix * mask


def quadratic_penalty(matrix: Tensor, model: nn.Module) -> Callable[[nn.Module], Tensor]:
    """The reference penalty ``model ↦ ½ (θ − θ*)ᵀ M (θ − θ*)`` for a dense ``(P, P)`` ``M``,
    anchored at ``model``'s current parameters ``θ*`` (differentiable; small models only).
    :meth:`kfac_tutorial.KFAC.penalty` is the same with ``M`` = its ``to_dense``."""
    anchor = flat_parameters(model).clone()
    M = matrix.detach()

    def penalty(m: nn.Module) -> Tensor:
        theta = torch.cat([p.reshape(-1) for p in _trainable(m).values()])
        delta = theta - anchor.to(theta)
        return 0.5 * delta @ M.to(theta) @ delta

    return penalty


def correlation(matrix: Tensor) -> float:
    """``M₁₂ / sqrt(M₁₁ M₂₂)`` of a ``(2, 2)`` curvature: how tilted its ellipse is."""
    m = matrix.double()
    return float(m[0, 1] / torch.sqrt(m[0, 0] * m[1, 1]))


# =============================================================================== pictures
_COLORS = {"exact": "#222222", "diagonal": "#d62728", "EWC": "#d62728", "KFAC": "#1f77b4",
           "empirical": "#ff7f0e", "finetune": "#7f7f7f", "joint": "#2ca02c"}


def use_style() -> None:
    """The book's matplotlib/seaborn style (call once per chapter)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "axes.titleweight": "bold",
                         "figure.autolayout": False})


def color(name: str) -> Optional[str]:
    """The colour the book uses for a method or curvature (None: the palette's next)."""
    return _COLORS.get(name)


@torch.no_grad()
def loss_surface(model: nn.Module, X: Tensor, y: Tensor, center: Sequence[float], radius: float,
                 steps: int = 121) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean cross-entropy on a ``steps × steps`` grid around ``center`` (two-parameter models).

    Returns: ``(W1, W2, L)``, each ``(steps, steps)`` (``W1`` varies along columns), with
    ``L[i, j]`` the loss at ``θ = (W1[i, j], W2[i, j])``. The model is left unchanged.
    """
    theta0 = flat_parameters(model)
    if theta0.numel() != 2:
        raise ValueError(f"loss_surface needs a model with 2 trainable parameters, got {theta0.numel()}")
    from torch.func import functional_call, vmap

    c = torch.tensor([float(v) for v in center], dtype=torch.float64)
    t = torch.linspace(-radius, radius, steps, dtype=torch.float64)
    W1, W2 = torch.meshgrid(c[0] + t, c[1] + t, indexing="xy")
    grid = torch.stack([W1.reshape(-1), W2.reshape(-1)], dim=1)
    m, x = _as_float64(model, X)
    params = _trainable(m)
    if len(params) != 1:
        raise ValueError("loss_surface expects the two weights in one parameter tensor")
    ((name, p),) = params.items()

    def loss(theta: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(m, {name: theta.reshape(p.shape)}, (x,)), y)

    L = vmap(loss, chunk_size=max(1, 2**22 // max(1, x.shape[0])))(grid).reshape(steps, steps)  # bounded memory
    return W1.numpy(), W2.numpy(), L.numpy()


def ellipse(matrix: Tensor, center: Sequence[float], level: float = 1.0, num: int = 200) -> np.ndarray:
    """Points ``θ`` with ``½ (θ − center)ᵀ M (θ − center) = level`` for a ``(2, 2)``
    positive definite ``M``: the contour of the quadratic penalty. Returns ``(num, 2)``."""
    m = matrix.detach().double().cpu()
    evals, evecs = torch.linalg.eigh(m)
    if evals.min() <= 0:
        raise ValueError("the matrix must be positive definite to draw its ellipse")
    t = torch.linspace(0, 2 * math.pi, num, dtype=torch.float64)
    circle = torch.stack([torch.cos(t), torch.sin(t)], dim=1)  # (num, 2)
    pts = (circle * torch.sqrt(2 * level / evals)) @ evecs.T
    return (pts + torch.tensor([float(v) for v in center], dtype=torch.float64)).numpy()


def plot_loss_surface(ax, surface: tuple[np.ndarray, np.ndarray, np.ndarray], levels: Sequence[float],
                      cmap: str = "Greys", label: Optional[str] = None, filled: bool = True):
    """Contours of a :func:`loss_surface` (filled in shades of ``cmap``) on ``ax``."""
    W1, W2, L = surface
    if filled:
        ax.contourf(W1, W2, L, levels=[L.min(), *levels], cmap=cmap, alpha=0.35, extend="neither")
    cs = ax.contour(W1, W2, L, levels=list(levels), colors="0.35", linewidths=0.8)
    if label is not None:
        ax.plot([], [], color="0.35", lw=0.8, label=label)
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    return cs


def plot_ellipses(ax, curvatures: Mapping[str, Tensor], center: Sequence[float], level: float,
                  styles: Optional[Mapping[str, dict]] = None) -> None:
    """One ellipse ``½ Δᵀ M Δ = level`` per ``(label, (2, 2) matrix)``, and the centre."""
    for label, m in curvatures.items():
        pts = ellipse(m, center, level)
        style = {"color": color(label), "lw": 2.0, **((styles or {}).get(label, {}))}
        ax.plot(pts[:, 0], pts[:, 1], label=label, **style)
    ax.plot(*[float(v) for v in center], marker="*", color="black", ms=12, ls="none")
    ax.set_aspect("equal")


def plot_curvature_heatmaps(matrices: Mapping[str, Tensor], errors: Optional[Mapping[str, float]] = None,
                            boundaries: Optional[Sequence[int]] = None, clip_quantile: float = 0.99,
                            title: Optional[str] = None):
    """Side-by-side heatmaps of ``(P, P)`` curvature matrices on one linear colour scale.

    Args:
        matrices: ``{label: (P, P) tensor}``, the reference (exact) first.
        errors: optional ``{label: relative error}`` shown in the panel titles.
        boundaries: parameter offsets where a new parameter tensor starts (thin lines).
        clip_quantile: the colour scale ends at this quantile of the reference's absolute
            entries (a few large entries would otherwise wash out the rest); red positive,
            blue negative, white zero.

    Returns: the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    mats = {k: v.detach().double().cpu().numpy() for k, v in matrices.items()}
    reference = np.abs(next(iter(mats.values())))
    vmax = float(np.quantile(reference, clip_quantile)) or float(reference.max()) or 1.0
    norm = Normalize(vmin=-vmax, vmax=vmax)
    fig, axes = plt.subplots(1, len(mats), figsize=(3.6 * len(mats) + 0.8, 4.0), squeeze=False)
    image = None
    for ax, (label, m) in zip(axes[0], mats.items()):
        image = ax.imshow(m, cmap="RdBu_r", norm=norm, interpolation="nearest")
        text = label if not errors or label not in errors else f"{label}\nrel. error {errors[label]:.2f}"
        ax.set_title(text, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for b in boundaries or ():
            ax.axhline(b - 0.5, color="0.6", lw=0.5)
            ax.axvline(b - 0.5, color="0.6", lw=0.5)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, extend="both", label="matrix entry")
    if title:
        fig.suptitle(title)
    return fig


@torch.no_grad()
def plot_decision_regions(ax, model: nn.Module, tasks: Sequence[ToyTask], extent: Sequence[float] = (-5, 5, -3.5, 3.5),
                          steps: int = 200, split: str = "test", max_points: int = 150) -> None:
    """Shade ``ax`` by the class a 2-D classifier predicts and scatter the tasks' points.

    ``extent = (x_min, x_max, y_min, y_max)``; markers: one per task (``o``, ``s``, ``^``),
    colour = true class. Up to ``max_points`` points of ``split`` per task.
    """
    x0, x1, y0, y1 = extent
    dtype = next(model.parameters()).dtype
    gx, gy = torch.meshgrid(torch.linspace(x0, x1, steps, dtype=dtype), torch.linspace(y0, y1, steps, dtype=dtype), indexing="xy")
    was_training = model.training
    model.eval()
    pred = model(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)).argmax(-1).reshape(steps, steps)
    model.train(was_training)
    ax.contourf(gx.numpy(), gy.numpy(), pred.numpy(), levels=[-0.5, 0.5, 1.5], colors=["#aec7e8", "#ffbb78"], alpha=0.6)
    for task, marker in zip(tasks, ["o", "s", "^", "D"]):
        X, y = getattr(task, split)
        X, y = X[:max_points].double().numpy(), y[:max_points].numpy()
        for cls, c in [(0, "#1f77b4"), (1, "#ff7f0e")]:
            sel = y == cls
            ax.scatter(X[sel, 0], X[sel, 1], s=12, marker=marker, color=c, edgecolor="white", linewidth=0.3,
                       label=f"task {task.name}, class {cls}")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")


def plot_forgetting_curves(ax, histories: Mapping[str, Mapping[str, Sequence[float]]], key: str,
                           chance: Optional[float] = None, linestyle: str = "-", label_suffix: str = "") -> None:
    """Accuracy on ``key`` (a monitored split of :func:`train_toy`) against the training step,
    one line per method: ``histories = {method: train_toy(...) result}``."""
    for method, h in histories.items():
        ax.plot(h["step"], h[key], linestyle, color=color(method), lw=2, label=f"{method}{label_suffix}")
    if chance is not None:
        ax.axhline(chance, color="0.5", lw=1, ls=":", label="chance")
    ax.set_xlabel("training step on the new task")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
