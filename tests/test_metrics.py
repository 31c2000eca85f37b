"""Continual-learning metrics on hand-made accuracy matrices."""

import math

import numpy as np
import pytest
import torch

from kfac_tutorial import metrics

# after task 0, 1, 2 (rows) × task 0, 1, 2 (columns); None = not evaluated yet
R = [
    [0.70, None, None],
    [0.80, 0.90, None],
    [0.50, 0.60, 0.95],
]
R_FINETUNE = [
    [0.70, None, None],
    [0.30, 0.90, None],
    [0.10, 0.20, 0.95],
]


def test_forgetting_max_uses_the_best_earlier_accuracy():
    # task 0 peaked after task 1 (0.80), so it forgot 0.80 - 0.50; task 1: 0.90 - 0.60
    np.testing.assert_allclose(metrics.forgetting(R, "max"), [0.30, 0.30])


def test_forgetting_diag_uses_the_accuracy_just_after_learning():
    np.testing.assert_allclose(metrics.forgetting(R, "diag"), [0.20, 0.30])


def test_average_forgetting_is_the_mean_over_earlier_tasks():
    assert metrics.average_forgetting(R) == pytest.approx(0.30)
    assert metrics.average_forgetting(R, "diag") == pytest.approx(0.25)
    assert metrics.average_forgetting(R_FINETUNE) == pytest.approx((0.60 + 0.70) / 2)


def test_plasticity_and_final_average_accuracy():
    assert metrics.plasticity(R) == pytest.approx((0.70 + 0.90 + 0.95) / 3)
    assert metrics.final_average_accuracy(R) == pytest.approx((0.50 + 0.60 + 0.95) / 3)


def test_forgetting_reduction_relative_to_finetuning():
    f, f_ft = metrics.average_forgetting(R), metrics.average_forgetting(R_FINETUNE)
    assert metrics.forgetting_reduction(f, f_ft) == pytest.approx(1 - 0.30 / 0.65)
    assert metrics.forgetting_reduction(0.0, 0.4) == 1.0
    assert metrics.forgetting_reduction(0.4, 0.4) == 0.0
    assert math.isnan(metrics.forgetting_reduction(0.1, 0.0))  # nothing to reduce


def test_negative_forgetting_is_kept_as_backward_transfer():
    up = [[0.5, None], [0.7, 0.9]]
    assert metrics.average_forgetting(up, "diag") == pytest.approx(-0.2)


def test_single_task_has_no_forgetting_to_average():
    assert math.isnan(metrics.average_forgetting([[0.8]]))
    assert metrics.summarize([[0.8]])["avg_forgetting"] is None


def test_summarize_includes_reduction_only_with_a_baseline():
    s = metrics.summarize(R)
    assert "forgetting_reduction" not in s
    s = metrics.summarize(R, R_FINETUNE)
    assert s["forgetting_reduction"] == pytest.approx(1 - 0.30 / 0.65)
    assert s["forgetting"] == pytest.approx([0.30, 0.30])


def test_upper_triangle_is_never_read():
    full = [[0.7, 0.1, 0.2], [0.8, 0.9, 0.3], [0.5, 0.6, 0.95]]
    assert metrics.summarize(full) == metrics.summarize(R)


@pytest.mark.parametrize("bad", [[], [0.5, 0.6], [[0.5], [0.6]]])
def test_malformed_matrices_are_refused(bad):
    with pytest.raises(ValueError):
        metrics.forgetting(bad)


def test_unknown_forgetting_kind_lists_choices():
    with pytest.raises(ValueError, match="'max', 'diag'"):
        metrics.forgetting(R, "mean")


def test_accuracy_at_k_counts_ties_against_the_target():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    targets = torch.tensor([0, 1, 2])
    acc = metrics.accuracy_at_k(logits, targets, ks=(1, 2, 3))
    assert acc[1] == pytest.approx(1 / 3)  # only row 0
    assert acc[2] == pytest.approx(2 / 3)  # rows 0, 1 (row 2 ties: rank 2)
    assert acc[3] == pytest.approx(1.0)


def test_forgetting_at_plasticity_interpolates_along_the_sweep():
    # three λ: plasticity falls 0.9 → 0.8 → 0.6 as forgetting falls 0.5 → 0.3 → 0.1
    plast, forg = [0.6, 0.9, 0.8], [0.1, 0.5, 0.3]  # any order
    assert metrics.forgetting_at_plasticity(plast, forg, 0.8) == pytest.approx(0.3)
    assert metrics.forgetting_at_plasticity(plast, forg, 0.85) == pytest.approx(0.4)
    assert metrics.forgetting_at_plasticity(plast, forg, 0.7) == pytest.approx(0.2)
    assert metrics.forgetting_at_plasticity(plast, forg, 0.6) == pytest.approx(0.1)
    # never extrapolated
    assert math.isnan(metrics.forgetting_at_plasticity(plast, forg, 0.95))
    assert math.isnan(metrics.forgetting_at_plasticity(plast, forg, 0.5))


