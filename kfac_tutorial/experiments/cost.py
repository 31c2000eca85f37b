"""What a run costs before running it: count the work, time a few steps, multiply.

A sequential run (:func:`~kfac_tutorial.experiments.run_experiment`) is dominated by
three kinds of passes over examples, all counted exactly by :func:`count_work` from
the profile and the task sizes:

* training: ``epochs × n_t`` examples for each task trained, where task 0 is trained
  once, fine-tuning trains tasks 1..T−1 once, each consolidation method trains them
  once per λ of its grid, and joint training trains task t on the union of tasks 0..t;
* Fisher: ``min(fisher_examples, n_t)`` examples for task 0 once per family and for
  tasks 1..T−2 once per λ (the last task's Fisher is never needed), each costing a
  forward pass and ``mc_samples`` backward passes (``exact``: one per class);
* evaluation: after each task trained, the dev and test splits of every task seen, and
  once per run (each λ) the splits of tasks 0..T−2 again with their concept-table rows
  restored (the table/encoder split of the forgetting).

When the dev-best λ sits at an end of its grid the harness tries more λ values
(``profile.lambda_extension``); the count for the grid as given is then a lower bound,
and ``lambdas_tried`` (per method, e.g. the length of a result's ``"sweep"``) makes it exact.

:func:`measure_rates` times a few real training and evaluation steps of the profile's
linker on this machine; :func:`estimate_seconds` (and :func:`estimate_breakdown`) combine both. The estimate ignores
start-up (loading data and models) and assumes the per-example cost does not change
with the number of concepts (it grows slowly with it: the concept table is a matrix
product), so it is a lower bound that chapter 10 checks against measured runs.

What the curvature itself costs, measured side by side on one model and one set of
batches (chapter 11; the peer comparison lives in ``benchmarks/``):
:func:`time_curvature` (estimation against one plain forward+backward, the floor of a
one-sample MC Fisher) and :func:`time_penalty_steps` (a training step with a
consolidation penalty against a plain step).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .harness import _FAMILY, build_linker, load_tasks, prepare_task
from .profiles import Profile

__all__ = [
    "count_work",
    "estimate_breakdown",
    "estimate_seconds",
    "measure_rates",
    "penalised_step",
    "plain_fwd_bwd",
    "time_curvature",
    "time_penalty_steps",
]


def count_work(
    task_sizes: Sequence[dict], methods: Sequence[str], profile: Profile, lambdas_tried: Optional[Mapping[str, int]] = None
) -> dict:
    """Examples processed by a run. ``task_sizes``: per task, ``{"train", "dev", "test"}``
    example counts after :func:`prepare_task` (e.g. a results dict's ``examples``).
    ``lambdas_tried``: λ values run per method (default: the profile's grid, a lower bound
    when a run extends its grid past an edge optimum).

    Returns ``train_examples`` (forward+backward), ``fisher_forward`` and
    ``fisher_backward`` (per-example passes of the curvature fits) and
    ``eval_examples`` (forward only), each a total over the whole run."""
    T = len(task_sizes)
    n = [s["train"] for s in task_sizes]
    ev = [s["dev"] + s["test"] for s in task_sizes]
    train = profile.epochs * n[0]
    evals = ev[0]
    fisher_fwd = fisher_bwd = 0

    def per_fit(t: int) -> int:
        return min(profile.fisher_examples or n[t], n[t])

    backward_per_example = profile.mc_samples if profile.fisher == "mc" else 1
    families = {_FAMILY[m] for m in methods if m in _FAMILY}
    if T > 1:
        for _ in families:  # task 0's Fisher, shared by the sum and online variants
            fisher_fwd += per_fit(0)
    for m in methods:
        grid = len(profile.lambdas[_FAMILY[m]]) if m in _FAMILY else 1
        if lambdas_tried is not None and m in lambdas_tried:
            grid = int(lambdas_tried[m])
        if T > 1:  # the old tasks re-scored with their table rows restored, once per λ
            evals += grid * sum(ev[: T - 1])
        for t in range(1, T):
            seen = sum(n[: t + 1]) if m == "joint" else n[t]
            train += grid * profile.epochs * seen
            evals += grid * sum(ev[: t + 1])
            if m in _FAMILY and t < T - 1:
                fisher_fwd += grid * per_fit(t)
    fisher_bwd = fisher_fwd * backward_per_example
    return {
        "train_examples": int(train),
        "fisher_forward": int(fisher_fwd),
        "fisher_backward": int(fisher_bwd),
        "eval_examples": int(evals),
    }


def measure_rates(model: str, task_name: str, profile: Profile, seed: int = 0, steps: int = 6) -> dict:
    """Examples per second of training steps (forward, backward, AdamW) and of
    evaluation, for the profile's linker on one task, timed over ``steps`` batches
    after one warm-up batch. Returns ``{"train_per_s", "eval_per_s", "device"}``."""
    from ..training import linking_batches, train
    from ..linkers import ConceptInventory

    task = prepare_task(load_tasks([task_name], profile, seed)[0], profile, seed)
    linker = build_linker(model, ConceptInventory.union([task]), profile, seed=seed)
    if torch.cuda.is_available():
        linker = linker.cuda()
    linker.begin_task(list(task.concepts))
    examples = task.train * (1 + (steps + 1) * profile.batch_size // max(len(task.train), 1))
    examples = examples[: (steps + 1) * profile.batch_size]
    warm = linking_batches(linker, examples[: profile.batch_size], profile.batch_size)
    train(linker, warm, epochs=1, lr=profile.lr, head_lr=profile.head_lr)
    timed = linking_batches(linker, examples[profile.batch_size :], profile.batch_size)
    _sync()
    start = time.perf_counter()
    train(linker, timed, epochs=1, lr=profile.lr, head_lr=profile.head_lr)
    _sync()
    train_rate = len(examples[profile.batch_size :]) / (time.perf_counter() - start)
    batches = linking_batches(linker, examples, profile.eval_batch_size)
    linker.eval()
    with torch.no_grad():
        start = time.perf_counter()
        for inputs, _ in batches:
            linker(inputs)
        _sync()
    eval_rate = len(examples) / (time.perf_counter() - start)
    return {"train_per_s": train_rate, "eval_per_s": eval_rate, "device": str(linker.device())}


def estimate_breakdown(work: dict, rates: dict) -> dict[str, float]:
    """Seconds for ``work`` (:func:`count_work`) at ``rates`` (:func:`measure_rates`),
    split into ``training``, ``fisher`` and ``evaluation``.

    A Fisher example costs a forward pass (taken as a third of a training step) plus,
    per backward pass, the other two thirds."""
    step = 1.0 / rates["train_per_s"]
    return {
        "training": work["train_examples"] * step,
        "fisher": (work["fisher_forward"] + 2 * work["fisher_backward"]) * step / 3,
        "evaluation": work["eval_examples"] / rates["eval_per_s"],
    }


def estimate_seconds(work: dict, rates: dict) -> float:
    """Total seconds of :func:`estimate_breakdown`."""
    return float(sum(estimate_breakdown(work, rates).values()))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- what the curvature costs ------------------------------------------------------------
def plain_fwd_bwd(model: nn.Module, batches: Sequence, seed: int = 0) -> Callable[[], list]:
    """A function doing, per batch ``(inputs, targets)``, one forward pass and one
    backward pass to every trainable parameter with labels sampled from the model: the
    work a one-sample MC Fisher cannot avoid (the "1×" of :func:`time_curvature`)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)

    def run() -> list:
        params = [p for p in model.parameters() if p.requires_grad]
        grads = []
        for x, _ in batches:
            logits = model(x)
            y = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=gen).squeeze(1)
            grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), params)
        return grads

    return run


