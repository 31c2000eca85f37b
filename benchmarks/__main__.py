"""Benchmarks of the curvature core: ``python -m benchmarks [--quick] [--out PATH]``.

Sections (each printed as a table and written to one JSON file, plus a PNG):

1. ``estimation``: curvature estimation time and peak memory, ours vs peer libraries,
   on the CNN linker, the MiniLM BERT linker and a BERT-base-sized random model, for
   every trainable parameter (``all``) and for Linear layers only (``linear``); the
   ratio to one plain forward+backward over the same data (MC, 1 sample).
2. ``step``: a training step with the KFAC / EWC penalty against a plain step
   (MiniLM linker): the default fit (``storage="auto"``: exact roots where a factor's
   rank is at most half its side), the full factors (``storage="dense"``) and
   ``low_rank`` of those, with the penalty error against the full factors.
3. ``state``: curvature-state bytes against parameter bytes, per layer kind, for the
   default fit (``auto``) and the full factors (``full``, ``storage="dense"``).
4. ``growth``: cost against sequence length, vocabulary size and number of tasks.

Peers are imported only if installed (``bash benchmarks/setup_peers.sh``); a peer that
is missing or raises is recorded with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import kfac_tutorial as kt
from kfac_tutorial.experiments.cost import penalised_step, time_penalty_steps

from kfac_tutorial.curvature import memory_report

from .measure import measure, timed
from .peers import RUNNERS, only_linear, versions
from .workloads import workload

HERE = Path(__file__).resolve().parent

# Every section takes the run's device (``--device``) as the keyword argument ``device``
# and passes it on to ``workload(..., device=)`` and ``measure(..., device=)``: there is
# no module-level device that ``main`` would have to set.


def machine(device: torch.device) -> str:
    """The CPU (and, on CUDA, the GPU) the run measures on, in words."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{os.cpu_count()} CPU cores ({cpu}), torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        text = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); " + text
    return text


# -- 1. estimation ----------------------------------------------------------------------
def estimation(names, repeats, workload_kw, *, device: torch.device, skip=()):
    rows = []
    for name in names:
        w = workload(name, device=device, **workload_kw.get(name, {}))
        for variant in ("all", "linear"):
            with only_linear(w.model, variant == "linear"):
                params = sum(p.numel() for p in w.model.parameters() if p.requires_grad)
                for method, runner in RUNNERS.items():
                    if variant == "linear" and method.startswith(
                        ("nngeometry diag", "laplace diag", "backpack Diag", "ours EWC")
                    ):
                        continue
                    if method in skip:
                        continue
                    try:
                        fn = runner(w, variant)
                        res = measure(fn, repeats, device=device)
                    except Exception as err:  # import or set-up failure
                        res = {
                            "ok": False,
                            "error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}",
                        }
                    row = {
                        "workload": w.name,
                        "variant": variant,
                        "method": method,
                        "trainable_parameters": params,
                        "examples": w.num_examples,
                        **res,
                    }
                    rows.append(row)
                    print(_fmt_est(row), flush=True)
        base = {r["variant"]: r for r in rows if r["workload"] == w.name and r["method"] == "plain fwd+bwd" and r["ok"]}
        for r in rows:
            if r["workload"] == w.name and r["ok"] and r["variant"] in base:
                r["over_plain_fwd_bwd"] = r["median_s"] / base[r["variant"]]["median_s"]
                r["over_plain_fwd_bwd_min"] = r["min_s"] / base[r["variant"]]["min_s"]
        w.notes["name"] = w.name
        rows.append({"workload": w.name, "method": "_notes", **w.notes})
    return rows


def _fmt_est(r):
    if r["ok"]:
        return f"{r['workload']:<14} {r['variant']:<6} {r['method']:<22} median {r['median_s']:7.2f}s  min {r['min_s']:7.2f}s  peak +{r['peak_mib']:7.0f} MiB"
    return f"{r['workload']:<14} {r['variant']:<6} {r['method']:<22} FAILED {r['error'][:110]}"


