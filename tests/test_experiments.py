"""The sequential harness and its command line, on tiny synthetic tasks."""

import json

import pytest
import torch

from kfac_tutorial import plots
from kfac_tutorial.experiments import (
    METHODS,
    get_profile,
    load_tasks,
    read_results,
    run_experiment,
    toy_task,
)
from kfac_tutorial.experiments import harness, sequence
from kfac_tutorial.experiments.__main__ import main
from kfac_tutorial.training import NonFiniteLossError, linking_batches, train

TASKS = ["toy-a", "toy-b"]
CONSOLIDATION = pytest.importorskip("kfac_tutorial.consolidation")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _strip_timing(results):
    out = json.loads(json.dumps(results))
    out.pop("torch_threads", None)
    out.pop("total_seconds", None)
    for m in out["methods"].values():
        for key in ("seconds", "sweep_seconds", "peak_memory_mb"):
            m.pop(key, None)
        for s in m.get("lambda_sweep", []):
            s.pop("seconds", None)
    return out


def test_a_seeded_tiny_run_is_reproducible_bit_for_bit():
    profile = get_profile("cnn", "test")
    runs = [
        run_experiment("cnn", load_tasks(TASKS, profile, seed=3), ["finetune", "ewc", "kfac"], profile, seed=3, progress=False)
        for _ in range(2)
    ]
    assert _strip_timing(runs[0]) == _strip_timing(runs[1])
    assert runs[0]["methods"]["kfac"]["parameter_sha1"] == runs[1]["methods"]["kfac"]["parameter_sha1"]
    # and a different seed gives a different run
    other = run_experiment("cnn", load_tasks(TASKS, profile, seed=4), ["finetune"], profile, seed=4, progress=False)
    assert other["methods"]["finetune"]["parameter_sha1"] != runs[0]["methods"]["finetune"]["parameter_sha1"]


def _check_schema(res, methods, tasks):
    assert {"model", "tasks", "profile", "seed", "methods"} <= set(res)
    assert res["tasks"] == tasks and list(res["methods"]) == methods
    T = len(tasks)
    for name, m in res["methods"].items():
        R = m["accuracy_matrix"]
        assert len(R) == T and all(len(row) == T for row in R)
        for t in range(T):
            assert all(0.0 <= R[t][k] <= 1.0 for k in range(t + 1))
            assert all(R[t][k] is None for k in range(t + 1, T))
        for key in ("avg_forgetting", "plasticity", "final_avg_accuracy", "lambda", "seconds"):
            assert isinstance(m[key], (int, float)), (name, key)
        assert ("forgetting_reduction" in m) == (name != "finetune")
    for name in ("ewc", "kfac", "l2"):
        if name in res["methods"]:
            m = res["methods"][name]
            tried = [s["lambda"] for s in m["sweep"]]
            assert m["lambda"] in tried and tried == sorted(tried)
            assert set(get_profile(res["model"], "test").lambdas[name]) <= set(tried)
            assert [s["lambda"] for s in m["lambda_sweep"]] == tried
            assert {"lambda", "dev_score"} == set(m["sweep"][0])
            best = max(m["sweep"], key=lambda s: (s["dev_score"], -s["lambda"]))
            assert best["lambda"] == m["lambda"]


