"""Curvature estimators to compare: ours (kfac_tutorial) and peer libraries.

Each ``runner(workload, variant)`` returns a zero-argument function that estimates the
curvature once over ``workload.batches`` (MC Fisher, 1 sampled label per example) and
returns the result. Peers get the tensor-input wrapper (``workload.stacked()``), with the
same submodules. ``variant``:

* ``"all"``: every trainable parameter the library can handle (ours: Kronecker factors
  for Linear/Conv1d/Embedding layers, a diagonal for LayerNorm and the modules the
  experiments hold diagonally);
* ``"linear"``: only Linear (and Conv) weights trainable, everything else frozen: the
  like-with-like comparison with peers whose KFAC covers Linear layers only.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md

import torch
import torch.nn.functional as F
from torch import nn

import kfac_tutorial as kt

PEERS = {  # library -> PyPI distribution
    "curvlinops": "curvlinops-for-pytorch",
    "nngeometry": "nngeometry",
    "backpack": "backpack-for-pytorch",
    "laplace": "laplace-torch",
}


def versions() -> dict:
    out = {"torch": torch.__version__}
    for lib, dist in {**PEERS, "transformers": "transformers"}.items():
        try:
            out[lib] = md.version(dist)
        except md.PackageNotFoundError:
            out[lib] = None
    return out


@contextlib.contextmanager
def only_linear(model: nn.Module, enabled: bool):
    """Freeze every parameter outside Linear/Conv layers (restored afterwards)."""
    saved = {p: p.requires_grad for p in model.parameters()}
    if enabled:
        keep = set()
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                keep |= {id(p) for p in m.parameters(recurse=False)}
        for p in model.parameters():
            p.requires_grad_(p.requires_grad and id(p) in keep)
    try:
        yield
    finally:
        for p, r in saved.items():
            p.requires_grad_(r)


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


# -- ours -------------------------------------------------------------------------------
def ours_kfac(w, variant):
    diag = w.kfac_diagonal if variant == "all" else ()
    return lambda: kt.KFAC.fit(
        w.model,
        w.batches,
        fisher="mc",
        mc_samples=1,
        weight_sharing=w.weight_sharing,
        diagonal_modules=tuple(m for m in diag if m in dict(w.model.named_modules())),
        progress=False,
    )


def ours_ewc(w, variant):
    return lambda: kt.EWC.fit(w.model, w.batches, fisher="mc", mc_samples=1, progress=False)


def plain_fwd_bwd(w, variant):
    """One forward and backward per batch with labels sampled from the model (the work
    an MC Fisher with one sample cannot avoid): the package's own definition."""
    from kfac_tutorial.experiments import plain_fwd_bwd as package_plain_fwd_bwd

    return package_plain_fwd_bwd(w.model, w.batches)


# -- peers ------------------------------------------------------------------------------
def curvlinops_kfac(w, variant):
    from curvlinops import KFACLinearOperator

    model = w.stacked()
    data = w.tensor_batches()
    approx = "reduce" if w.weight_sharing == "reduce" else "expand"

    def run():
        op = KFACLinearOperator(
            model,
            nn.CrossEntropyLoss(),
            _trainable(model),
            data,
            fisher_type="mc",
            mc_samples=1,
            kfac_approx=approx,
            check_deterministic=False,
            progressbar=False,
        )
        op.compute_kronecker_factors()
        return op

    return run


def _nngeometry(representation):
    def runner(w, variant):
        from nngeometry import object as nobj
        from nngeometry.layercollection import LayerCollection
        from nngeometry.metrics import FIM

        model = w.stacked()
        data = w.tensor_batches()
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.cat([x for x, _ in _pad(data)]), torch.cat([y for _, y in data])),
            batch_size=len(data[0][1]),
        )

        def run():
            lc = LayerCollection.from_model(model)
            return FIM(
                model=model,
                loader=loader,
                representation=getattr(nobj, representation),
                n_output=w.num_classes,
                variant="classif_logits",
                device=str(w.device),
                layer_collection=lc,
            )

        return run

    return runner


def _pad(data):
    """Pad stacked batches to a common length (a DataLoader needs one tensor)."""
    T = max(x.shape[-1] for x, _ in data)
    return [(F.pad(x, (0, T - x.shape[-1])), y) for x, y in data]


def _backpack(extension):
    def runner(w, variant):
        from backpack import backpack, extend
        from backpack import extensions as E

        model = extend(w.stacked(), use_converter=True)
        lossf = extend(nn.CrossEntropyLoss(reduction="mean"))
        data = w.tensor_batches()

        def run():
            for x, y in data:
                loss = lossf(model(x), y)
                with backpack(getattr(E, extension)()):
                    loss.backward()
            return [getattr(p, extension.lower().replace("diagggnmc", "diag_ggn_mc"), None) for p in model.parameters()]

        return run

    return runner


def _laplace(structure):
    def runner(w, variant):
        from laplace import Laplace
        from laplace.curvature import CurvlinopsGGN

        model = w.stacked()
        data = _pad(w.tensor_batches())
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])),
            batch_size=len(data[0][1]),
        )

        def run():
            la = Laplace(
                model,
                "classification",
                subset_of_weights="all",
                hessian_structure=structure,
                backend=CurvlinopsGGN,
                backend_kwargs={"stochastic": True},
            )
            la.fit(loader, progress_bar=False)
            return la

        return run

    return runner


RUNNERS = {
    "ours KFAC": ours_kfac,
    "ours EWC (diag)": ours_ewc,
    "plain fwd+bwd": plain_fwd_bwd,
    "curvlinops KFAC": curvlinops_kfac,
    "nngeometry KFAC": _nngeometry("PMatKFAC"),
    "nngeometry diag": _nngeometry("PMatDiag"),
    "backpack KFAC": _backpack("KFAC"),
    "backpack DiagGGN-MC": _backpack("DiagGGNMC"),
    "laplace Kron": _laplace("kron"),
    "laplace diag": _laplace("diag"),
}
