"""Fisher flavours: which vectors are back-propagated through the network.

Every Fisher in this package has the form

    F = (1/N) Σ_n Σ_v w_v (J_nᵀ v)(J_nᵀ v)ᵀ,

where ``J_n`` is the Jacobian of example ``n``'s model outputs ``f_n`` with respect to
the parameters and the *backprop vectors* ``v`` (shape of ``f_n``) with weights ``w_v``
depend on the flavour. For a categorical likelihood (logits, cross-entropy), with
``p = softmax(f_n)``:

* ``exact``: ``v_c = sqrt(p_c) (e_c − p)`` for every class ``c`` (weight 1), so that
  ``Σ_c v_c v_cᵀ = diag(p) − p pᵀ``, the Hessian of the cross-entropy in the logits.
  ``C`` backward passes per batch; for sequence outputs ``(B, T, C)`` one vector per
  (position, class), since positions are independent predictions.
* ``mc``: ``v = p − e_y`` with ``y ~ Categorical(p)`` sampled from the model,
  ``mc_samples`` draws of weight ``1/mc_samples``; unbiased for ``exact``.
* ``empirical``: ``v = p − e_y`` with the data label ``y`` (weight 1): the
  "empirical Fisher", the second moment of per-example loss gradients.

For a Gaussian likelihood ``N(f, I)`` (loss ``½‖y − f‖²``): ``exact`` uses ``v = e_d``
(so the Fisher is ``Jᵀ J``, the generalised Gauss-Newton), ``mc`` uses ``v = ε ~ N(0, I)``
and ``empirical`` uses ``v = f − y``.

Targets equal to ``ignore_index`` (−100) mark positions that are not predictions; their
vectors are zero.
"""

from __future__ import annotations

from enum import Enum
from typing import Iterator, Optional

import torch
from torch import Tensor

IGNORE_INDEX = -100


class FisherType(str, Enum):
    """Which Fisher is estimated (see the module docstring)."""

    EXACT = "exact"
    MC = "mc"
    EMPIRICAL = "empirical"


class Likelihood(str, Enum):
    """The model's predictive distribution: logits of a categorical, or a unit Gaussian mean."""

    CATEGORICAL = "categorical"
    GAUSSIAN = "gaussian"


def parse_enum(enum_cls: type[Enum], value: object, argument: str) -> Enum:
    """``value`` as a member of ``enum_cls``; a clear error lists the valid choices."""
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum_cls)
        raise ValueError(f"{argument}={value!r} is not valid; choose one of {choices}.") from None


def backprop_vectors(
    outputs: Tensor,
    targets: Optional[Tensor],
    fisher: FisherType,
    likelihood: Likelihood,
    mc_samples: int = 1,
    generator: Optional[torch.Generator] = None,
) -> Iterator[tuple[Tensor, float]]:
    """Yield ``(v, w)`` pairs: backprop vectors with the shape of ``outputs`` and weights.

    Args:
        outputs: ``(B, C)`` or ``(B, T, C)`` model outputs (logits or Gaussian means),
            detached.
        targets: ``(B,)`` / ``(B, T)`` class indices (categorical) or a tensor shaped like
            ``outputs`` (Gaussian). Required for ``empirical``; for the other flavours
            only used to drop positions whose target is ``ignore_index``.
        fisher, likelihood: the flavour and the likelihood.
        mc_samples: number of sampled labels for ``mc``.
        generator: random generator for ``mc`` (seeded by the caller).
    """
    if outputs.dim() not in (2, 3):
        raise ValueError(f"model outputs must have shape (B, C) or (B, T, C), got {tuple(outputs.shape)}")
    outputs = outputs.detach()
    valid = torch.ones(outputs.shape[:-1], dtype=torch.bool, device=outputs.device)
    if likelihood is Likelihood.CATEGORICAL and targets is not None:
        if targets.shape != outputs.shape[:-1]:
            raise ValueError(
                f"categorical targets must have shape {tuple(outputs.shape[:-1])} (class indices), got {tuple(targets.shape)}"
            )
        valid = targets != IGNORE_INDEX
    if fisher is FisherType.EMPIRICAL and targets is None:
        raise ValueError("fisher='empirical' needs the data targets: batches must yield (inputs, targets).")
    mask = valid.unsqueeze(-1).to(outputs.dtype)
    num_classes = outputs.shape[-1]

    if likelihood is Likelihood.CATEGORICAL:
        p = torch.softmax(outputs, dim=-1)
        if fisher is FisherType.EXACT:
            sqrt_p = p.sqrt()
            positions = [None] if outputs.dim() == 2 else range(outputs.shape[1])
            live = (sqrt_p * mask).flatten(0, -2).any(0)  # classes with p_c > 0 somewhere
            for t in positions:
                for c in range(num_classes):
                    if not live[c]:  # v_c = 0 exactly (e.g. a masked class): contributes nothing
                        continue
                    residual = -p.clone()
                    residual[..., c] += 1.0
                    v = sqrt_p[..., c : c + 1] * residual * mask
                    if t is not None:  # one position at a time: positions are independent
                        keep = torch.zeros_like(v)
                        keep[:, t] = v[:, t]
                        v = keep
                    yield v, 1.0
        elif fisher is FisherType.MC:
            flat = p.reshape(-1, num_classes)
            for _ in range(mc_samples):
                y = torch.multinomial(flat, 1, generator=generator).reshape(p.shape[:-1])
                v = (p - torch.nn.functional.one_hot(y, num_classes).to(p.dtype)) * mask
                yield v, 1.0 / mc_samples
        else:
            y = targets.clamp(min=0)
            v = (p - torch.nn.functional.one_hot(y, num_classes).to(p.dtype)) * mask
            yield v, 1.0
    else:
        if fisher is FisherType.EXACT:
            positions = [None] if outputs.dim() == 2 else range(outputs.shape[1])
            for t in positions:
                for d in range(num_classes):
                    v = torch.zeros_like(outputs)
                    if t is None:
                        v[:, d] = 1.0
                    else:
                        v[:, t, d] = 1.0
                    yield v, 1.0
        elif fisher is FisherType.MC:
            for _ in range(mc_samples):
                eps = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
                yield eps, 1.0 / mc_samples
        else:
            if targets.shape != outputs.shape:
                raise ValueError(
                    f"gaussian targets must have the outputs' shape {tuple(outputs.shape)}, got {tuple(targets.shape)}"
                )
            yield outputs - targets.to(outputs.dtype), 1.0
