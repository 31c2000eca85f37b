"""Distributed fits: bytes communicated, 1- vs 2-process estimation time, equality gap.

    PYTHONPATH=$PWD python -m benchmarks.distributed [--examples 256] [--rounds 3] \\
        [--out benchmarks/results/distributed_cpu.json]

* ``bytes``: what one rank all-reduces per KFAC (and EWC) fit of a MiniLM-sized and a
  BERT-base-sized stock BERT (random weights from a ``BertConfig``, every parameter
  trainable; float32), symmetric factors as packed upper triangles and as whole
  matrices, against the bytes of the state's factors and diagonals
  (:func:`kfac_tutorial.curvature.distributed.communication_report`; checked against a
  real fit's ``memory_bytes()`` on the small model).
* ``time``: ``KFAC.fit`` (mc) of a small BERT (2 layers, hidden 128) on ``--examples``
  random sequences: one process with 1 and with 2 torch threads, and two gloo processes
  (1 thread each) on half the batches each, timed from a barrier before the fit to the
  end of the fit (communication included, process start excluded); medians of
  ``--rounds``. The machine's name, core count and load average are recorded: a shared,
  loaded machine makes these numbers noisy.
* ``gap``: the largest difference between the 2-process state and the one-process fit
  on all batches (``exact`` Fisher, float32), relative to the largest entry of each
  factor kind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.measure import timed


class ClsHead(nn.Module):
    """``BertModel`` + linear head on the CLS token; takes the tokenizer's dict."""

    def __init__(self, config, classes: int):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, classes)

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.head(self.bert(**inputs).last_hidden_state[:, 0])


CONFIGS = {  # BertConfig overrides (vocabulary 30522 for all)
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512, vocab_size=2000),
}


def build(name: str, classes: int = 20, seed: int = 0) -> nn.Module:
    from transformers import BertConfig

    torch.manual_seed(seed)
    kw = {"vocab_size": 30522, **CONFIGS[name]}
    return ClsHead(BertConfig(attn_implementation="eager", **kw), classes).eval()


def data(examples: int, batch_size: int = 16, length: int = 24, vocab: int = 2000, classes: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, examples, batch_size):
        n = min(batch_size, examples - start)
        ids = torch.randint(5, vocab, (n, length), generator=g)
        mask = torch.ones(n, length, dtype=torch.long)
        mask[: n // 2, length * 3 // 4 :] = 0
        out.append(({"input_ids": ids, "attention_mask": mask}, torch.randint(0, classes, (n,), generator=g)))
    return out


def bytes_section() -> dict:
    import kfac_tutorial as kt
    from kfac_tutorial.curvature.distributed import communication_report

    out = {}
    for name in ("minilm", "bert-base"):
        model = build(name)
        row = {"parameters": sum(p.numel() for p in model.parameters())}
        row["kfac"] = communication_report(model, kronecker=True)
        row["ewc"] = communication_report(model, kronecker=False)
        row["kfac"]["packed_over_full"] = row["kfac"]["packed_bytes"] / row["kfac"]["full_bytes"]
        row["kfac"]["packed_over_factor_bytes"] = row["kfac"]["packed_bytes"] / row["kfac"]["factor_bytes"]
        out[name] = row
        del model
    # check: the report's factor bytes are a real fit's memory_bytes() (small model)
    model = build("small")
    state = kt.KFAC.fit(model, data(8), fisher="mc", progress=False)
    report = communication_report(model)
    out["check_small_model"] = {"report_factor_bytes": report["factor_bytes"], "state_memory_bytes": state.memory_bytes()}
    return out


def _fit_seconds(model, batches, fisher="mc") -> tuple[float, object]:
    import kfac_tutorial as kt

    return timed(lambda: kt.KFAC.fit(model, batches, fisher=fisher, progress=False))


def _worker(rank: int, init: str, examples: int, rounds: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        model, batches = build("small"), data(examples)
        mine = batches[rank::2]
        _fit_seconds(model, mine)  # warm-up: probes, first-call costs
        times = []
        for _ in range(rounds):
            dist.barrier()
            seconds, _ = _fit_seconds(model, mine)
            times.append(seconds)
        _, exact = _fit_seconds(model, mine, fisher="exact")
        if rank == 0:
            exact.save(Path(out) / "exact_2proc.safetensors")
            (Path(out) / "times.json").write_text(json.dumps(times))
    finally:
        dist.destroy_process_group()


def _gap(state, oracle) -> dict:
    gaps = {}
    groups = {"diagonal": [(state.diagonal[n], d) for n, d in oracle.diagonal.items()]}
    for m, f in oracle.factors.items():
        groups.setdefault(f"{f.kind} A", []).append((state.factors[m].A, f.A))
        groups.setdefault(f"{f.kind} G", []).append((state.factors[m].G, f.G))
    for key, pairs in groups.items():
        scale = max(float(b.abs().max()) for _, b in pairs)
        gaps[key] = max(float((a - b).abs().max()) for a, b in pairs) / scale
    return gaps


def time_section(examples: int, rounds: int) -> dict:
    import torch.multiprocessing as mp

    import kfac_tutorial as kt

    model, batches = build("small"), data(examples)
    out = {
        "model": "BERT 2 layers, hidden 128, vocabulary 2000, CLS head over 20 classes (random weights)",
        "examples": examples,
        "batch_size": 16,
        "tokens": 24,
        "fisher": "mc",
        "rounds": rounds,
    }
    for threads in (1, 2):
        torch.set_num_threads(threads)
        _fit_seconds(model, batches)  # warm-up
        out[f"one_process_{threads}_threads_seconds"] = statistics.median(_fit_seconds(model, batches)[0] for _ in range(rounds))
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(str(Path(tmp) / "init"), examples, rounds, tmp), nprocs=2, join=True)
        times = json.loads((Path(tmp) / "times.json").read_text())
        out["two_processes_1_thread_seconds"] = statistics.median(times)
        distributed = kt.KFAC.load(Path(tmp) / "exact_2proc.safetensors", model)
    _, oracle = _fit_seconds(model, batches, fisher="exact")
    out["gap_exact_float32"] = _gap(distributed, oracle)
    return out


def machine() -> dict:
    return {
        "machine": platform.node(),
        "processor": platform.processor() or _cpu_name(),
        "cores": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed")
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/distributed_cpu.json")
    args = p.parse_args(argv)
    result = {"machine_before": machine(), "bytes": bytes_section(), "time": time_section(args.examples, args.rounds)}
    result["machine_after"] = machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