def test_forgetting_at_plasticity_averages_ties_and_skips_missing_points():
    assert metrics.forgetting_at_plasticity([0.5, 0.5, 0.7], [0.1, 0.3, 0.4], 0.5) == pytest.approx(0.2)
    assert metrics.forgetting_at_plasticity([0.5, float("nan"), 0.7], [0.2, 0.9, 0.4], 0.6) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        metrics.forgetting_at_plasticity([0.5, 0.6], [0.1], 0.5)


def test_sweep_tradeoff_reads_a_results_dict_and_adds_finetuning_as_lambda_zero():
    sweep = [
        {"lambda": 100.0, "test_plasticity": 0.6, "test_avg_forgetting": 0.1, "dev_plasticity": 0.65, "dev_avg_forgetting": 0.15},
        {"lambda": 1.0, "test_plasticity": 0.8, "test_avg_forgetting": 0.3, "dev_plasticity": 0.85, "dev_avg_forgetting": 0.35},
    ]
    results = {
        "methods": {"finetune": {"accuracy_matrix": R_FINETUNE, "dev_accuracy_matrix": R}, "kfac": {"lambda_sweep": sweep}}
    }
    lams, plast, forg = metrics.sweep_tradeoff(results, "kfac")
    np.testing.assert_allclose(lams, [0.0, 1.0, 100.0])
    np.testing.assert_allclose(plast, [(0.70 + 0.90 + 0.95) / 3, 0.8, 0.6])
    np.testing.assert_allclose(forg, [0.65, 0.3, 0.1])
    lams, plast, forg = metrics.sweep_tradeoff(results, "kfac", split="dev", with_finetune=False)
    np.testing.assert_allclose(lams, [1.0, 100.0])
    np.testing.assert_allclose(forg, [0.35, 0.15])
    with pytest.raises(KeyError, match="lambda_sweep"):
        metrics.sweep_tradeoff(results, "finetune")


def test_matched_plasticity_reads_each_method_at_the_others_chosen_plasticity():
    def sweep(points):
        return [
            {"lambda": lam, "test_plasticity": p, "test_avg_forgetting": f, "dev_plasticity": p, "dev_avg_forgetting": f}
            for lam, p, f in points
        ]

    # fine-tuning: plasticity 0.85, forgetting 0.65 (R_FINETUNE)
    results = {
        "methods": {
            "finetune": {"accuracy_matrix": R_FINETUNE, "dev_accuracy_matrix": R_FINETUNE},
            "ewc": {"lambda": 10.0, "lambda_sweep": sweep([(1.0, 0.80, 0.40), (10.0, 0.60, 0.20)])},
            "kfac": {"lambda": 1.0, "lambda_sweep": sweep([(1.0, 0.75, 0.15), (10.0, 0.55, 0.05)])},
        }
    }
    rows = metrics.matched_plasticity(results, ("ewc", "kfac"))
    at_ewc, at_kfac = rows
    assert at_ewc["matched to"] == "ewc" and at_ewc["plasticity"] == pytest.approx(0.60)
    assert at_ewc["ewc forgetting"] == pytest.approx(0.20)
    assert at_ewc["kfac forgetting"] == pytest.approx(0.15 - 0.10 * 0.15 / 0.20)  # on 0.75→0.55
    assert at_ewc["kfac reduction"] == pytest.approx(1 - at_ewc["kfac forgetting"] / 0.65)
    assert at_kfac["plasticity"] == pytest.approx(0.75)
    assert at_kfac["ewc forgetting"] == pytest.approx(0.35)  # between 0.80 (0.40) and 0.60 (0.20)
    # EWC at plasticity 0.60 and KFAC's sweep (with fine-tuning as λ = 0) spans 0.55..0.85
    ref = metrics.matched_plasticity(results, ("kfac",))[0]
    assert ref["kfac forgetting"] == pytest.approx(0.15)


def test_split_matrix_reads_a_results_entry_with_unseen_tasks_as_nan():
    import numpy as np

    from kfac_tutorial.metrics import split_matrix

    entry = {"accuracy_matrix": [[0.9, None], [0.5, 0.8]], "dev_accuracy_matrix": [[0.7, None], [0.6, 0.9]]}
    R = split_matrix(entry)
    assert R.dtype == float and np.isnan(R[0, 1]) and R[1, 0] == 0.5
    assert split_matrix(entry, "dev")[1, 1] == 0.9
    with pytest.raises(ValueError, match="valid: 'dev', 'test'"):
        split_matrix(entry, "train")
