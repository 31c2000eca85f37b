"""The brute-force Fisher: dense ``(P, P)`` curvature in float64 with ``torch.func``.

The one reference for every curvature in the book and the tests (``tests/oracles.py``
calls :func:`dense_fisher`); independent of :mod:`kfac_tutorial.curvature`, which it
checks. The flat parameter vector ``θ`` stacks the trainable parameters in
``model.named_parameters()`` order, each flattened row-major; every Fisher is the
**mean** per-example Fisher ``(1/N) Σ_n E_y[∇log p(y|x_n) ∇log p(y|x_n)ᵀ]``. Also:
matrix comparisons (relative error, block diagonal, the reference penalty).
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def dense_fisher(
    model: nn.Module, inputs, targets: Optional[Tensor] = None, *, fisher: str = "exact", likelihood: str = "categorical"
) -> Tensor:
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
    N, _P = out.shape[0], J.shape[-1]
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
