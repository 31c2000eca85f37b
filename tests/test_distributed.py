"""Several processes: distributed fits, wrapped models (DDP, torch.compile).

Two CPU processes (``gloo``) are spawned once for the module; each fits EWC and KFAC on
its own, uneven shard and writes what it got. The oracles are computed here, in one
process, on all batches: a distributed fit must equal that (float64; measured on
2026-12-02: at most 3.6e-16 of the largest entry of each factor kind, i.e. rounding;
asserted below 1e-12), and both ranks must end with bit-identical states. The Trainer's
float32 tiny BERT is compared at 1e-5 (benchmarks/distributed.py measured 7.5e-7 for a
float32 BERT).

* ``exact``: the one-process fit on the union of the shards.
* ``mc``: rank ``r`` draws its labels from ``rank_seed(seed, r)``, so the oracle is the
  one-process fits of each shard with its rank's seed, weighted by the shards' sizes
  (the mean over the union); the same seed on both shards must *not* match.
* DDP: one training step of ``cross_entropy + λ · penalty`` through a DDP-wrapped model
  equals the mean over the ranks of the plain model's gradients (the penalty's gradient
  is neither lost nor doubled by DDP's reduction); a state fitted and saved through DDP
  loads into the plain model and equals the plain fit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import kfac_tutorial as kt
from kfac_tutorial.curvature.distributed import payload_numel, rank_seed

try:
    from . import models as M
except ImportError:  # run as a plain module
    import models as M

WORLD = 2
SHARDS = [[3], [4, 2, 2]]  # batch sizes of rank 0 and rank 1: 3 and 8 examples (uneven)
LAM = 0.7
MC_SEED = 5
RTOL = 1e-12  # float64; measured differences are at most 3.6e-16 relative


def _model_and_batches():
    model, batches = M.masked_pool_classifier(seed=0, n=11, t=5)  # Embedding, LayerNorm, Linear ×2
    return model, M.split_batches(batches, [b for shard in SHARDS for b in shard])


def _shard(batches, rank: int):
    start = sum(len(s) for s in SHARDS[:rank])
    return batches[start : start + len(SHARDS[rank])]


def _perturbed(model):
    M.perturb(model, scale=0.3, seed=11)
    return model


def _worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model, batches = _model_and_batches()
        shard = _shard(batches, rank)
        out_dir = Path(out)
        kt.EWC.fit(model, shard, fisher="exact", progress=False).save(out_dir / f"ewc_exact_{rank}.safetensors")
        kt.KFAC.fit(model, shard, fisher="exact", progress=False).save(out_dir / f"kfac_exact_{rank}.safetensors")
        kt.KFAC.fit(model, shard, fisher="exact", weight_sharing="expand", progress=False).save(
            out_dir / f"kfac_expand_{rank}.safetensors"
        )
        kt.KFAC.fit(model, shard, fisher="mc", mc_samples=2, seed=MC_SEED, progress=False).save(
            out_dir / f"kfac_mc_{rank}.safetensors"
        )
        kt.EWC.fit(model, shard, fisher="mc", mc_samples=2, seed=MC_SEED, progress=False).save(
            out_dir / f"ewc_mc_{rank}.safetensors"
        )
        kt.KFAC.fit(model, shard if rank == 0 else [], fisher="exact", progress=False).save(  # rank 1: no batch
            out_dir / f"kfac_empty_{rank}.safetensors"
        )
        local = kt.KFAC.fit(model, shard, fisher="exact", progress=False, distributed=False)
        local.save(out_dir / f"kfac_local_{rank}.safetensors")

        ddp = DDP(model)
        state = kt.KFAC.fit(ddp, shard, fisher="exact", progress=False)  # through the wrapper
        if rank == 0:
            state.save(out_dir / "kfac_ddp.safetensors")
        dist.barrier()
        loaded = kt.KFAC.load(out_dir / "kfac_ddp.safetensors", ddp)  # and back into a wrapper
        # one training step through DDP: task loss on this rank's first batch + λ · penalty
        ddp.train()
        _perturbed(model)
        inputs, targets = shard[0]
        loss = torch.nn.functional.cross_entropy(ddp(inputs), targets) + LAM * loaded.penalty(ddp)
        loss.backward()
        grads = {n: p.grad.tolist() for n, p in model.named_parameters()}
        with torch.no_grad():
            penalty = {"ddp": float(loaded.penalty(ddp)), "plain": float(loaded.penalty(model))}
        (out_dir / f"ddp_{rank}.json").write_text(json.dumps({"grads": grads, "penalty": penalty}))
        _trainer_part(rank, out_dir)  # same processes and group: one start-up for the whole file
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Run :func:`_worker` on two gloo ranks once; the folder of what they wrote."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return out


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def _assert_states_close(state, oracle, rtol=RTOL) -> None:
    """Every diagonal and factor within ``rtol`` of the oracle's, relative to the largest
    entry of its kind in the oracle (a factor that is zero up to rounding, such as the
    ``G`` of a one-layer BERT's attention keys, is compared at the scale of the others)."""

    def check(pairs, what):
        scale = max(float(b.abs().max()) for _, b in pairs.values())
        for key, (a, b) in pairs.items():
            assert float((a - b).abs().max()) <= rtol * scale, (what, key)

    assert set(state.diagonal) == set(oracle.diagonal)
    if oracle.diagonal:
        check({n: (state.diagonal[n], d) for n, d in oracle.diagonal.items()}, "diagonal")
    factors = getattr(oracle, "factors", {})
    assert set(getattr(state, "factors", {})) == set(factors)
    for attr in ("full_A", "full_G"):  # a root (storage="auto") compares as its R Rᵀ
        for kind in {f.kind for f in factors.values()}:
            check(
                {m: (getattr(state.factors[m], attr)(), getattr(f, attr)()) for m, f in factors.items() if f.kind == kind}, attr
            )
    assert state.info["num_examples"] == oracle.info["num_examples"]


def _load(path, model):
    return kt.load(path, model)


def _ranks_agree(spawned, name, model):
    """Both ranks hold the same state, bit for bit; returns rank 0's."""
    states = [_load(spawned / f"{name}_{r}.safetensors", model) for r in range(WORLD)]
    for key, t in states[0]._tensors().items():
        assert torch.equal(t, states[1]._tensors()[key]), key
    return states[0]


@pytest.mark.parametrize(
    "name, cls, kwargs",
    [
        ("ewc_exact", kt.EWC, {}),
        ("kfac_exact", kt.KFAC, {}),
        ("kfac_expand", kt.KFAC, {"weight_sharing": "expand"}),
    ],
)
def test_uneven_shards_equal_one_process_on_all_batches(spawned, name, cls, kwargs):
    model, batches = _model_and_batches()
    oracle = cls.fit(model, batches, fisher="exact", progress=False, **kwargs)
    state = _ranks_agree(spawned, name, model)
    assert state.info["num_examples"] == 11 and state.info["processes"] == WORLD
    _assert_states_close(state, oracle)


def test_a_rank_without_batches_adds_nothing(spawned):
    model, batches = _model_and_batches()
    state = _ranks_agree(spawned, "kfac_empty", model)
    _assert_states_close(state, kt.KFAC.fit(model, _shard(batches, 0), fisher="exact", progress=False))


def test_distributed_false_fits_the_own_shard_only(spawned):
    model, batches = _model_and_batches()
    for rank in range(WORLD):
        local = _load(spawned / f"kfac_local_{rank}.safetensors", model)
        assert "processes" not in local.info
        _assert_states_close(local, kt.KFAC.fit(model, _shard(batches, rank), fisher="exact", progress=False))
    union = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    assert _relative_gap(local.factors["head"].full_G(), union.factors["head"].full_G()) > 1e-3  # a shard is not the union


def _size_weighted_mc(cls, model, batches, seeds):
    """The union's mean from one-process fits of each shard with the given seeds."""
    fits = [cls.fit(model, _shard(batches, r), fisher="mc", mc_samples=2, seed=seeds[r], progress=False) for r in range(WORLD)]
    sizes = [f.info["num_examples"] for f in fits]
    total = sum(sizes)

    def mean(get):
        return sum(n * get(f) for n, f in zip(sizes, fits)) / total

    diagonal = {n: mean(lambda f, n=n: f.diagonal[n]) for n in fits[0].diagonal}
    if cls is kt.EWC:
        return kt.EWC(fits[0].anchor, diagonal, info={"num_examples": total})
    factors = {}
    for m, f0 in fits[0].factors.items():
        A = mean(lambda f, m=m: f.factors[m].full_A())  # reduce and embedding counts: per-example means
        if f0.A.dim() == 1:  # embedding: normalised by positions, not examples
            A = cls.fit(model, batches, fisher="mc", progress=False).factors[m].full_A()  # labels do not enter A
        factors[m] = type(f0)(f0.kind, A, mean(lambda f, m=m: f.factors[m].full_G()), f0.weight, f0.bias)
    return kt.KFAC(fits[0].anchor, diagonal, factors, info={"num_examples": total})


@pytest.mark.parametrize("name, cls", [("kfac_mc", kt.KFAC), ("ewc_mc", kt.EWC)])
def test_mc_labels_follow_the_per_rank_seed_rule(spawned, name, cls):
    model, batches = _model_and_batches()
    state = _ranks_agree(spawned, name, model)
    oracle = _size_weighted_mc(cls, model, batches, [rank_seed(MC_SEED, r) for r in range(WORLD)])
    _assert_states_close(state, oracle)
    same_seed = _size_weighted_mc(cls, model, batches, [MC_SEED, MC_SEED])
    gaps = [_relative_gap(state.diagonal[n], d) for n, d in same_seed.diagonal.items()]
    assert max(gaps) > 1e-6  # one seed on every rank would draw other labels


def test_rank_seed():
    assert rank_seed(7, 0) == 7  # one process draws what it always drew
    seeds = {rank_seed(s, r) for s in range(4) for r in range(1, 4)}
    assert len(seeds) == 12 and not seeds & set(range(100))


def test_state_fitted_under_ddp_loads_into_the_plain_model(spawned):
    model, batches = _model_and_batches()
    state = kt.KFAC.load(spawned / "kfac_ddp.safetensors", model)  # names without "module."
    assert all(not n.startswith("module.") for n in state.anchor)
    _assert_states_close(state, kt.KFAC.fit(model, batches, fisher="exact", progress=False))


def test_ddp_step_with_penalty_equals_the_plain_gradient(spawned):
    model, batches = _model_and_batches()
    state = kt.KFAC.load(spawned / "kfac_ddp.safetensors", model)
    _perturbed(model)
    model.train()
    grads = []
    for rank in range(WORLD):
        model.zero_grad()
        inputs, targets = _shard(batches, rank)[0]
        loss = torch.nn.functional.cross_entropy(model(inputs), targets) + LAM * state.penalty(model)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    expected = {n: sum(g[n] for g in grads) / WORLD for n in grads[0]}  # DDP averages the ranks
    penalty_grad = torch.autograd.grad(state.penalty(model), list(model.parameters()))
    assert max(float(g.abs().max()) for g in penalty_grad) > 1e-3  # the penalty matters here
    for rank in range(WORLD):
        got = json.loads((spawned / f"ddp_{rank}.json").read_text())
        assert got["penalty"]["ddp"] == got["penalty"]["plain"] > 0
        assert got["penalty"]["ddp"] == pytest.approx(float(state.penalty(model).detach()), rel=1e-12)
        for n, g in expected.items():
            assert _relative_gap(torch.tensor(got["grads"][n], dtype=g.dtype), g) <= 1e-10, n


def test_compiled_model_uses_the_plain_names(tmp_path):
    model, batches = _model_and_batches()
    compiled = torch.compile(model)  # no forward through it: nothing is compiled
    assert any(n.startswith("_orig_mod.") for n, _ in compiled.named_parameters())
    state = kt.KFAC.fit(compiled, batches, fisher="exact", progress=False)
    assert list(state.anchor) == [n for n, _ in model.named_parameters()]
    plain = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    _assert_states_close(state, plain, rtol=0.0)
    _perturbed(model)
    assert float(state.penalty(compiled).detach()) == float(plain.penalty(model).detach()) > 0
    assert torch.equal(state.to_dense(compiled), plain.to_dense(model))
    state.save(tmp_path / "c.safetensors")
    assert torch.equal(kt.load(tmp_path / "c.safetensors", model).to_dense(model), plain.to_dense(model))


def test_payload_counts_upper_triangles():
    assert payload_numel([(4, 4), (7,), (3, 5)], packed=True) == 10 + 7 + 15
    assert payload_numel([(4, 4), (7,), (3, 5)], packed=False) == 16 + 7 + 15


# --------------------------------------------------------------------------- Hugging Face Trainer
TRAINER_EXAMPLES = 13  # rank 0 fits on 7 of them, rank 1 on 6


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config)


