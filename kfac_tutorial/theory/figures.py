"""Pictures of the theory chapters: loss surfaces, Fisher ellipses, heatmaps, decision
regions, forgetting curves. Colours and style are those of :mod:`kfac_tutorial.plots`
(one palette for the whole book)."""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..plots import METHOD_COLORS, set_style
from .fisher import _as_float64, _trainable, flat_parameters
from .toys import ToyTask

# the theory chapters' names for a curvature, in the palette of plots.METHOD_COLORS: the
# diagonal Fisher is EWC's, KFAC is KFAC's; the exact Fisher is black (no method has it)
_COLORS = {
    "exact": "#222222",
    "diagonal": METHOD_COLORS["ewc"],
    "EWC": METHOD_COLORS["ewc"],
    "KFAC": METHOD_COLORS["kfac"],
    "empirical": METHOD_COLORS["kfac_online"],
    "finetune": METHOD_COLORS["finetune"],
    "joint": METHOD_COLORS["joint"],
}


def use_style() -> None:
    """The book's matplotlib/seaborn style (:func:`kfac_tutorial.plots.set_style`)."""
    set_style()


def color(name: str) -> Optional[str]:
    """The colour the book uses for a method or curvature (None: the palette's next)."""
    return _COLORS.get(name, METHOD_COLORS.get(name.lower()))


@torch.no_grad()
def loss_surface(
    model: nn.Module, X: Tensor, y: Tensor, center: Sequence[float], radius: float, steps: int = 121
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def plot_loss_surface(
    ax,
    surface: tuple[np.ndarray, np.ndarray, np.ndarray],
    levels: Sequence[float],
    cmap: str = "Greys",
    label: Optional[str] = None,
    filled: bool = True,
):
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


def plot_ellipses(
    ax, curvatures: Mapping[str, Tensor], center: Sequence[float], level: float, styles: Optional[Mapping[str, dict]] = None
) -> None:
    """One ellipse ``½ Δᵀ M Δ = level`` per ``(label, (2, 2) matrix)``, and the centre."""
    for label, m in curvatures.items():
        pts = ellipse(m, center, level)
        style = {"color": color(label), "lw": 2.0, **((styles or {}).get(label, {}))}
        ax.plot(pts[:, 0], pts[:, 1], label=label, **style)
    ax.plot(*[float(v) for v in center], marker="*", color="black", ms=12, ls="none")
    ax.set_aspect("equal")


def plot_curvature_heatmaps(
    matrices: Mapping[str, Tensor],
    errors: Optional[Mapping[str, float]] = None,
    boundaries: Optional[Sequence[int]] = None,
    clip_quantile: float = 0.99,
    title: Optional[str] = None,
):
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
def plot_decision_regions(
    ax,
    model: nn.Module,
    tasks: Sequence[ToyTask],
    extent: Sequence[float] = (-5, 5, -3.5, 3.5),
    steps: int = 200,
    split: str = "test",
    max_points: int = 150,
) -> None:
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
            ax.scatter(
                X[sel, 0],
                X[sel, 1],
                s=12,
                marker=marker,
                color=c,
                edgecolor="white",
                linewidth=0.3,
                label=f"task {task.name}, class {cls}",
            )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_aspect("equal")


def plot_forgetting_curves(
    ax,
    histories: Mapping[str, Mapping[str, Sequence[float]]],
    key: str,
    chance: Optional[float] = None,
    linestyle: str = "-",
    label_suffix: str = "",
) -> None:
    """Accuracy on ``key`` (a monitored split of :func:`train_toy`) against the training step,
    one line per method: ``histories = {method: train_toy(...) result}``."""
    for method, h in histories.items():
        ax.plot(h["step"], h[key], linestyle, color=color(method), lw=2, label=f"{method}{label_suffix}")
    if chance is not None:
        ax.axhline(chance, color="0.5", lw=1, ls=":", label="chance")
    ax.set_xlabel("training step on the new task")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
