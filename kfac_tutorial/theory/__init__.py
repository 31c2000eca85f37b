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

Modules: :mod:`.toys` (toy tasks and models, a tiny full-batch trainer),
:mod:`.fisher` (the brute-force Fisher and Hessian, matrix comparisons; also the
tests' oracle), :mod:`.figures` (loss surfaces, Fisher ellipses, heatmaps).
"""

from .figures import (
    color,
    ellipse,
    loss_surface,
    plot_curvature_heatmaps,
    plot_decision_regions,
    plot_ellipses,
    plot_forgetting_curves,
    plot_loss_surface,
    use_style,
)
from .fisher import (
    block_diagonal,
    correlation,
    dense_fisher,
    dense_hessian,
    flat_parameters,
    layer_groups,
    max_abs_error,
    parameter_slices,
    quadratic_penalty,
    relative_error,
    set_flat_parameters,
)
from .toys import (
    BinaryLogistic,
    MeanOverPositions,
    TinyTextCNN,
    ToyTask,
    accuracy,
    logistic_task,
    minimize,
    mlp,
    region_task,
    train_toy,
)

__all__ = [
    "BinaryLogistic",
    "MeanOverPositions",
    "TinyTextCNN",
    "ToyTask",
    "accuracy",
    "block_diagonal",
    "color",
    "correlation",
    "dense_fisher",
    "dense_hessian",
    "ellipse",
    "flat_parameters",
    "layer_groups",
    "logistic_task",
    "loss_surface",
    "max_abs_error",
    "minimize",
    "mlp",
    "parameter_slices",
    "plot_decision_regions",
    "plot_forgetting_curves",
    "quadratic_penalty",
    "plot_curvature_heatmaps",
    "plot_ellipses",
    "plot_loss_surface",
    "region_task",
    "relative_error",
    "set_flat_parameters",
    "train_toy",
    "use_style",
]