def _task(seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (TRAINER_EXAMPLES, 6), generator=g)
    labels = torch.randint(0, 3, (TRAINER_EXAMPLES,), generator=g)
    return [
        {"input_ids": ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": labels[i]}
        for i in range(TRAINER_EXAMPLES)
    ]


def _trainer_part(rank: int, out_dir: Path) -> None:
    """Two-process ``ConsolidationTrainer`` runs (the process group is initialised: the
    Trainer's accelerate state finds it through the torchrun-style variables)."""
    try:
        import accelerate  # noqa: F401  (the Trainer needs it)
    except ImportError:
        return
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29500",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    from safetensors.torch import save_file
    from transformers import TrainingArguments

    from kfac_tutorial.integrations.hf_trainer import ConsolidationTrainer

    def args(steps):
        return TrainingArguments(
            output_dir=str(out_dir / "trainer"),
            use_cpu=True,
            per_device_train_batch_size=4,
            max_steps=steps,
            logging_steps=1,
            learning_rate=5e-2,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
        )

    model = _tiny_bert()
    trainer = ConsolidationTrainer(model=model, args=args(2), train_dataset=_task(1))  # task A: no penalty
    trainer.train()
    state = trainer.fit_curvature(kind="kfac", fisher="exact")
    trainer.save_curvature(state, out_dir / "task_a.safetensors")
    after_a = {n: p.detach().clone() for n, p in model.named_parameters()}
    if rank == 0:
        save_file(after_a, str(out_dir / "after_a.safetensors"))
    runs = {}
    for lam in (0.0, 30.0):  # task B, without and with the penalty, from the same start
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(after_a[n])
        trainer = ConsolidationTrainer(model=model, args=args(2), train_dataset=_task(2), consolidation=state, lam=lam)
        trainer.train()
        drift = sum(float((p.detach() - after_a[n]).square().sum()) for n, p in model.named_parameters())
        with torch.no_grad():
            runs[str(lam)] = {
                "log": trainer.state.log_history,
                "drift": drift,
                "penalty": float(state.penalty(model)),
                "distributed": trainer.args.world_size,
            }
    (out_dir / f"trainer_{rank}.json").write_text(json.dumps(runs))


@pytest.fixture(scope="module")
def trainer_runs(spawned):
    pytest.importorskip("accelerate")  # the Trainer needs it; the workers skipped it otherwise
    return spawned


def test_trainer_trains_with_the_penalty_on_two_processes(trainer_runs):
    runs = [json.loads((trainer_runs / f"trainer_{r}.json").read_text()) for r in range(WORLD)]
    assert runs[0] == runs[1] or all(  # both ranks hold the same model (DDP)
        runs[0][lam]["drift"] == pytest.approx(runs[1][lam]["drift"], rel=1e-6) for lam in runs[0]
    )
    free, pulled = runs[0]["0.0"], runs[0]["30.0"]
    assert free["distributed"] == pulled["distributed"] == WORLD
    logged = [e["consolidation_penalty"] for e in pulled["log"] if "consolidation_penalty" in e]
    assert len(logged) == 2 and logged[0] == 0.0 and logged[-1] > 0  # at the anchor, then away from it
    assert not any("consolidation_penalty" in e for e in free["log"])
    assert pulled["penalty"] < free["penalty"] and pulled["drift"] < free["drift"]  # the penalty holds θ near θ*


def test_trainer_curvature_is_the_fit_over_the_whole_dataset(trainer_runs):
    from safetensors.torch import load_file

    model = _tiny_bert()
    with torch.no_grad():
        for n, p in load_file(str(trainer_runs / "after_a.safetensors")).items():
            model.get_parameter(n).copy_(p)
    saved = kt.KFAC.load(trainer_runs / "task_a.safetensors", model)
    assert saved.info["num_examples"] == TRAINER_EXAMPLES and saved.info["processes"] == WORLD
    examples = _task(1)
    batches = [
        (
            {k: torch.stack([ex[k] for ex in examples]) for k in ("input_ids", "attention_mask")},
            torch.stack([ex["labels"] for ex in examples]),
        )
    ]
    _assert_states_close(saved, kt.KFAC.fit(model, batches, fisher="exact", progress=False), rtol=1e-5)


def test_communication_report_counts_the_states_bytes():
    from kfac_tutorial.curvature.distributed import communication_report

    model, batches = _model_and_batches()
    for kronecker, cls in ((True, kt.KFAC), (False, kt.EWC)):
        state = cls.fit(model, batches, fisher="exact", progress=False)
        report = communication_report(model, kronecker=kronecker, bytes_per_number=8)  # float64 model
        assert report["factor_bytes"] == state.memory_bytes()
        if kronecker:
            d = {m: (f.A.shape, f.G.shape) for m, f in state.factors.items()}
            saved = sum(8 * (s[0] * (s[0] - 1) // 2) for shapes in d.values() for s in shapes if len(s) == 2)
            assert report["full_bytes"] - report["packed_bytes"] == saved > 0


def test_harness_under_torchrun_writes_the_json_once(tmp_path):
    """``torchrun --nproc_per_node 2 -m kfac_tutorial.experiments`` (test profile, toy
    tasks, one λ): DDP training and a 2-rank Fisher; rank 0 alone prints and writes."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "r.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(WORLD),
            "-m",
            "kfac_tutorial.experiments",
            "--model",
            "cnn",
            "--profile",
            "test",
            "--methods",
            "finetune,kfac",
            "--tasks",
            "toy-a,toy-b",
            "--lambda",
            "kfac=10",
            "--seed",
            "0",
            "--no-progress",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1 and proc.stdout.count("kfac ") >= 1
    results = json.loads(out.read_text())
    assert results["processes"] == WORLD
    assert set(results["methods"]) == {"finetune", "kfac"}
    kfac = results["methods"]["kfac"]
    assert kfac["lambda"] == 10 and len(kfac["accuracy_matrix"]) == 2 and kfac["curvature_bytes"] > 0