# -- 2. training step -------------------------------------------------------------------
def training_step(repeats, examples, name="minilm", *, device: torch.device):
    w = workload(name, device=device, examples=examples, **({"batch_size": 16} if name == "bert-base" else {}))
    model = w.model
    fit_kw = dict(fisher="mc", weight_sharing=w.weight_sharing, diagonal_modules=w.kfac_diagonal, progress=False)
    auto = kt.KFAC.fit(model, w.batches, **fit_kw)  # the default: storage="auto"
    kfac = kt.KFAC.fit(model, w.batches, storage="dense", **fit_kw)  # the full factors
    ewc = kt.EWC.fit(model, w.batches, fisher="mc", progress=False)
    t_low, low0 = timed(lambda: kfac.low_rank(0.0), device)
    low1 = kfac.low_rank(0.01)
    variants = {
        "plain": None,
        "KFAC": auto,
        "KFAC dense (full factors)": kfac,
        "KFAC low-rank tol=0": low0,
        "KFAC low-rank tol=0.01": low1,
        "EWC": ewc,
    }
    compared = ("KFAC", "KFAC low-rank tol=0", "KFAC low-rank tol=0.01")  # penalty error against the full factors
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    x, _ = w.batches[0]
    g = torch.Generator().manual_seed(1)
    # move away from the anchor first (random targets: a stand-in for a new task)
    for _ in range(5):
        y = torch.randint(0, w.num_classes, (len(w.batches[0][1]),), generator=g).to(w.device)
        penalised_step(model, opt, x, y)
    y = w.batches[0][1]
    errors = {}
    with torch.no_grad():
        ref = float(kfac.penalty(model))
        for k in compared:
            errors[k] = abs(float(variants[k].penalty(model)) - ref) / ref
        # random step, same norm per parameter as the training step taken
        saved = {n: p.detach().clone() for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            if p.requires_grad:
                d = saved[n] - kfac.anchor[n]
                p.copy_(kfac.anchor[n] + d.norm() * torch.randn(p.shape, generator=g).to(p.device) / p.numel() ** 0.5)
        ref_r = float(kfac.penalty(model))
        errors_r = {k: abs(float(variants[k].penalty(model)) - ref_r) / ref_r for k in errors}
        for n, p in model.named_parameters():
            p.copy_(saved[n])
    step_times = time_penalty_steps(model, x, y, variants, repeats)  # interleaved, SGD with lr 0
    model.eval()
    rows = []
    for k, t in step_times.items():
        st = variants[k]
        row = {
            "variant": k,
            "median_s": t["median_s"],
            "min_s": t["min_s"],
            "over_plain": t["over_plain"],
            "state_bytes": st.memory_bytes() if st is not None else 0,
            "penalty_rel_error_after_training_steps": errors.get(k),
            "penalty_rel_error_random_step": errors_r.get(k),
        }
        rows.append(row)
        print(
            f"step {k:<26} median {row['median_s']:.3f}s ({row['over_plain']:.2f}x)  min {row['min_s']:.3f}s"
            f"  state {row['state_bytes'] / 2**20:.1f} MiB  err {row['penalty_rel_error_after_training_steps']}",
            flush=True,
        )
    pbytes = sum(p.numel() * p.element_size() for p in params)
    for row in rows:
        row["state_over_parameters"] = row["state_bytes"] / pbytes
    return {
        "workload": w.name,
        "batch_size": len(y),
        "fisher_examples": w.num_examples,
        "low_rank_seconds": t_low,
        "parameter_bytes": pbytes,
        "rows": rows,
    }


# -- 3. state bytes ---------------------------------------------------------------------
def state_bytes(kfac, model, tmpdir: Path, tag: str):
    """State bytes against parameter bytes, overall and per layer kind, from
    :func:`kfac_tutorial.curvature.memory_report` (the package's one memory accounting)."""
    report = memory_report(kfac, model)
    pbytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    modules = dict(model.named_modules())

    def kind(row) -> str:  # the rule's kind (``linear``, ``embedding``, ...), as chapter 11 reads it
        f = kfac.factors.get(row["module"])
        if f is None:
            return "diagonal (LayerNorm, ...)"
        w = modules[row["module"]].weight
        return "FFN Linear" if f.kind == "linear" and max(w.shape) > 2 * min(w.shape) else f.kind

    by_kind = {}
    for k, group in report[report["curvature_bytes"] > 0].groupby(report.apply(kind, axis=1)):
        by_kind[k] = {"parameter_bytes": int(group["parameter_bytes"].sum()), "state_bytes": int(group["curvature_bytes"].sum())}
        by_kind[k]["ratio"] = by_kind[k]["state_bytes"] / max(by_kind[k]["parameter_bytes"], 1)
    path = tmpdir / f"{tag}.safetensors"
    kfac.save(path)
    anchor = kfac.anchor_bytes()
    return {
        "parameter_bytes": pbytes,
        "state_bytes": kfac.memory_bytes(),
        "state_over_parameters": kfac.memory_bytes() / pbytes,
        "file_bytes": path.stat().st_size,
        "file_curvature_over_parameters": (path.stat().st_size - anchor) / pbytes,
        "by_kind": by_kind,
    }


def state_section(
    tmpdir, quick, names=("cnn", "minilm", "bert-base"), low_rank_names=("cnn", "minilm", "bert-base"), *, device: torch.device
):
    out = {}
    kws = {"cnn": {}, "minilm": {}, "bert-base": {"examples": 16 if quick else 32, "batch_size": 16}}
    for name in names:
        kw = kws[name]
        w = workload(name, device=device, **kw)
        fit_kw = dict(
            fisher="mc",
            weight_sharing=w.weight_sharing,
            diagonal_modules=tuple(m for m in w.kfac_diagonal if m in dict(w.model.named_modules())),
            progress=False,
        )
        auto = kt.KFAC.fit(w.model, w.batches, **fit_kw)  # the default: storage="auto"
        kfac = kt.KFAC.fit(w.model, w.batches, storage="dense", **fit_kw)  # the full factors
        entry = {
            "auto": state_bytes(auto, w.model, tmpdir, f"{name}-auto"),
            "full": state_bytes(kfac, w.model, tmpdir, f"{name}-full"),
            "packed": state_bytes(kfac.packed(), w.model, tmpdir, f"{name}-packed"),  # exact upper triangles
            "ewc_state_over_parameters": 1.0,
            "fisher_examples": w.num_examples,
            "notes": w.notes,
        }
        for tol in (0.0, 0.01) if name in low_rank_names else ():
            entry[f"low_rank_tol={tol}"] = state_bytes(kfac.low_rank(tol), w.model, tmpdir, f"{name}-lr{tol}")
        out[w.name] = entry
        for k in [k for k in ("auto", "full", "packed", "low_rank_tol=0.0", "low_rank_tol=0.01") if k in entry]:
            e = entry[k]
            print(
                f"state {w.name:<14} {k:<18} in memory {e['state_over_parameters']:.2f}x params, file {e['file_curvature_over_parameters']:.2f}x  "
                + "  ".join(f"{kk}: {vv['ratio']:.2f}x" for kk, vv in e["by_kind"].items()),
                flush=True,
            )
    return out


# -- 4. growth --------------------------------------------------------------------------
def _penalty_time(state, model, repeats, device: torch.device):
    def run():
        model.zero_grad(set_to_none=True)
        state.penalty(model).backward()

    return measure(run, repeats, device=device)


def growth(repeats, quick, *, device: torch.device):
    from .peers import ours_kfac, plain_fwd_bwd

    out = {"sequence_length": [], "vocabulary": [], "tasks": []}
    layers = 2
    lengths = (16, 32, 64) if quick else (16, 32, 64, 128)
    for T in lengths:
        w = workload("bert-base", device=device, layers=layers, examples=32, batch_size=16, length=T)
        fit = measure(ours_kfac(w, "all"), repeats, device=device)
        base = measure(plain_fwd_bwd(w, "all"), repeats, device=device)
        kfac = ours_kfac(w, "all")()
        pen = _penalty_time(kfac, w.model, repeats, device)
        row = {
            "length": T,
            "fit_s": fit["median_s"],
            "fit_peak_mib": fit["peak_mib"],
            "plain_fwd_bwd_s": base["median_s"],
            "fit_over_plain": fit["median_s"] / base["median_s"],
            "state_bytes": kfac.memory_bytes(),
            "penalty_fwd_bwd_s": pen["median_s"],
        }
        out["sequence_length"].append(row)
        print("growth length", row, flush=True)
    vocabs = (5000, 30522, 120000) if quick else (5000, 30522, 60000, 120000)
    for V in vocabs:
        w = workload("bert-base", device=device, layers=layers, examples=32, batch_size=16, length=16, vocab=V)
        fit = measure(ours_kfac(w, "all"), repeats, device=device)
        base = measure(plain_fwd_bwd(w, "all"), repeats, device=device)
        kfac = ours_kfac(w, "all")()
        pen = _penalty_time(kfac, w.model, repeats, device)
        pbytes = sum(p.numel() * p.element_size() for p in w.model.parameters())
        row = {
            "vocab": V,
            "fit_s": fit["median_s"],
            "plain_fwd_bwd_s": base["median_s"],
            "fit_over_plain": fit["median_s"] / base["median_s"],
            "state_bytes": kfac.memory_bytes(),
            "parameter_bytes": pbytes,
            "state_over_parameters": kfac.memory_bytes() / pbytes,
            "embedding_state_bytes": sum(
                f.A.numel() * f.A.element_size() + f.G.numel() * f.G.element_size()
                for f in kfac.factors.values()
                if f.kind == "embedding"
            ),
            "penalty_fwd_bwd_s": pen["median_s"],
        }
        out["vocabulary"].append(row)
        print("growth vocab", row, flush=True)
    w = workload("minilm", device=device, examples=64)
    kfac = ours_kfac(w, "all")()
    g = torch.Generator().manual_seed(0)
    for K in (1, 2, 4) if quick else (1, 2, 4, 8):
        terms = []
        for _ in range(K):  # K tasks: same factors, anchors moved a little (timing and bytes only)
            anchor = {n: a + 1e-3 * torch.randn(a.shape, generator=g).to(a.device) for n, a in kfac.anchor.items()}
            terms.append(kt.KFAC(anchor, kfac.diagonal, kfac.factors, info=kfac.info))
        total = sum(terms)
        merged = terms[0]
        for t in terms[1:]:
            merged = merged.merge(t, gamma=1.0)
        per_task = _penalty_time(total, w.model, repeats, device)
        online = _penalty_time(merged, w.model, repeats, device)
        row = {
            "tasks": K,
            "sum_penalty_s": per_task["median_s"],
            "online_penalty_s": online["median_s"],
            "sum_state_bytes": K * kfac.memory_bytes(),
            "online_state_bytes": merged.memory_bytes(),
            "sum_anchor_bytes": total.anchor_bytes(),
            "online_anchor_bytes": merged.anchor_bytes(),
        }
        out["tasks"].append(row)
        print("growth tasks", row, flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description="Benchmarks of kfac_tutorial against peer libraries")
    parser.add_argument("--out", default=str(HERE / "results" / "benchmarks.json"))
    parser.add_argument("--quick", action="store_true", help="fewer repeats and examples (a smoke run)")
    parser.add_argument("--sections", default="estimation,step,state,growth")
    parser.add_argument("--workloads", default="cnn,minilm,bert-base")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--skip-methods",
        default="",
        help="comma-separated methods to leave out of the estimation section (e.g. 'laplace diag', "
        "which needs >20 GB resident on the BERT workloads)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (models and data moved there)")
    parser.add_argument("--step-workloads", default="minilm", help="workloads of the training-step section")
    parser.add_argument(
        "--step-examples",
        type=int,
        default=None,
        help="Fisher examples of the step section (default 256, quick 64; the linkers have ~600)",
    )
    parser.add_argument("--state-workloads", default="cnn,minilm,bert-base", help="workloads of the state section")
    parser.add_argument(
        "--low-rank-workloads",
        default="cnn,minilm,bert-base",
        help="state-section workloads that also get low_rank(0) and low_rank(0.01) (eigh: slow for BERT-base)",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    sections = args.sections.split(",")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    device = torch.device(args.device)
    result.update(
        {
            "machine": machine(device),
            "versions": versions(),
            "repeats": repeats,
            "quick": args.quick,
            "date": time.strftime("%Y-%m-%d"),
        }
    )
    torch.manual_seed(0)
    wkw = {
        "minilm": {"examples": 64 if args.quick else 128},
        "cnn": {"examples": 64 if args.quick else 256},
        "bert-base": {"examples": 16 if args.quick else 32, "batch_size": 16},
    }
    if "estimation" in sections:
        result["estimation"] = estimation(
            args.workloads.split(","), repeats, wkw, device=device, skip=tuple(filter(None, args.skip_methods.split(",")))
        )
        out_path.write_text(json.dumps(result, indent=1))
    if "step" in sections:
        n_fisher = args.step_examples or (64 if args.quick else 256)
        steps = {
            name: training_step(max(repeats, 5) if not args.quick else 3, n_fisher, name, device=device)
            for name in args.step_workloads.split(",")
        }
        if "minilm" in steps:
            result["step"] = steps.pop("minilm")
        for name, entry in steps.items():
            result[f"step_{name}"] = entry
        out_path.write_text(json.dumps(result, indent=1))
    if "state" in sections:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            result["state"] = {
                **result.get("state", {}),
                **state_section(
                    Path(tmp), args.quick, args.state_workloads.split(","), args.low_rank_workloads.split(","), device=device
                ),
            }
        out_path.write_text(json.dumps(result, indent=1))
    if "growth" in sections:
        result["growth"] = growth(repeats, args.quick, device=device)
        out_path.write_text(json.dumps(result, indent=1))
    from .plot import plot_benchmarks

    png = out_path.with_suffix(".png")
    plot_benchmarks(result, png)
    print(f"wrote {out_path} and {png}")


if __name__ == "__main__":
    main()
