"""The cost model of a sequential run: exact counts on a hand-made case, and the
estimate's arithmetic."""

import pytest

from kfac_tutorial.experiments import get_profile
from kfac_tutorial.experiments.cost import count_work, estimate_breakdown, estimate_seconds, measure_rates


def test_count_work_by_hand():
    profile = get_profile("cnn", "test").with_overrides(
        epochs=2, lambdas={"ewc": (1.0,), "kfac": (1.0, 10.0)}, fisher_examples=15, mc_samples=3, fisher="mc"
    )
    sizes = [{"train": 10, "dev": 1, "test": 3}, {"train": 20, "dev": 2, "test": 4}, {"train": 30, "dev": 3, "test": 5}]
    work = count_work(sizes, ["finetune", "kfac", "joint"], profile)
    # task 0 once; finetune tasks 1, 2 once; kfac twice (grid of 2); joint on unions
    assert work["train_examples"] == 2 * 10 + 2 * 50 + 2 * 2 * 50 + 2 * (30 + 60)
    # task 0's Fisher once (10 < 15 examples), task 1's once per λ (15 of 20); never task 2's
    assert work["fisher_forward"] == 10 + 2 * 15
    assert work["fisher_backward"] == 3 * work["fisher_forward"]
    # after task 0: task 0; each later task t (per λ): tasks 0..t; per λ, tasks 0..T-2 again
    # with their concept-table rows restored
    runs = 1 + 2 + 1  # finetune, kfac ×2, joint
    assert work["eval_examples"] == 4 + runs * ((4 + 6) + (4 + 6 + 8)) + runs * (4 + 6)
    # a grid extended past an edge optimum: one more kfac run, counted when told
    more = count_work(sizes, ["finetune", "kfac", "joint"], profile, lambdas_tried={"kfac": 3})
    assert more["train_examples"] - work["train_examples"] == 2 * 50
    assert more["fisher_forward"] - work["fisher_forward"] == 15
    assert more["eval_examples"] - work["eval_examples"] == (4 + 6) + (4 + 6 + 8) + (4 + 6)
    exact = count_work(sizes, ["kfac_online"], profile.with_overrides(fisher="exact"))
    assert exact["fisher_backward"] == exact["fisher_forward"] == 10 + 2 * 15


def test_estimate_seconds_arithmetic():
    work = {"train_examples": 300, "fisher_forward": 30, "fisher_backward": 60, "eval_examples": 100}
    rates = {"train_per_s": 30.0, "eval_per_s": 50.0}
    expected = 300 / 30 + 30 / 30 / 3 + 60 * 2 / 30 / 3 + 100 / 50
    assert estimate_seconds(work, rates) == pytest.approx(expected)
    parts = estimate_breakdown(work, rates)
    assert parts["training"] == pytest.approx(10) and parts["evaluation"] == pytest.approx(2)


def test_measure_rates_positive_on_a_toy_task():
    rates = measure_rates("cnn", "toy-a", get_profile("cnn", "test"), steps=2)
    assert rates["train_per_s"] > 0 and rates["eval_per_s"] > 0


def test_count_work_matches_what_a_run_trains_and_scores(monkeypatch):
    """The counts equal the examples a real (tiny) run sends through training, the
    Fisher fits and evaluation."""
    from kfac_tutorial import consolidation
    from kfac_tutorial.experiments import load_tasks, run_experiment, sequence

    seen = {"train": 0, "fisher": 0, "eval": 0}
    real_train, real_eval = sequence.train, sequence.evaluate_hits
    real_kfac = consolidation.KFAC.fit.__func__

    def train(model, batches, *, epochs, **kw):
        seen["train"] += epochs * len(batches.texts)
        return real_train(model, batches, epochs=epochs, **kw)

    def evaluate_hits(model, batches, **kw):
        seen["eval"] += len(batches.texts)
        return real_eval(model, batches, **kw)

    def fit(cls, model, batches, **kw):
        seen["fisher"] += sum(len(t) for _, t in batches)
        return real_kfac(cls, model, batches, **kw)

    monkeypatch.setattr(sequence, "train", train)
    monkeypatch.setattr(sequence, "evaluate_hits", evaluate_hits)
    monkeypatch.setattr(consolidation.KFAC, "fit", classmethod(fit))
    profile = get_profile("cnn", "test").with_overrides(epochs=1, fisher_examples=8)
    methods = ["finetune", "kfac", "joint"]
    tasks = load_tasks(["toy-a", "toy-b", "toy-c"], profile)
    res = run_experiment("cnn", tasks, methods, profile, progress=False)
    tried = {m: len(res["methods"][m]["sweep"]) for m in methods if "sweep" in res["methods"][m]}
    work = count_work([res["examples"][t] for t in res["tasks"]], methods, profile, lambdas_tried=tried)
    assert seen["train"] == work["train_examples"]
    assert seen["fisher"] == work["fisher_forward"]
    assert seen["eval"] == work["eval_examples"]


def _tiny_model_and_batches():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    batches = [(torch.randn(5, 6), torch.randint(0, 4, (5,))) for _ in range(3)]
    return model, batches


def test_plain_fwd_bwd_is_seeded_and_returns_the_sampled_label_gradient():
    import torch
    import torch.nn.functional as F

    from kfac_tutorial.experiments import plain_fwd_bwd

    model, batches = _tiny_model_and_batches()
    a, b = plain_fwd_bwd(model, batches, seed=3)(), plain_fwd_bwd(model, batches, seed=3)()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    gen = torch.Generator().manual_seed(3)  # the same draws, by hand, for the last batch
    for x, _ in batches:
        logits = model(x)
        y = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=gen).squeeze(1)
    ref = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), list(model.parameters()))
    assert all(torch.allclose(g, r) for g, r in zip(a, ref))


def test_time_curvature_and_penalty_steps_report_every_variant_and_keep_the_weights():
    import torch

    import kfac_tutorial as kt
    from kfac_tutorial.experiments import time_curvature, time_penalty_steps

    model, batches = _tiny_model_and_batches()
    model.train()
    costs = time_curvature(model, batches, repeats=2)
    assert set(costs) == {"plain fwd+bwd", "KFAC fit", "EWC fit"}
    assert costs["plain fwd+bwd"]["over_plain_fwd+bwd"] == 1.0
    assert all(c["median_s"] > 0 and c["min_s"] <= c["median_s"] for c in costs.values())
    assert model.training  # mode restored
    kfac = kt.KFAC.fit(model, batches, progress=False)
    before = [p.detach().clone() for p in model.parameters()]
    steps = time_penalty_steps(model, *batches[0], {"plain": None, "KFAC": kfac}, repeats=2)
    assert set(steps) == {"plain", "KFAC"} and steps["plain"]["over_plain"] == 1.0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # lr 0: timing only
    with pytest.raises(ValueError, match="'plain'"):
        time_penalty_steps(model, *batches[0], {"KFAC": kfac})
