"""One experiment's sequence of tasks and its linker: what every method does at each task
(train, fit the curvature for the next task's penalty, score every task seen so far,
restore concept-table rows for the encoder/table split of forgetting)."""

from __future__ import annotations

import torch

from ..linkers import Linker
from ..statistics import encode_hits
from ..training import evaluate_hits, linking_batches, train
from .methods import L2Anchor, frozen_encoder, method_spec
from .profiles import Profile
from .tasks import _stable_shuffle
from .toy import Task

__all__ = ["KFAC_STORAGE", "TaskSequence"]

#: How the experiments store Kronecker factors: full matrices (``storage="dense"``), as
#: every recorded result (book/results/) was made. The library's default ``"auto"`` holds
#: a factor fit from at most half its side in rows as an exact root: the same penalty to
#: rounding, but rounding that training amplifies, so the records would then reproduce
#: only at the ``agrees`` level of :func:`~kfac_tutorial.experiments.reproduction_check`.
KFAC_STORAGE = "dense"


class TaskSequence:
    """State shared by the methods of one experiment: the tasks, the linker, task 0."""

    def __init__(self, linker: Linker, tasks: list[Task], profile: Profile, seed: int, progress: bool):
        self.linker, self.tasks, self.profile, self.seed = linker, tasks, profile, seed
        self.progress = progress
        self.device = linker.device()
        self.has_table = hasattr(linker, "table") and hasattr(linker, "seen")

    # training -------------------------------------------------------------------------
    def train_task(self, t: int, method: str, lam: float = 0.0, penalty=None) -> None:
        p, linker, spec = self.profile, self.linker, method_spec(method)
        if spec.data == "union":
            ids = [c for task in self.tasks[: t + 1] for c in task.concepts]
            examples = [ex for task in self.tasks[: t + 1] for ex in task.train]
        else:
            ids, examples = list(self.tasks[t].concepts), self.tasks[t].train
        seen_before = linker.seen.clone() if self.has_table else None
        linker.begin_task(ids)
        batches = linking_batches(linker, examples, p.batch_size, shuffle=True, seed=self.seed * 1000 + t)
        torch.manual_seed(self.seed * 1000 + t)  # dropout
        kwargs = dict(
            epochs=p.epochs,
            lr=p.lr,
            head_lr=p.head_lr,
            penalty=penalty,
            lam=lam,
            method=method,
            task=self.tasks[t].name,
            max_grad_norm=p.max_grad_norm,
            label_smoothing=p.label_smoothing,
            progress=self.progress,
        )
        if spec.freeze_encoder and t > 0:
            new_rows = (linker.seen & ~seen_before) if self.has_table else None
            with frozen_encoder(linker, new_rows):
                train(linker, batches, **kwargs)
        else:
            train(linker, batches, **kwargs)

    def fit_curvature(self, family: str, t: int):
        from ..consolidation import EWC, KFAC

        p, linker = self.profile, self.linker
        linker.begin_task(list(self.tasks[t].concepts))  # task t's softmax (no-op if current)
        if family == "l2":
            return L2Anchor.fit(linker)
        examples = _stable_shuffle(self.tasks[t].train, self.seed, f"fisher:{t}")
        if p.fisher_examples:
            examples = examples[: p.fisher_examples]
        batches = list(linking_batches(linker, examples, p.batch_size))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # several processes: every rank fits on its share of the batches; the fit sums
            # the statistics over the ranks (kfac_tutorial.curvature.distributed)
            batches = batches[torch.distributed.get_rank() :: torch.distributed.get_world_size()]
        common = dict(fisher=p.fisher, mc_samples=p.mc_samples, seed=self.seed * 1000 + t, progress=False)
        if family == "ewc":
            return EWC.fit(linker, batches, **common)
        modules = dict(linker.named_modules())
        diagonal = tuple(m for m in p.kfac_diagonal if m in modules)
        return KFAC.fit(
            linker, batches, weight_sharing=p.weight_sharing, diagonal_modules=diagonal, storage=KFAC_STORAGE, **common
        )

    # evaluation -----------------------------------------------------------------------
    def _score(self, task: Task) -> tuple[dict, dict]:
        p, linker = self.profile, self.linker
        with linker.scoring(list(task.concepts)):
            test = evaluate_hits(linker, linking_batches(linker, task.test, p.eval_batch_size))
            dev = evaluate_hits(linker, linking_batches(linker, task.dev, p.eval_batch_size), ks=(1,))
        return test, dev

    def evaluate_row(self, t: int) -> dict[str, list]:
        """Scores of tasks 0..t after task t (``None`` for later tasks): test acc@1,
        acc@5, dev acc@1 and the test acc@1 hits (a 0/1 string per task)."""
        row = {"test@1": [], "test@5": [], "dev@1": [], "hits": []}
        for k, task in enumerate(self.tasks):
            if k > t:
                for key in row:
                    row[key].append(None)
                continue
            test, dev = self._score(task)
            row["test@1"].append(float(test[1].float().mean()))
            row["test@5"].append(float(test[5].float().mean()))
            row["dev@1"].append(float(dev[1].float().mean()))
            row["hits"].append(encode_hits(test[1].tolist()))
        return row

    def table_rows(self, k: int) -> torch.Tensor | None:
        """The current concept-table rows of task k's concepts (a copy)."""
        if not self.has_table:
            return None
        rows = self.linker.columns(list(self.tasks[k].concepts))
        return self.linker.table.weight.detach()[rows].clone()

    @torch.no_grad()
    def restored_hits(self, saved: list) -> list[str] | None:
        """Test hits of every old task k with its table rows set to ``saved[k]``, the
        rest of the model as it is; the rows are put back afterwards."""
        if not self.has_table:
            return None
        out, weight = [], self.linker.table.weight
        for k, rows_value in enumerate(saved):
            rows = self.linker.columns(list(self.tasks[k].concepts))
            now = weight[rows].clone()
            weight[rows] = rows_value
            try:
                test, _ = self._score(self.tasks[k])
            finally:
                weight[rows] = now
            out.append(encode_hits(test[1].tolist()))
        return out
