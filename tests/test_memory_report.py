"""``memory_report``: bytes of a curvature state per layer, checked by hand on tiny models.

Claims checked: on a model with an Embedding, a LayerNorm, a Linear with bias, a Linear
without bias, a Conv1d and a frozen layer, each row's curvature bytes equal the sizes
computed by hand (``A`` ``(d_in+1)²``/``d_in²``/``(c_in k+1)²``, ``G`` ``d_out²``, embedding
``A`` a ``V`` vector, LayerNorm and EWC one number per parameter, frozen nothing); the
column sums to ``state.memory_bytes()``; parameter bytes follow the dtype; a per-task
sum adds its terms; modules named in ``diagonal_modules`` are diagonal; factors held as
low-rank roots are counted as stored. For every layer type of ``tests/cases.py``: its
row is one Kronecker block whose factor sides multiply to the layer's parameter count,
and EWC and low-rank reports add up to ``memory_bytes()``.
"""

import pytest
import torch
from torch import nn

import kfac_tutorial as kt
from kfac_tutorial.curvature import memory_report

try:
    from .cases import LAYER_CASES, kronecker_cases
except ImportError:  # pragma: no cover
    from cases import LAYER_CASES, kronecker_cases

V, D, H, C, K = 13, 4, 6, 3, 3  # vocabulary, embedding dim, channels, classes, kernel


