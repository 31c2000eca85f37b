"""Recorded results: found in the checkout, fetched when absent, and the benchmark JSON
as tables (a hand-made file, every section)."""

import io
import json

import pytest

from kfac_tutorial.experiments import benchmark_tables, read_recorded
from kfac_tutorial.experiments import results as results_module

BENCH = {
    "estimation": [
        {
            "workload": "m",
            "variant": "all",
            "method": "plain fwd+bwd",
            "ok": True,
            "median_s": 2.0,
            "min_s": 1.9,
            "peak_mib": 1.0,
            "over_plain_fwd_bwd": 1.0,
        },
        {
            "workload": "m",
            "variant": "all",
            "method": "ours KFAC",
            "ok": True,
            "median_s": 3.0,
            "min_s": 2.9,
            "peak_mib": 5.0,
            "over_plain_fwd_bwd": 1.5,
        },
        {"workload": "m", "variant": "all", "method": "peer", "ok": False, "error": "NotImplementedError: no"},
        {"workload": "m", "method": "_notes", "layers": 2},
    ],
    "step": {
        "workload": "m",
        "batch_size": 4,
        "fisher_examples": 8,
        "parameter_bytes": 100,
        "rows": [
            {"variant": "plain", "median_s": 1.0, "min_s": 1.0, "over_plain": 1.0, "state_bytes": 0},
            {
                "variant": "KFAC",
                "median_s": 2.0,
                "min_s": 2.0,
                "over_plain": 2.0,
                "state_bytes": 250,
                "penalty_rel_error_after_training_steps": None,
            },
        ],
    },
    "step_big": {
        "workload": "big",
        "batch_size": 2,
        "fisher_examples": 16,
        "parameter_bytes": 10,
        "rows": [
            {"variant": "plain", "median_s": 1.0, "min_s": 1.0, "over_plain": 1.0, "state_bytes": 0, "state_over_parameters": 0.0}
        ],
    },
    "state": {
        "m": {
            "fisher_examples": 8,
            "full": {"state_over_parameters": 2.5, "file_curvature_over_parameters": 1.3, "by_kind": {"linear": {"ratio": 2.0}}},
        }
    },
    "growth": {"sequence_length": [{"length": 16, "fit_over_plain": 1.2}], "vocabulary": [], "tasks": [{"tasks": 1}]},
}


def test_benchmark_tables_flatten_every_section():
    t = benchmark_tables(BENCH)
    est = t["estimation"]
    assert list(est["method"]) == ["plain fwd+bwd", "ours KFAC", "peer"]  # notes rows dropped
    assert est.loc[1, "x plain fwd+bwd"] == 1.5 and est.loc[2, "error"].startswith("NotImplementedError")
    assert list(t["step"]["workload"]) == ["m", "m", "big"]
    assert t["step"].loc[1, "state x params"] == 2.5  # from state bytes / parameter bytes
    assert t["state"].loc[0, "linear x params"] == 2.0
    assert len(t["growth_length"]) == 1 and t["growth_vocabulary"].empty and len(t["growth_tasks"]) == 1
    assert all(v.empty for v in benchmark_tables({}).values())


def test_read_recorded_prefers_the_checkout_then_downloads(tmp_path, monkeypatch):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x.json").write_text(json.dumps({"a": 1}))
    assert read_recorded("r/x.json", root=tmp_path) == {"a": 1}
    with pytest.raises(FileNotFoundError, match="r/y.json"):
        read_recorded("r/y.json", root=tmp_path)
    monkeypatch.chdir(tmp_path / "r")  # the current folder's parents are searched too
    monkeypatch.setattr(results_module, "__file__", str(tmp_path / "pkg" / "experiments" / "results.py"))
    assert read_recorded("r/x.json", download=False) == {"a": 1}
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return io.BytesIO(json.dumps({"from": "github"}).encode())

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    assert read_recorded("r/z.json") == {"from": "github"}
    assert urls == [f"{results_module.REPOSITORY_RAW}/r/z.json"]
    with pytest.raises(FileNotFoundError, match="not found"):
        read_recorded("r/z.json", download=False)


def test_recorded_benchmarks_in_the_repository_parse():
    for name in ("benchmarks/results/cpu_idle.json", "benchmarks/results/benchmarks_gpu.json"):
        t = benchmark_tables(read_recorded(name, download=False))
        assert not t["estimation"].empty and not t["step"].empty
