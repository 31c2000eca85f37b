"""Batches, a training loop with an optional consolidation penalty, and evaluation.

>>> batches = linking_batches(linker, task.train, batch_size=32, shuffle=True, seed=0)  # doctest: +SKIP
>>> train(linker, batches, epochs=3, lr=1e-3, penalty=kfac.penalty, lam=1e3,
...       method="kfac", task="drugs")                                              # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .linkers.concept_table import MASKED_LOGIT

__all__ = [
    "LinkingBatches",
    "NonFiniteLossError",
    "evaluate",
    "evaluate_hits",
    "linking_batches",
    "predict",
    "train",
]


class NonFiniteLossError(FloatingPointError):
    """A NaN or infinite loss: names the method, the task and the step."""

    def __init__(self, method: str, task: str, step: int, value: float):
        self.method, self.task, self.step, self.value = method, task, step, value
        super().__init__(
            f"non-finite loss {value} (method {method!r}, task {task!r}, step {step}); "
            "try a smaller learning rate or a smaller lambda"
        )


class LinkingBatches:
    """A re-iterable list of ``(inputs, targets)`` batches of (mention, column) pairs.

    ``inputs`` is the tokenizer's dict of (B, T) tensors, ``targets`` a (B,) long
    tensor of logit columns. With ``shuffle`` the order is a function of
    ``(seed, epoch)`` only (``set_epoch``), so that runs are reproducible bit for bit.
    """

    def __init__(
        self,
        tokenizer: Callable,
        texts: Sequence[str],
        targets: torch.Tensor,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
    ):
        if len(texts) != len(targets):
            raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
        self.tokenizer = tokenizer
        self.texts = list(texts)
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.device = device

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.texts) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[dict, torch.Tensor]]:
        n = len(self.texts)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            inputs = self.tokenizer([self.texts[j] for j in idx.tolist()])
            targets = self.targets[idx]
            if self.device is not None:
                inputs = {k: v.to(self.device) for k, v in inputs.items()}
                targets = targets.to(self.device)
            yield inputs, targets


def linking_batches(
    linker, examples: Sequence[tuple[str, str]], batch_size: int = 32, shuffle: bool = False, seed: int = 0
) -> LinkingBatches:
    """``examples`` = (mention, concept id) pairs → batches whose targets are the
    linker's logit columns for those concepts (in its current scoring state)."""
    texts = [m for m, _ in examples]
    targets = linker.columns([c for _, c in examples])
    return LinkingBatches(
        linker.tokenizer, texts, targets, batch_size=batch_size, shuffle=shuffle, seed=seed, device=linker.device()
    )


def _param_groups(model: nn.Module, lr: float, head_lr: float | None) -> list[dict]:
    head, body = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.startswith("table.") else body).append(p)
    groups = [{"params": body, "lr": lr}] if body else []
    if head:
        groups.append({"params": head, "lr": head_lr if head_lr is not None else lr})
    return groups


def train(
    model: nn.Module,
    batches,
    *,
    epochs: int,
    lr: float,
    head_lr: float | None = None,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    lam: float = 0.0,
    method: str = "finetune",
    task: str = "?",
    max_grad_norm: float | None = None,
    label_smoothing: float = 0.0,
    progress: bool = False,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Minimise ``cross_entropy(model(inputs), targets) + lam * penalty(model)``.

    A fresh AdamW (no weight decay) per call, i.e. per task; ``head_lr`` is the
    learning rate of the concept table (``table.*`` parameters). Raises
    ``NonFiniteLossError`` on a NaN/inf loss. ``label_smoothing`` spreads that much
    target mass uniformly over the classes in the softmax (masked classes excluded). Returns the mean loss of each epoch.
    ``on_epoch_end(epoch, mean_loss)``, if given, is called after every epoch (e.g. to
    score a dev split for a learning curve; it may switch the model to eval mode: the
    next epoch switches it back to training mode).

    Several processes (``torch.distributed`` initialised, e.g. under ``torchrun``): the
    model is wrapped in ``DistributedDataParallel`` for this call and every rank takes
    its slice of each batch (:func:`rank_slice`), its summed loss scaled so that DDP's
    average over the ranks is the whole batch's mean: the same steps as one process.
    """
    opt = torch.optim.AdamW(_param_groups(model, lr, head_lr), weight_decay=0.0)
    model.train()
    ddp = _ddp(model)
    if ddp is None:

        def batch_loss(inputs, targets):  # the batch's mean loss
            return _loss(model(inputs), targets, label_smoothing, mean=True)

        rank = 0
    else:
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()

        def batch_loss(inputs, targets):  # this rank's slice, scaled so that DDP's mean is the batch's mean
            rows, weight = rank_slice(len(targets), rank, world)
            return weight * _loss(ddp(_take(inputs, rows)), targets[rows.to(targets.device)], label_smoothing, mean=False)

    history, step = [], 0
    bar = None
    if progress and rank == 0:
        from .progress import progress_bar as tqdm

        bar = tqdm(total=epochs * len(batches), desc=f"{method} · {task}", leave=False)
    try:
        for epoch in range(epochs):
            if hasattr(batches, "set_epoch"):
                batches.set_epoch(epoch)
            total, count = 0.0, 0
            for inputs, targets in batches:
                loss = batch_loss(inputs, targets)
                if penalty is not None and lam != 0.0:
                    loss = loss + lam * penalty(model)  # the same on every rank: DDP's mean keeps it
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(method, task, step, float(loss.detach()))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                opt.step()
                total += float(loss.detach()) * len(targets)
                count += len(targets)
                step += 1
                if bar is not None:
                    bar.update(1)
                    if ddp is None:
                        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
            history.append(total / max(count, 1))
            if on_epoch_end is not None:
                on_epoch_end(epoch, history[-1])
                model.train()
    finally:
        if bar is not None:
            bar.close()
    return history


def _loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, mean: bool) -> torch.Tensor:
    """Cross-entropy of ``logits`` ``(B, C)``, the mean (``mean``) or the sum over the batch;
    ``label_smoothing`` spreads that much target mass over the unmasked (seen) classes."""
    if label_smoothing:
        logp = F.log_softmax(logits, dim=-1)
        live = logits > MASKED_LOGIT / 2
        smooth = -(logp * live).sum(-1) / live.sum(-1)
        nll = -logp.gather(1, targets[:, None]).squeeze(1)
        per_example = (1 - label_smoothing) * nll + label_smoothing * smooth
    elif mean:
        return F.cross_entropy(logits, targets)
    else:
        per_example = F.cross_entropy(logits, targets, reduction="none")
    return per_example.mean() if mean else per_example.sum()


def _ddp(model: nn.Module):
    """``DistributedDataParallel(model)`` when ``torch.distributed`` is initialised with
    more than one rank, else None (one process: :func:`train` is unchanged)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True)