def _timed(fns: Mapping[str, Callable], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function: one warm-up each, then ``repeats`` rounds,
    interleaved so that a change of load on the machine hits every function alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            times[k].append(time.perf_counter() - start)
    return times


def _summary(times: dict[str, list[float]], base: str) -> dict[str, dict[str, float]]:
    ref = statistics.median(times[base])
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "over_" + base.replace(" ", "_"): statistics.median(v) / ref}
        for k, v in times.items()
    }


def time_curvature(
    model: nn.Module, batches: Sequence, *, weight_sharing: str = "reduce", diagonal_modules: Sequence[str] = (), repeats: int = 3
) -> dict[str, dict[str, float]]:
    """Median and minimum seconds of a plain forward+backward (:func:`plain_fwd_bwd`), a
    KFAC fit and an EWC fit (MC Fisher, one sample) over the same ``batches``, and each
    median over the plain pass's (``over_plain_fwd+bwd``)."""
    from ..consolidation import EWC, KFAC

    was_training = model.training
    model.eval()
    fns = {
        "plain fwd+bwd": plain_fwd_bwd(model, batches),
        "KFAC fit": lambda: KFAC.fit(
            model,
            batches,
            fisher="mc",
            mc_samples=1,
            weight_sharing=weight_sharing,
            diagonal_modules=tuple(diagonal_modules),
            progress=False,
        ),
        "EWC fit": lambda: EWC.fit(model, batches, fisher="mc", mc_samples=1, progress=False),
    }
    try:
        return _summary(_timed(fns, repeats), "plain fwd+bwd")
    finally:
        model.train(was_training)


def penalised_step(
    model: nn.Module, opt: torch.optim.Optimizer, inputs, targets: torch.Tensor, state: Optional[object] = None
) -> None:
    """One optimiser step on ``cross_entropy(model(inputs), targets) + state.penalty(model)``
    (no penalty when ``state`` is ``None``)."""
    loss = F.cross_entropy(model(inputs), targets)
    if state is not None:
        loss = loss + state.penalty(model)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_penalty_steps(
    model: nn.Module, inputs, targets: torch.Tensor, states: Mapping[str, Optional[object]], repeats: int = 5
) -> dict[str, dict[str, float]]:
    """Seconds of one training step (forward, cross-entropy ``+ state.penalty(model)``,
    backward, optimiser step) on one batch, per consolidation state (``None``: the plain
    step, which must be present under the key ``"plain"``). The optimiser is SGD with
    learning rate 0, so the weights (and every step's work) stay the same."""
    if "plain" not in states:
        raise ValueError("states needs a 'plain' entry (None) as the reference step")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)

    was_training = model.training
    model.train()
    try:
        steps = {k: (lambda state=state: penalised_step(model, opt, inputs, targets, state)) for k, state in states.items()}
        return _summary(_timed(steps, repeats), "plain")
    finally:
        model.train(was_training)
