"""EWC: a diagonal Fisher (Kirkpatrick et al. 2017), online merge ``F ← γ F_old + F_new``."""

from __future__ import annotations

from typing import ClassVar, Iterable

from torch import nn

from ..persistence import StateMismatchError
from .base import Consolidation, check_gamma


class EWC(Consolidation):
    """Diagonal Fisher consolidation (Elastic Weight Consolidation)."""

    kind: ClassVar[str] = "EWC"

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        batches: Iterable,
        fisher: str = "mc",
        mc_samples: int = 1,
        *,
        likelihood: str = "categorical",
        seed: int = 0,
        damping: float = 0.0,
        progress: bool = True,
        distributed: bool = True,
        process_group=None,
    ) -> "EWC":
        """Estimate ``diag F = (1/N) Σ_n Σ_v w_v (J_nᵀ v)²`` from per-example gradients.

        Args:
            model: any ``nn.Module`` whose output on ``inputs`` holds ``(B, C)`` or
                ``(B, T, C)`` logits (a tensor, a ``ModelOutput`` with ``.logits``, or a
                tuple's first element); a dict input whose keys ``forward`` names is
                passed as keyword arguments. Put in ``eval()`` during the estimate.
            batches: iterable of ``(inputs, targets)``; inputs a tensor or dict of tensors.
            fisher: ``"exact"``, ``"mc"`` or ``"empirical"`` (see
                :mod:`kfac_tutorial.curvature.flavours`).
            mc_samples: sampled labels per example for ``"mc"``.
            likelihood: ``"categorical"`` (logits) or ``"gaussian"`` (unit-variance means).
            seed: seeds the label sampling.
            damping: ``δ`` of ``F̂ + δI`` in the penalty.
            progress: show a tqdm progress bar.
            distributed: when ``torch.distributed`` is initialised, sum the unnormalised
                statistics and example counts of every rank of ``process_group`` (default:
                the default group) before normalising: every rank must call ``fit`` with
                its own shard and gets the state over the union of the shards
                (:mod:`kfac_tutorial.curvature.distributed`; ``mc`` labels per rank from
                ``rank_seed(seed, rank)``). ``False``: this process's batches only.
            process_group: the ``torch.distributed`` group to combine over.

        A model wrapped in ``DistributedDataParallel`` or compiled with ``torch.compile``
        is estimated through the module it wraps: the state names its parameters as the
        plain model does (``penalty``, ``to_dense``, ``save``/``load`` accept either).
        """
        est, anchor, info = cls._estimate(
            model,
            batches,
            fisher=fisher,
            mc_samples=mc_samples,
            likelihood=likelihood,
            seed=seed,
            damping=damping,
            progress=progress,
            kronecker=False,
            distributed=distributed,
            process_group=process_group,
        )
        return cls(anchor, est.diagonal, damping=damping, info=info)

    def merge(self, new: "EWC", gamma: float = 1.0) -> "EWC":
        """Online EWC: ``F ← γ F_self + F_new`` around ``new``'s anchor."""
        gamma = check_gamma(gamma)
        if not isinstance(new, EWC):
            raise TypeError(f"can only merge an EWC state into an EWC state, got {type(new).__name__}")
        if set(new.diagonal) != set(self.diagonal):
            raise StateMismatchError("the two EWC states cover different parameters")
        diagonal = {n: gamma * self.diagonal[n] + new.diagonal[n] for n in new.diagonal}
        return EWC(
            {n: a.clone() for n, a in new.anchor.items()}, diagonal, damping=new.damping, info=self._merged_info(new, gamma)
        )