def test_cli_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "res" / "results.json"
    rc = main(
        [
            "--model",
            "cnn",
            "--methods",
            "finetune,ewc,kfac",
            "--tasks",
            "toy-a,toy-b,toy-c",
            "--profile",
            "test",
            "--seed",
            "0",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    res = read_results(out)
    assert res["model"] == "cnn" and res["profile"] == "test" and res["seed"] == 0
    _check_schema(res, ["finetune", "ewc", "kfac"], ["toy-a", "toy-b", "toy-c"])
    assert [p.name for p in out.parent.iterdir()] == ["results.json"]  # no temporary left
    assert "wrote" in capsys.readouterr().out


def test_cli_lambda_option_replaces_a_family_grid(tmp_path, capsys):
    out = tmp_path / "one-lambda.json"
    assert (
        main(
            [
                "--model",
                "cnn",
                "--methods",
                "kfac,kfac_online",
                "--tasks",
                "toy-a,toy-b",
                "--profile",
                "test",
                "--lambda",
                "kfac=3.5",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    res = read_results(out)
    assert {m["lambda"] for m in res["methods"].values()} == {3.5}  # online variants share the family grid
    assert len(res["methods"]["kfac"]["lambda_sweep"]) == 1
    for bad, msg in (("kfc=1", "FAMILY ewc, kfac or l2"), ("kfac=big", "must be numbers"), ("kfac=-1", "positive")):
        assert main(["--tasks", "toy-a", "--profile", "test", "--lambda", bad, "--out", str(out)]) == 2
        assert msg in capsys.readouterr().err


def test_bert_linker_runs_through_the_harness_too(tmp_path):
    out = tmp_path / "bert.json"
    assert (
        main(
            [
                "--model",
                "bert",
                "--methods",
                "finetune,kfac_online,joint",
                "--tasks",
                "toy-a,toy-b",
                "--profile",
                "test",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    _check_schema(read_results(out), ["finetune", "kfac_online", "joint"], TASKS)


def test_per_task_setting_and_online_methods():
    profile = get_profile("cnn", "test")
    res = run_experiment(
        "cnn", load_tasks(TASKS, profile), ["finetune", "ewc_online", "joint"], profile, setting="per_task", progress=False
    )
    assert res["setting"] == "per_task"
    _check_schema(res, ["finetune", "ewc_online", "joint"], TASKS)


def test_unknown_method_is_refused_up_front_with_the_choices(capsys):
    rc = main(["--methods", "finetune,kfca", "--tasks", "toy-a", "--profile", "test"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "kfca" in err and all(m in err for m in METHODS)


def test_empty_task_is_refused_up_front():
    profile = get_profile("cnn", "test")
    empty = toy_task("toy-b", n_concepts=4)
    empty.test = []
    with pytest.raises(ValueError, match="toy-b.*empty"):
        run_experiment("cnn", [toy_task("toy-a"), empty], ["finetune"], profile, progress=False)
    with pytest.raises(ValueError, match="unknown model"):
        run_experiment("gpt", [toy_task("toy-a")], ["finetune"], profile, progress=False)


def test_nan_loss_names_method_task_and_step():
    profile = get_profile("cnn", "test")
    task = toy_task("toy-a", n_concepts=4)
    linker = harness.build_linker("cnn", harness.ConceptInventory.union([task]), profile)
    linker.begin_task(list(task.concepts))
    batches = linking_batches(linker, task.train, batch_size=4)
    with pytest.raises(NonFiniteLossError, match="'kfac'.*'toy-a'.*step 0"):
        train(
            linker,
            batches,
            epochs=1,
            lr=1e-3,
            lam=1.0,
            method="kfac",
            task="toy-a",
            penalty=lambda model: torch.tensor(float("nan")),
        )


def test_a_nan_stops_the_run_but_keeps_finished_methods(tmp_path, monkeypatch):
    class Poison:
        def penalty(self, model):
            return torch.tensor(float("inf"))

        def memory_bytes(self):
            return 0

    monkeypatch.setattr(sequence.TaskSequence, "fit_curvature", lambda self, family, t: Poison())
    out = tmp_path / "r.json"
    with pytest.raises(NonFiniteLossError, match="'ewc'.*'toy-b'"):
        main(["--methods", "finetune,ewc", "--tasks", "toy-a,toy-b", "--profile", "test", "--out", str(out), "--no-progress"])
    assert list(read_results(out)["methods"]) == ["finetune"]


def test_plots_draw_every_figure_from_the_json(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    out = tmp_path / "r.json"
    main(["--methods", "finetune,ewc,kfac", "--tasks", "toy-a,toy-b", "--profile", "test", "--out", str(out), "--no-progress"])
    res = read_results(out)
    for fig in (
        plots.accuracy_heatmaps(res),
        plots.forgetting_bars(res),
        plots.accuracy_over_time(res),
        plots.lambda_tradeoff(res),
        plots.lambda_tradeoff(res, split="test", mark_plasticity=0.5),
        plots.lambda_curves(res),
        plots.lambda_curves(res, split="dev"),
    ):
        assert fig.axes and all(ax.get_title() or ax.get_xlabel() for ax in fig.axes[:1])
        matplotlib.pyplot.close(fig)


def test_tables_summarise_methods_and_sweeps(tmp_path):
    from kfac_tutorial.experiments import methods_table, sweep_table

    out = tmp_path / "r.json"
    main(["--methods", "kfac,finetune", "--tasks", "toy-a,toy-b", "--profile", "test", "--out", str(out), "--no-progress"])
    res = read_results(out)
    table = methods_table(res)
    assert list(table.index) == ["finetune", "kfac"]
    assert table.loc["kfac", "λ (dev)"] == res["methods"]["kfac"]["lambda"]
    assert table.loc["kfac", "forgetting reduction"] == pytest.approx(res["methods"]["kfac"]["forgetting_reduction"], nan_ok=True)
    assert table.loc["finetune", "curvature bytes"] == 0 and table.loc["kfac", "curvature bytes"] > 0
    sweep = sweep_table(res)
    grid = get_profile("cnn", "test").lambdas["kfac"]
    assert set(grid) <= {lam for _, lam in sweep.index}  # the grid, extended past an edge optimum
    assert sweep["chosen"].sum() == 1


def test_unknown_task_name_is_refused_up_front_with_the_choices(capsys):
    assert main(["--methods", "finetune", "--tasks", "diseases,genes", "--profile", "test"]) == 2
    err = capsys.readouterr().err
    assert "genes" in err and "phenotypes" in err and "toy-a" in err


def test_run_or_load_caches_by_every_input(tmp_path, monkeypatch):
    """A second identical call loads the stored JSON (same numbers, no training); a
    changed input (seed) is a different key; no cache folder means no file."""
    from kfac_tutorial.experiments import cache_key, run_or_load

    profile = get_profile("cnn", "test")
    first = run_or_load("cnn", TASKS, ["finetune"], profile, seed=1, cache_dir=tmp_path, progress=False)
    assert first["cached"] is False and len(list(tmp_path.glob("*.json"))) == 1

    def boom(*a, **k):
        raise AssertionError("trained again although the result was cached")

    monkeypatch.setattr("kfac_tutorial.experiments.cache.run_experiment", boom)
    again = run_or_load("cnn", TASKS, ["finetune"], profile, seed=1, cache_dir=tmp_path)
    assert again["cached"] is True
    assert again["methods"]["finetune"]["accuracy_matrix"] == first["methods"]["finetune"]["accuracy_matrix"]
    assert cache_key("cnn", TASKS, ["finetune"], profile, seed=1) != cache_key("cnn", TASKS, ["finetune"], profile, seed=2)
    assert cache_key("cnn", TASKS, ["finetune"], profile) != cache_key(
        "cnn", TASKS, ["finetune"], profile.with_overrides(epochs=profile.epochs + 1)
    )
    monkeypatch.delenv("KFAC_RESULTS_CACHE", raising=False)
    with pytest.raises(AssertionError, match="trained again"):
        run_or_load("cnn", TASKS, ["finetune"], profile, seed=1)  # no cache: runs


def test_compare_variants_one_row_per_variant_and_method(tmp_path, monkeypatch):
    """Each variant is its own run (overrides reach the profile, a task order replaces
    the default); unknown settings are refused with the valid ones listed."""
    from kfac_tutorial.experiments import compare_variants

    monkeypatch.setenv("KFAC_RESULTS_CACHE", str(tmp_path))
    profile = get_profile("cnn", "test")
    table, runs = compare_variants(
        "cnn",
        TASKS,
        ["finetune", "kfac"],
        profile,
        {"default": {}, "exact": {"fisher": "exact"}, "reversed": {"tasks": TASKS[::-1]}},
        progress=False,
    )
    assert list(table["variant"]) == ["default", "default", "exact", "exact", "reversed", "reversed"]
    assert runs["exact"]["config"]["fisher"] == "exact"
    assert runs["default"]["config"]["fisher"] == profile.fisher
    assert runs["reversed"]["tasks"] == TASKS[::-1]
    assert table.loc[table.method == "kfac", "forgetting_reduction"].notna().all()
    assert len(list(tmp_path.glob("*.json"))) == 3
    with pytest.raises(ValueError, match="unknown setting.*mc_sample"):
        compare_variants("cnn", TASKS, ["finetune"], profile, {"typo": {"mc_sample": 3}})


def test_variant_bars_draws_one_group_per_variant():
    import pandas as pd

    table = pd.DataFrame(
        [
            {"variant": v, "method": m, "forgetting_reduction": r, "plasticity": 0.7, "final_avg_accuracy": 0.6}
            for v, r in (("a", 0.5), ("b", 0.8))
            for m in ("finetune", "kfac")
        ]
    )
    fig = plots.variant_bars(table, title="t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.5, 0.8]  # kfac only: fine-tuning has no reduction to show


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """One CLI run with two seeds, shared by the tests of the multi-seed JSON."""
    out = tmp_path_factory.mktemp("seeds") / "seeds.json"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(
            [
                "--model",
                "cnn",
                "--methods",
                "finetune,ewc,kfac,l2,frozen",
                "--tasks",
                "toy-a,toy-b",
                "--profile",
                "test",
                "--seeds",
                "0,1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    return read_results(out)


def test_cli_seeds_write_intervals_and_verdicts(seeded, tmp_path, capsys):
    res = seeded
    out = tmp_path / "bad.json"
    _check_schema(res, ["finetune", "ewc", "kfac", "l2", "frozen"], TASKS)
    assert res["seeds"] == [0, 1] and res["seed"] == 0
    assert res["command"].startswith("python -m kfac_tutorial.experiments") and "--seeds" in res["command"]
    assert res["kfac_tutorial_version"]
    for name, m in res["methods"].items():
        assert [s["parameter_sha1"] for s in m["seeds"]][0] == m["parameter_sha1"]  # first seed kept
        for metric in ("avg_forgetting", "forgetting_reduction", "plasticity", "final_avg_accuracy"):
            assert metric in m["mean"] and len(m["ci95"][metric]) == 2
        per_seed = [s["avg_forgetting"] for s in m["seeds"]]
        assert m["mean"]["avg_forgetting"] == pytest.approx(sum(per_seed) / 2)
    kfac_ewc = [c for c in res["comparisons"] if (c["a"], c["b"]) == ("kfac", "ewc")]
    assert {c["metric"] for c in kfac_ewc} == {
        "avg_forgetting",
        "forgetting_reduction",
        "plasticity",
        "final_avg_accuracy",
        "forgetting_encoder",
        "forgetting_table",
    }
    for c in res["comparisons"]:
        lo, hi = c["ci95"]
        assert (c["verdict"] == "tie") == (lo is None or lo <= 0 <= hi)
        assert c["verdict"] in ("tie", c["a"], c["b"])
    assert main(["--tasks", "toy-a", "--profile", "test", "--seeds", "0,x", "--out", str(out)]) == 2
    assert "integers" in capsys.readouterr().err


def test_bert_with_seeds(tmp_path):
    out = tmp_path / "bert.json"
    assert (
        main(
            [
                "--model",
                "bert",
                "--methods",
                "finetune,kfac,frozen",
                "--tasks",
                "toy-a,toy-b",
                "--profile",
                "test",
                "--seeds",
                "0,1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    res = read_results(out)
    _check_schema(res, ["finetune", "kfac", "frozen"], TASKS)
    assert len(res["methods"]["kfac"]["seeds"]) == 2 and res["comparisons"]


def _sequence(model="cnn"):
    profile = get_profile(model, "test")
    tasks = [harness.prepare_task(t, profile) for t in load_tasks(TASKS, profile)]
    linker = harness.build_linker(model, harness.ConceptInventory.union(tasks), profile)
    return sequence.TaskSequence(linker, tasks, profile, 0, False), tasks


def test_frozen_keeps_the_encoder_and_old_rows_bit_for_bit():
    run, tasks = _sequence()
    run.train_task(0, "finetune")
    before = {n: p.detach().clone() for n, p in run.linker.named_parameters()}
    old_rows = run.linker.columns(list(tasks[0].concepts))
    new_rows = run.linker.columns([c for c in tasks[1].concepts if c not in tasks[0].concepts])
    run.train_task(1, "frozen")
    after = dict(run.linker.named_parameters())
    for name, p in before.items():
        if name != "table.weight":
            assert torch.equal(after[name], p), name
    assert torch.equal(after["table.weight"][old_rows], p_old := before["table.weight"][old_rows]) and p_old.numel()
    assert not torch.equal(after["table.weight"][new_rows], before["table.weight"][new_rows])  # they learned
    assert all(p.requires_grad for p in run.linker.parameters())  # unfrozen afterwards


def test_l2_with_a_huge_lambda_keeps_the_parameters_near_the_anchor():
    from kfac_tutorial.experiments import L2Anchor

    distances = {}
    for lam in (0.0, 1e6):
        run, tasks = _sequence()
        run.train_task(0, "finetune")
        anchor = run.fit_curvature("l2", 0)
        assert isinstance(anchor, L2Anchor)
        theta0 = {n: p.detach().clone() for n, p in run.linker.named_parameters() if n != "table.weight"}
        old_rows = run.linker.columns(list(tasks[0].concepts))
        table0 = run.linker.table.weight.detach()[old_rows].clone()
        run.train_task(1, "l2", lam, anchor.penalty)
        deltas = [(p.detach() - theta0[n]).flatten() for n, p in run.linker.named_parameters() if n in theta0]
        deltas.append((run.linker.table.weight.detach()[old_rows] - table0).flatten())
        delta = torch.cat(deltas)
        distances[lam] = (float(delta.norm()), float(delta.abs().max()))
    # Adam moves every coordinate by about lr per step, however steep the pull: a huge λ
    # keeps each one within a few steps of θ*, where fine-tuning moves far
    lr = get_profile("cnn", "test").lr
    assert distances[1e6][1] < 3 * lr < distances[0.0][1]
    assert distances[1e6][0] < 0.1 * distances[0.0][0]
    # the penalty is ½‖θ − θ*‖² over the encoder and the seen rows only
    run, tasks = _sequence()
    run.train_task(0, "finetune")
    anchor = L2Anchor.fit(run.linker)
    with torch.no_grad():
        for n, p in run.linker.named_parameters():
            p.add_(1.0)
    seen_rows = int(run.linker.seen.sum())
    n_encoder = sum(p.numel() for n, p in run.linker.named_parameters() if n != "table.weight")
    expected = 0.5 * (n_encoder + seen_rows * run.linker.table.weight.shape[1])
    assert float(anchor.penalty(run.linker)) == pytest.approx(expected, rel=1e-5)
    assert float((anchor + anchor).penalty(run.linker)) == pytest.approx(2 * expected, rel=1e-5)
    assert float(anchor.merge(anchor, 0.5).penalty(run.linker)) == pytest.approx(1.5 * expected, rel=1e-5)


def test_a_recorded_seed_is_reproduced_live_and_runs_merge(seeded, monkeypatch):
    from kfac_tutorial.experiments import combine_seeds, merge_recorded, reproduce_recorded, reproduction_check, seed_runs

    monkeypatch.delenv("KFAC_RESULTS_CACHE", raising=False)
    profile = get_profile("cnn", "test")
    runs = seed_runs(seeded)
    main_part = combine_seeds([{**r, "methods": {m: r["methods"][m] for m in ("finetune", "kfac")}} for r in runs], n_boot=50)
    halves = [combine_seeds([{**r, "methods": {"frozen": r["methods"]["frozen"]}}], n_boot=50) for r in runs]
    merged = merge_recorded(main_part, halves[1], halves[0], n_boot=100)  # seeds added, methods joined
    assert merged["seeds"] == [0, 1] and list(merged["methods"]) == ["finetune", "kfac", "frozen"]
    assert merged["methods"]["frozen"]["seeds"][1] == seeded["methods"]["frozen"]["seeds"][1]
    assert merged["methods"]["frozen"]["mean"]["forgetting_reduction"] == pytest.approx(
        seeded["methods"]["frozen"]["mean"]["forgetting_reduction"]
    )  # reductions against each seed's finetune
    live, check = reproduce_recorded(merged, ["finetune", "kfac", "frozen"], profile, seed=1, progress=False)
    assert check["reproduced"] and check["max_mentions"] == {"finetune": 0, "kfac": 0, "frozen": 0}
    assert [s["lambda"] for s in live["methods"]["kfac"]["sweep"]] == [merged["methods"]["kfac"]["seeds"][1]["lambda"]]
    with pytest.raises(ValueError, match="differs from the recorded"):
        reproduce_recorded(merged, ["finetune"], profile.with_overrides(epochs=1), progress=False)
    tampered = json.loads(json.dumps(merged))
    tampered["methods"]["kfac"]["seeds"][1]["accuracy_matrix"][1][0] += 0.5  # 6 of 12 mentions
    bad = reproduction_check(live, tampered, ["kfac"])
    assert not bad["reproduced"] and bad["max_mentions"]["kfac"] == 6


def test_chapter_settings_check_the_parameters_in_one_call():
    from kfac_tutorial.experiments import chapter_settings

    s = chapter_settings("cnn", "cpu", "diseases,drugs", None, "3")
    assert s.tasks == ["diseases", "drugs"] and s.seed == 3 and s.profile.name == "cpu"
    for kwargs, msg in (
        (dict(profile="gpu"), "PROFILE"),
        (dict(tasks="diseases,genes"), "genes"),
        (dict(tasks="diseases"), "two distinct"),
        (dict(methods="ewc,kfac"), "finetune"),
    ):
        args = {"profile": "cpu", "tasks": None, "methods": None, **kwargs}
        with pytest.raises(ValueError, match=msg):
            chapter_settings("cnn", args["profile"], args["tasks"], args["methods"])


def test_multi_seed_figures_and_tables(seeded):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kfac_tutorial.experiments import comparisons_table, evidence_table, frontier_sentence, frontier_table, verdict_sentence

    res = seeded
    for fig in (
        plots.frontier_bands(res, n_boot=30),
        plots.interval_bars(res),
        plots.forgetting_split_bars(res),
        plots.final_accuracy_over_lambda(res),
    ):
        assert fig.axes
        plt.close(fig)
    table = evidence_table(res)
    assert list(table.index) == ["finetune", "ewc", "kfac", "l2", "frozen"]
    assert table.loc["ewc", "λ per seed (dev)"] == ", ".join(f"{s['lambda']:g}" for s in res["methods"]["ewc"]["seeds"])
    comps = comparisons_table(res, "forgetting_reduction", pairs=[("kfac", "ewc")])
    c = [c for c in res["comparisons"] if (c["a"], c["b"], c["metric"]) == ("kfac", "ewc", "forgetting_reduction")][0]
    assert comps.loc["kfac − ewc", "verdict"] == c["verdict"]
    sentence = verdict_sentence(res, "kfac", "ewc")
    assert ("cannot be told apart" in sentence) == (c["verdict"] == "tie")
    assert len(frontier_table(res)) == 6 and "plasticity" in frontier_sentence(res, "kfac", "ewc", "ewc")


def test_variants_over_seeds_pairs_each_seed_and_reproduces_one(monkeypatch):
    """The flavour ablation with seeds: fine-tuning is shared by the variants of a seed,
    every comparison's verdict follows its interval, the record is JSON, and one seed of
    one variant re-run live at its chosen λ gives the recorded accuracies exactly."""
    from kfac_tutorial.experiments import (
        FISHER_FLAVOURS,
        reproduce_variant,
        variants_as_results,
        variants_over_seeds,
        variants_table,
        verdict_sentence,
    )
    from kfac_tutorial.statistics import verdict

    monkeypatch.delenv("KFAC_RESULTS_CACHE", raising=False)
    profile = get_profile("cnn", "test").with_overrides(epochs=2)
    variants = {k: FISHER_FLAVOURS[k] for k in ("mc, 1 sample", "empirical")}
    ab = variants_over_seeds("cnn", TASKS, profile, variants, [0, 1], reference="mc, 1 sample", n_boot=200, progress=False)
    ab = json.loads(json.dumps(ab))
    assert ab["finetune_shared"] and ab["seeds"] == [0, 1] and ab["torch_threads"] == 1
    assert [c["a"] for c in ab["comparisons"]] == ["kfac (empirical)"] * len(ab["comparisons"])
    for c in ab["comparisons"]:
        assert c["verdict"] == verdict(c["a"], c["b"], c["metric"], c["ci95"])
    assert len(ab["variants"]["empirical"]["lambda"]) == 2
    assert list(variants_table(ab).index) == ["mc, 1 sample", "empirical"]
    view = variants_as_results(ab)
    assert "empirical" in verdict_sentence(view, "kfac (empirical)", "kfac (mc, 1 sample)")
    live, check = reproduce_variant(ab, "empirical", profile, seed=1, progress=False)
    assert check["reproduced"] and check["max_mentions"] == {"finetune": 0, "kfac": 0}
    assert [s["lambda"] for s in live["methods"]["kfac"]["sweep"]] == [ab["variants"]["empirical"]["lambda"][1]]
    with pytest.raises(ValueError, match="not recorded"):
        reproduce_variant(ab, "exact", profile, progress=False)
    with pytest.raises(ValueError, match="unknown setting"):
        variants_over_seeds("cnn", TASKS, profile, {"typo": {"mc_sample": 3}}, [0], progress=False)