class Tiny(nn.Module):
    """ids (B, T) → Embedding(V, D) → LayerNorm(D) → Conv1d(D, H, K) → max over T
    → Linear(H, H) + bias → tanh → Linear(H, C) without bias; ``frozen`` is never used
    in the loss and has requires_grad False."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.norm = nn.LayerNorm(D)
        self.conv = nn.Conv1d(D, H, K, padding=K // 2)
        self.hidden = nn.Linear(H, H)
        self.head = nn.Linear(H, C, bias=False)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, batch):
        x = self.norm(self.emb(batch["input_ids"])).transpose(1, 2)
        x = torch.relu(self.conv(x)).amax(-1)
        return self.head(torch.tanh(self.hidden(x)))


def _tiny(dtype=torch.float32):
    torch.manual_seed(0)
    model = Tiny().to(dtype).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (5, 7), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return model, [(batch, torch.randint(0, C, (5,), generator=g))]


def _rows(report):
    return report.set_index("module")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kfac_bytes_match_hand_computed_sizes(dtype):
    model, batches = _tiny(dtype)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", weight_sharing="expand", progress=False)
    b = torch.tensor([], dtype=dtype).element_size()
    rows = _rows(memory_report(kfac, model))
    expected = {  # module: (storage, curvature numbers, parameters)
        "emb": ("kronecker", V + D * D, V * D),
        "norm": ("diagonal", 2 * D, 2 * D),
        "conv": ("kronecker", (D * K + 1) ** 2 + H * H, H * D * K + H),
        "hidden": ("kronecker", (H + 1) ** 2 + H * H, H * H + H),
        "head": ("kronecker", H * H + C * C, C * H),
        "frozen": ("none", 0, 2 * 2 + 2),
    }
    assert list(rows.index) == list(expected)
    for module, (storage, numbers, count) in expected.items():
        row = rows.loc[module]
        assert row["storage"] == storage, module
        assert row["curvature_bytes"] == numbers * b, module
        assert row["parameters"] == count, module
        assert row["parameter_bytes"] == count * b, module
    assert rows.loc["emb", "factors"] == f"A diag({V}), G {D}×{D}"
    assert rows.loc["hidden", "factors"] == f"A {H + 1}×{H + 1}, G {H}×{H}"
    assert rows.loc["norm", "factors"] == f"diag {D} + diag {D}"
    assert rows.loc["hidden", "layer_type"] == "Linear" and rows.loc["emb", "layer_type"] == "Embedding"
    assert rows.loc["hidden", "ratio"] == pytest.approx(((H + 1) ** 2 + H * H) / (H * H + H))
    assert rows["curvature_bytes"].sum() == kfac.memory_bytes()


def test_ewc_holds_one_number_per_trainable_parameter():
    model, batches = _tiny()
    ewc = kt.EWC.fit(model, batches, fisher="exact", progress=False)
    report = _rows(memory_report(ewc, model))
    trainable = report.drop(index="frozen")
    assert (trainable["storage"] == "diagonal").all()
    assert (trainable["curvature_bytes"] == trainable["parameter_bytes"]).all()
    assert report.loc["frozen", "curvature_bytes"] == 0
    assert report["curvature_bytes"].sum() == ewc.memory_bytes()


def test_diagonal_modules_and_per_task_sums():
    model, batches = _tiny()
    kfac = kt.KFAC.fit(model, batches, fisher="exact", diagonal_modules=("head",), progress=False)
    rows = _rows(memory_report(kfac, model))
    assert rows.loc["head", "storage"] == "diagonal"
    assert rows.loc["head", "curvature_bytes"] == C * H * 4
    both = kfac + kt.EWC.fit(model, batches, fisher="exact", progress=False)
    summed = _rows(memory_report(both, model))
    assert summed["curvature_bytes"].sum() == both.memory_bytes()
    assert summed.loc["hidden", "curvature_bytes"] == ((H + 1) ** 2 + H * H + H * H + H) * 4
    assert summed.loc["hidden", "storage"] == "kronecker+diagonal"


def test_low_rank_roots_are_counted_as_stored():
    if not hasattr(kt.KFAC, "low_rank"):
        pytest.skip("this version of KFAC has no low-rank storage")
    model, batches = _tiny()
    kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False).low_rank(0.0)
    report = memory_report(kfac, model)
    assert report["curvature_bytes"].sum() == kfac.memory_bytes()
    assert "(unattributed)" not in set(report["module"])


# ------------------------------------------------------------------ every layer type of tests/cases.py


@pytest.mark.parametrize("case", kronecker_cases(), ids=repr)
def test_a_layer_case_is_one_kronecker_row_whose_factors_cover_its_parameters(case):
    """``G ⊗ A`` (``diag(A) ⊗ G`` for a vector ``A``) is one block over exactly the layer's
    parameters: the factors' side lengths multiply to the parameter count, and the row
    holds ``a² + g²`` numbers (``a + g²`` for a vector ``A``)."""
    model, batches = case.build(False, 0)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    rows = _rows(memory_report(kfac, model))
    layer, f = model.get_submodule("layer"), kfac.factors["layer"]
    count = sum(p.numel() for p in layer.parameters(recurse=False))  # a child (MHA out_proj) has its own row
    a, g = f.A.shape[0], f.G.shape[0]
    assert a * g == count
    hand = {2: (a * a + g * g, f"A {a}×{a}, G {g}×{g}"), 1: (a + g * g, f"A diag({a}), G {g}×{g}")}
    numbers, factors = hand[f.A.dim()]
    row = rows.loc["layer"]
    assert row["storage"] == "kronecker"
    assert row["layer_type"] == type(layer).__name__
    assert row["factors"] == factors
    assert row["curvature_bytes"] == numbers * f.A.element_size()
    assert row["parameters"] == count and row["parameter_bytes"] == count * 8
    assert rows["curvature_bytes"].sum() == kfac.memory_bytes()


@pytest.mark.parametrize("case", LAYER_CASES, ids=repr)
def test_ewc_and_low_rank_reports_add_up_for_every_layer_case(case):
    model, batches = case.build(False, 0)
    ewc = kt.EWC.fit(model, batches, fisher="exact", progress=False)
    rows = _rows(memory_report(ewc, model))
    assert (rows["storage"] == "diagonal").all()
    assert (rows["curvature_bytes"] == rows["parameter_bytes"]).all()
    assert rows["curvature_bytes"].sum() == ewc.memory_bytes()
    low = kt.KFAC.fit(model, batches, fisher="exact", progress=False).low_rank(0.0, max_fraction=1.0)
    report = memory_report(low, model)
    assert report["curvature_bytes"].sum() == low.memory_bytes()
    assert "(unattributed)" not in set(report["module"])