def rank_slice(n: int, rank: int, world: int) -> tuple[torch.Tensor, float]:
    """Rows of an ``n``-example batch that ``rank`` of ``world`` trains on (contiguous,
    sizes differing by at most one) and the weight of its summed loss, ``world / n``, so
    that the mean over the ranks of ``weight · Σ_rows loss`` is the batch's mean loss. A
    rank left without rows (``n < world``) gets row 0 with weight 0 (DDP needs every
    rank's forward and backward)."""
    rows = torch.tensor_split(torch.arange(n), world)[rank]
    if rows.numel() == 0:
        return torch.zeros(1, dtype=torch.long), 0.0
    return rows, world / n


def _take(inputs, rows: torch.Tensor):
    if isinstance(inputs, dict):
        return {k: v[rows.to(v.device)] for k, v in inputs.items()}
    return inputs[rows.to(inputs.device)]


@torch.no_grad()
def evaluate_hits(model: nn.Module, batches, ks: Sequence[int] = (1, 5)) -> dict[int, torch.Tensor]:
    """Per-example hits: ``{k: (N,) bool tensor}``, True where the target is among the
    top ``k`` logits (ties broken against the target, as :func:`accuracy_at_k`), in the
    order of ``batches`` (eval mode; training mode restored)."""
    was_training = model.training
    model.eval()
    out: dict[int, list] = {k: [] for k in ks}
    for inputs, targets in batches:
        logits = model(inputs)
        target_logit = logits.gather(1, targets[:, None])
        rank = (logits > target_logit).sum(1) + (logits == target_logit).sum(1) - 1
        for k in ks:
            out[k].append((rank < k).cpu())
    model.train(was_training)
    return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.bool) for k, v in out.items()}


@torch.no_grad()
def evaluate(model: nn.Module, batches, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Accuracy@k of ``model`` on ``batches`` (eval mode; training mode restored)."""
    hits = evaluate_hits(model, batches, ks)
    return {f"acc@{k}": (float(h.float().mean()) if h.numel() else float("nan")) for k, h in hits.items()}


@torch.no_grad()
def predict(linker, mentions: Sequence[str], k: int = 5, batch_size: int = 256) -> list[list[tuple[str, float]]]:
    """The top ``k`` concepts of each mention: ``[[(concept id, probability), ...], ...]``,
    best first, in the linker's current scoring state (inside ``linker.scoring(...)``:
    against the evaluation candidates, as :func:`evaluate` scores). Eval mode; the
    training mode is restored."""
    columns = linker.candidate_ids if linker.setting == "per_task" else linker.inventory.ids
    was_training = linker.training
    linker.eval()
    dev = linker.device()
    out = []
    for i in range(0, len(mentions), batch_size):
        inputs = {key: v.to(dev) for key, v in linker.tokenizer(list(mentions[i : i + batch_size])).items()}
        probs = torch.softmax(linker(inputs).float(), dim=-1)
        top = probs.topk(min(k, probs.shape[-1]), dim=-1)
        for p_row, i_row in zip(top.values.tolist(), top.indices.tolist()):
            out.append([(columns[j], p) for j, p in zip(i_row, p_row)])
    linker.train(was_training)
    return out
