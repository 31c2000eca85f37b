"""Where the memory of a curvature state goes: one row per layer, against its parameters.

>>> from kfac_tutorial.curvature import memory_report
>>> report = memory_report(kfac, model)                          # doctest: +SKIP
>>> report.groupby("layer_type")[["parameter_bytes", "curvature_bytes"]].sum()  # doctest: +SKIP

The curvature bytes are read from the tensors the state actually holds (the same tensors
``state.memory_bytes()`` counts), matched to their layer by identity, so the report stays
true whatever the storage of a factor is (dense, a low-rank root, a diagonal vector).
Sizes of the usual KFAC storage, for orientation (``b`` bytes per number):

* ``Linear(d_in, d_out)``: ``A`` is ``(d_in + 1)²`` with a trainable bias (``d_in²``
  without), ``G`` is ``d_out²``; the parameters are ``d_out (d_in + 1)``.
* ``Conv1d(c_in, c_out, k)``: ``A`` is ``(c_in k + 1)²``, ``G`` is ``c_out²``.
* ``Embedding(V, D)``: ``A`` is the ``V`` token frequencies (a vector), ``G`` is ``D²``.
* A factor held packed (``KFAC.packed()``): ``d(d+1)/2`` numbers instead of ``d²``,
  described as ``A packed triu (d)``.
* Anything held diagonally (LayerNorm, EWC's every parameter): one number per parameter.
"""

from __future__ import annotations

from collections import defaultdict

from typing import TYPE_CHECKING

from torch import Tensor, nn

from .storage import triu_side

if TYPE_CHECKING:  # pandas is imported when a report is made, not with the package
    import pandas as pd

__all__ = ["memory_report"]

COLUMNS = ["module", "layer_type", "storage", "parameters", "parameter_bytes", "curvature_bytes", "ratio", "factors"]


def _owner(param_name: str) -> str:
    """``encoder.proj.weight`` → ``encoder.proj`` (the module holding the parameter)."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _shape(t: Tensor) -> str:
    return "×".join(str(s) for s in t.shape) if t.dim() else "scalar"


def _describe_factor(f, field: str, t: Tensor) -> str:
    """``A 385×385``, ``A diag(30522)``, ``G root 384×12``, ... (a factor type with its own
    layout describes itself: ``describe_storage(field)``)."""
    own = getattr(f, "describe_storage", None)
    if own is not None:
        return own(field)
    if getattr(f, f"{field}_root", False):
        return f"{field} root {_shape(t)}"
    if getattr(f, f"{field}_packed", False):  # upper triangle of a d × d factor
        return f"{field} packed triu ({triu_side(t.numel())})"
    if t.dim() == 1:
        return f"{field} diag({t.numel()})"
    return f"{field} {_shape(t)}"


def _terms(state) -> list:
    """The single states of ``state`` (a ``ConsolidationSum`` holds several)."""
    return list(state.terms) if hasattr(state, "terms") else [state]


def memory_report(state, model: nn.Module) -> "pd.DataFrame":
    """Bytes of a curvature ``state`` (``EWC``, ``KFAC`` or their sum) per module of ``model``.

    Returns one row per module that owns parameters (in ``model.named_modules()`` order;
    a tied parameter counts once, at its first name), with columns

    * ``module``: the module's name; ``layer_type``: its class (``Linear``, ``Embedding``,
      ``LayerNorm``, ``Conv1d``, ...);
    * ``storage``: ``kronecker`` (``A`` and ``G`` factors), ``diagonal`` (one number per
      parameter), ``kronecker+diagonal`` (both, e.g. a bias outside its layer's factors),
      or ``none`` (no curvature: frozen, or not covered by the state);
    * ``parameters`` (count) and ``parameter_bytes`` (all the module's own parameters,
      trainable or not); ``curvature_bytes``: bytes the state holds for the module;
      ``ratio``: ``curvature_bytes / parameter_bytes``;
    * ``factors``: the shapes held, e.g. ``A 257×257, G 256×256``, ``A packed triu (257)``
      or ``diag 384 + diag 384``.

    For a per-task sum every term's tensors are added up. Bytes the state holds that
    belong to no module of the model (not expected) appear in a last row named
    ``(unattributed)``, so that ``curvature_bytes`` always sums to
    ``state.memory_bytes()``. The anchor ``θ*`` (one copy of the trainable parameters,
    ``state.anchor_bytes()``) is not curvature and is not counted, as in
    ``memory_bytes()``.
    """
    import pandas as pd

    params = dict(model.named_parameters())  # deduplicated: a tied parameter once
    modules: dict[str, nn.Module] = dict(model.named_modules())
    module_params: dict[str, list[str]] = defaultdict(list)
    for name in params:
        module_params[_owner(name)].append(name)

    curvature: dict[str, int] = defaultdict(int)
    shapes: dict[str, list[str]] = defaultdict(list)
    kinds: dict[str, set] = defaultdict(set)
    unattributed = 0
    for term in _terms(state):
        owner_of: dict[int, tuple[str, str, str]] = {}  # id(tensor) -> (module, kind, description)
        for pname, d in getattr(term, "diagonal", {}).items():
            owner_of[id(d)] = (_owner(pname), "diagonal", f"diag {d.numel()}")
        for mname, f in getattr(term, "factors", {}).items():
            for field, value in vars(f).items():
                if isinstance(value, Tensor):
                    owner_of[id(value)] = (mname, "kronecker", _describe_factor(f, field, value))
        for t in term._curvature_tensors():  # exactly what memory_bytes() counts
            hit = owner_of.get(id(t))
            if hit is None or hit[0] not in modules:
                unattributed += _nbytes(t)
                continue
            mname, kind, description = hit
            curvature[mname] += _nbytes(t)
            kinds[mname].add(kind)
            shapes[mname].append(description)

    rows = []
    for mname, module in modules.items():
        names = module_params.get(mname, [])
        if not names and mname not in curvature:
            continue
        count = sum(params[n].numel() for n in names)
        pbytes = sum(_nbytes(params[n]) for n in names)
        kind = "+".join(sorted(kinds[mname], key=["kronecker", "diagonal"].index)) or "none"
        rows.append(
            {
                "module": mname or "(model)",
                "layer_type": type(module).__name__,
                "storage": kind,
                "parameters": count,
                "parameter_bytes": pbytes,
                "curvature_bytes": curvature[mname],
                "ratio": curvature[mname] / pbytes if pbytes else float("nan"),
                "factors": (", " if kind == "kronecker" else " + ").join(shapes[mname]),
            }
        )
    if unattributed:
        rows.append(
            {
                "module": "(unattributed)",
                "layer_type": "",
                "storage": "?",
                "parameters": 0,
                "parameter_bytes": 0,
                "curvature_bytes": unattributed,
                "ratio": float("nan"),
                "factors": "",
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)
