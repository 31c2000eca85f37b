"""EWC / KFAC consolidation inside the Hugging Face ``Trainer``.

:class:`ConsolidationTrainer` is a ``transformers.Trainer`` whose training loss is

    task loss + λ · penalty(θ),        penalty(θ) = ½ (θ − θ*)ᵀ F̂ (θ − θ*)

for a state of earlier tasks (:class:`~kfac_tutorial.EWC`, :class:`~kfac_tutorial.KFAC`
or a per-task sum), logs the mean penalty of the steps since the last log as
``consolidation_penalty``, and after training can fit the new task's curvature
(:meth:`ConsolidationTrainer.fit_curvature`) and save it (:meth:`save_curvature`:
safetensors, atomically, written by the main process only).

It runs unchanged on one process and under ``torchrun`` / ``accelerate launch``: the
penalty is computed on the unwrapped model (the state's names have no ``module.``), is
the same on every rank, and DDP averages its gradient like the task's; the curvature fit
gives each rank a disjoint shard of the dataset (rank ``r`` takes examples ``r, r + W,
…``, no padding or duplicates) and sums the statistics over the ranks
(:mod:`kfac_tutorial.curvature.distributed`), so every rank holds the fit over the
whole dataset.

>>> trainer = ConsolidationTrainer(model=model, args=args, train_dataset=task_b,   # doctest: +SKIP
...                                consolidation=kt.load("task_a.safetensors", model), lam=1e3)
>>> trainer.train()                                                                 # doctest: +SKIP
>>> trainer.save_curvature(trainer.fit_curvature(task_b), "task_b.safetensors")    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

try:
    from transformers import Trainer
except ImportError as err:  # pragma: no cover - transformers is a dependency of the package
    raise ImportError("kfac_tutorial.integrations.hf_trainer needs transformers (pip install transformers accelerate)") from err

from ..consolidation import EWC, KFAC
from ..curvature.distributed import group_for, rank_of, world_size
from ..curvature.model_io import to_device, unwrap
from ..persistence import PathLike

__all__ = ["ConsolidationTrainer"]

_KINDS = {"ewc": EWC, "kfac": KFAC}


class _Batches:
    """``(inputs, labels)`` pairs from a data loader of dict batches (a re-iterable
    with a length, as the fits expect)."""

    def __init__(self, loader, label_name: str, device: torch.device):
        self.loader, self.label_name, self.device = loader, label_name, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            batch = dict(batch)
            labels = batch.pop(self.label_name, None)
            yield to_device(batch, self.device), (to_device(labels, self.device) if labels is not None else None)


class ConsolidationTrainer(Trainer):
    """A ``Trainer`` that adds ``lam · consolidation.penalty(model)`` to the training loss.

    Args:
        consolidation: a state of earlier tasks (EWC, KFAC, a per-task sum) or ``None``
            (plain fine-tuning, e.g. the first task).
        lam: the strength ``λ`` (the state approximates the *mean* per-example Fisher:
            ``λ = N`` of the old task is the plain Laplace posterior).
        Other arguments: those of ``transformers.Trainer``.

    The penalty is added in training mode only (evaluation losses are the task's), once
    per optimiser step whatever the gradient accumulation (``λ · penalty / steps`` per
    micro-batch when the Trainer does not divide the loss itself).
    """

    def __init__(self, *args, consolidation: Any = None, lam: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.consolidation = consolidation
        self.lam = float(lam)
        self._penalty_sum, self._penalty_count = 0.0, 0

    # -- training loss ----------------------------------------------------------------
    def _loss_is_scaled_for_ga(self, num_items_in_batch) -> bool:
        """Whether the Trainer leaves the loss undivided by the accumulation steps
        (the rule of ``Trainer.training_step``)."""
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool(
            (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None)
            or getattr(self, "compute_loss_func", None) is not None
        )

    def compute_loss(
        self, model: nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch: Optional[Any] = None
    ):
        """The Trainer's loss plus ``lam · penalty`` (training mode, a state given)."""
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.consolidation is not None and self.lam != 0.0 and model.training:
            penalty = self.consolidation.penalty(unwrap(model))
            term = self.lam * penalty
            if self._loss_is_scaled_for_ga(num_items_in_batch):
                term = term / max(int(getattr(self, "current_gradient_accumulation_steps", 1) or 1), 1)
            loss = loss + term.to(loss.dtype)
            self._penalty_sum += float(penalty.detach())
            self._penalty_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Adds ``consolidation_penalty`` (mean since the last log) to training logs."""
        if self._penalty_count and "loss" in logs:
            logs["consolidation_penalty"] = self._penalty_sum / self._penalty_count
            self._penalty_sum, self._penalty_count = 0.0, 0
        super().log(logs, *args, **kwargs)

    # -- the new task's curvature ----------------------------------------------------------
    def fit_curvature(
        self,
        dataset=None,
        kind: str = "kfac",
        fisher: str = "mc",
        mc_samples: int = 1,
        batch_size: Optional[int] = None,
        label_name: str = "labels",
        **fit_kwargs,
    ):
        """Fit ``kind`` (``"kfac"`` or ``"ewc"``) on ``dataset`` (default: the training set).

        Rank ``r`` of ``W`` processes takes examples ``r, r + W, …`` (all of them on one
        process), batched by ``batch_size`` (default ``per_device_eval_batch_size``) with
        the Trainer's data collator; labels (``label_name``) are the targets (needed for
        ``fisher="empirical"`` only). The fit sums the ranks' statistics, so every rank
        returns the same state over the whole dataset; call it on every rank.
        ``fit_kwargs`` go to ``EWC.fit``/``KFAC.fit`` (``seed``, ``weight_sharing``, ...)."""
        if kind not in _KINDS:
            raise ValueError(f"kind={kind!r} is not valid; choose 'kfac' or 'ewc'")
        dataset = self.train_dataset if dataset is None else dataset
        if dataset is None:
            raise ValueError("fit_curvature needs a dataset (no train_dataset was given to the Trainer)")
        model = unwrap(self.model)
        group = group_for(fit_kwargs.get("distributed", True), fit_kwargs.get("process_group"))
        rank, world = rank_of(group), world_size(group)
        if hasattr(dataset, "column_names"):  # a datasets.Dataset: keep the model's inputs only
            dataset = self._remove_unused_columns(dataset, description="curvature")
        shard = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
        loader = torch.utils.data.DataLoader(
            shard, batch_size=batch_size or self.args.per_device_eval_batch_size, collate_fn=self.data_collator, shuffle=False
        )
        device = next(model.parameters()).device
        fit_kwargs.setdefault("progress", False)
        return _KINDS[kind].fit(model, _Batches(loader, label_name, device), fisher=fisher, mc_samples=mc_samples, **fit_kwargs)

    def save_curvature(self, state, path: PathLike) -> None:
        """Write ``state`` to ``path`` (safetensors, atomically) from the main process;
        every process waits until the file exists."""
        if self.is_world_process_zero():
            state.save(path)
        self.accelerator.wait_for_everyone()
