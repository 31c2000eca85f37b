"""EWC and KFAC consolidation: a quadratic penalty that keeps what earlier tasks learned.

After task ``A`` (parameters ``θ*``), training on task ``B`` minimises

    L_B(θ) + λ · penalty(θ),        penalty(θ) = ½ (θ − θ*)ᵀ F̂ (θ − θ*),

the Laplace approximation of task ``A``'s posterior. ``F̂`` approximates the **mean**
per-example Fisher of task ``A`` (``(1/N) Σ_n E_y[∇log p(y|x_n) ∇log p(y|x_n)ᵀ]``): the
dataset size ``N`` is *not* folded in; it belongs to the strength ``λ`` (``λ = N``
recovers the plain Laplace posterior).

* :class:`EWC` keeps ``diag(F)`` (one number per parameter; Kirkpatrick et al. 2017).
* :class:`KFAC` keeps per layer ``F_layer ≈ G ⊗ A`` (Martens & Grosse 2015; KFC for
  Conv1d, Grosse & Martens 2016; a diagonal ``A`` for embeddings) and a diagonal for
  every other parameter (LayerNorm, ...). Layers are independent (block diagonal).
  Penalty per layer: ``½ tr(ΔWᵀ G ΔW A) = ½ sum(ΔW ⊙ (G ΔW A))`` with
  ``ΔW = [W | b] − [W* | b*]``, never forming ``G ⊗ A``. Vec order: row-major
  ``vec([W | b])`` (PyTorch's flattening) pairs with ``G ⊗ A``.

Several tasks:

* per-task sum, ``ewc_a + ewc_b`` or ``kfac_a + kfac_b``: a :class:`ConsolidationSum`
  whose penalty is the sum of the terms, each around its own anchor (exact; memory
  grows with the number of tasks);
* online (Schwarz et al. 2018), ``old.merge(new, gamma)``: one term around the newest
  anchor. EWC: ``F ← γ F_old + F_new`` (exact). KFAC: a sum of Kronecker products is
  not a Kronecker product, so the factors are merged,
  ``A ← (γ A_old + A_new) / (1 + γ)``, ``G ← γ G_old + G_new``, which equals
  ``γ F_old + F_new`` when both tasks have the same factors and otherwise replaces part
  of each task's term by cross terms ``A_old ⊗ G_new``, ``A_new ⊗ G_old``.

Damping ``δ`` adds ``½ δ ‖θ − θ*‖²`` (``F̂ + δ I``).

Storage. State files hold each symmetric factor as its upper triangle (exact, half the
bytes). ``kfac.low_rank(tol)`` (opt-in) replaces a factor ``M`` by a root ``R``
(``d × r``, ``M ≈ R Rᵀ`` from its eigendecomposition) wherever ``r ≤ d/2``: ``tol=0``
keeps the numerical rank (exact to rounding: a ``reduce`` factor from ``N`` examples has
rank ≤ ``N``), ``tol > 0`` drops the smallest eigenvalues holding at most ``tol/2`` of
each factor's trace (so ``tr(G_r ⊗ A_r) ≥ (1 − tol) tr(G ⊗ A)``). The penalty then
costs ``O(d_out d_in r)`` instead of ``O(d_out d_in (d_out + d_in))`` per layer.
"""

from __future__ import annotations

from typing import ClassVar, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import __version__
from .curvature import FisherType, LayerFactors, Likelihood, WeightSharing, estimate
from .curvature.flavours import parse_enum
from .persistence import PathLike, StateFileError, StateMismatchError, read_state, write_state

__all__ = ["Consolidation", "ConsolidationSum", "EWC", "KFAC", "load"]


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _check_matches(params: dict[str, tuple], model: nn.Module, what: str) -> None:
    """Refuse a state whose parameter names/shapes differ from the model's trainable ones."""
    model_params = {n: tuple(p.shape) for n, p in _trainable(model).items()}
    missing = [n for n in params if n not in model_params]
    extra = [n for n in model_params if n not in params]
    if missing:
        raise StateMismatchError(
            f"{what} has parameters that the model lacks (or that are frozen there): {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}"
        )
    if extra:
        raise StateMismatchError(
            f"the model has trainable parameters that {what} does not cover: {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''} (freeze them, or estimate the curvature on this model)"
        )
    for name, shape in params.items():
        if tuple(shape) != model_params[name]:
            raise StateMismatchError(
                f"parameter '{name}' has shape {model_params[name]} in the model but {tuple(shape)} in {what}"
            )


class Consolidation:
    """Common part of :class:`EWC` and :class:`KFAC`: anchor, diagonal entries, penalty.

    Attributes:
        anchor: ``{name: θ*}`` copies of the trainable parameters at fit time.
        diagonal: ``{name: diag F}`` for the parameters held diagonally (all, for EWC).
        damping: ``δ`` of ``F̂ + δ I``.
        info: how the state was estimated (``fisher``, ``mc_samples``, ``likelihood``,
            ``num_examples``, ``seed``, ...).
    """

    kind: ClassVar[str] = "base"

    def __init__(self, anchor: dict[str, Tensor], diagonal: dict[str, Tensor], *, damping: float = 0.0, info: Optional[dict] = None):
        self.anchor = anchor
        self.diagonal = diagonal
        self.damping = float(damping)
        self.info = dict(info or {})

    # -- estimation ------------------------------------------------------------------
    @classmethod
    def _estimate(cls, model, batches, *, fisher, mc_samples, likelihood, seed, damping, progress, kronecker, weight_sharing="reduce", diagonal_modules=()):
        fisher = parse_enum(FisherType, fisher, "fisher")
        likelihood = parse_enum(Likelihood, likelihood, "likelihood")
        if weight_sharing not in WeightSharing.CHOICES:
            raise ValueError(f"weight_sharing={weight_sharing!r} is not valid; choose one of {WeightSharing.CHOICES}")
        if not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        est = estimate(
            model, batches, fisher=fisher, likelihood=likelihood, mc_samples=mc_samples, seed=seed,
            kronecker=kronecker, weight_sharing=weight_sharing, diagonal_modules=tuple(diagonal_modules),
            progress=progress, description=f"{cls.kind} Fisher ({fisher.value})",
        )
        anchor = {n: p.detach().clone() for n, p in _trainable(model).items()}
        info = {
            "fisher": fisher.value, "mc_samples": mc_samples if fisher is FisherType.MC else None,
            "likelihood": likelihood.value, "num_examples": est.num_examples, "seed": seed,
        }
        if kronecker:
            info["weight_sharing"] = weight_sharing
        return est, anchor, info

    # -- the penalty -------------------------------------------------------------------
    def _params(self, model: nn.Module) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        missing = [n for n in self.anchor if n not in params]
        if missing:
            raise StateMismatchError(f"the model has no parameters {missing[:5]} that this {self.kind} state consolidates")
        return params

    def _quadratic(self, params: dict[str, Tensor]) -> Tensor:
        """``Δθᵀ F̂ Δθ`` without the ½ and without damping (subclasses add their blocks)."""
        total = None
        for name, d in self.diagonal.items():
            term = _DiagonalQuadratic.apply(params[name], self.anchor[name], d)
            total = term if total is None else total + term
        return total

    def penalty(self, model: nn.Module) -> Tensor:
        """``½ (θ − θ*)ᵀ (F̂ + δI) (θ − θ*)``: a differentiable scalar."""
        params = self._params(model)
        total = self._quadratic(params)
        if total is None:
            total = next(iter(params.values())).new_zeros(())
        if self.damping:
            total = total + self.damping * sum((params[n] - a).square().sum() for n, a in self.anchor.items())
        return 0.5 * total

    # -- dense matrix (small models, tests, figures) -----------------------------------
    def to_dense(self, model: nn.Module) -> Tensor:
        """``(P, P)`` float64 ``F̂ + δI`` over the trainable parameters in
        ``model.named_parameters()`` order, each flattened row-major."""
        params = _trainable(model)
        _check_matches({n: tuple(a.shape) for n, a in self.anchor.items()}, model, f"this {self.kind} state")
        offsets, total = {}, 0
        for name, p in params.items():
            offsets[name] = total
            total += p.numel()
        dense = torch.zeros(total, total, dtype=torch.float64)
        for name, d in self.diagonal.items():
            idx = torch.arange(d.numel()) + offsets[name]
            dense[idx, idx] += d.detach().reshape(-1).double().cpu()
        self._add_blocks(dense, offsets, params)
        if self.damping:
            dense += self.damping * torch.eye(total, dtype=torch.float64)
        return dense

    def _add_blocks(self, dense: Tensor, offsets: dict[str, int], params: dict[str, Tensor]) -> None:
        pass

    # -- bookkeeping -------------------------------------------------------------------
    def _curvature_tensors(self) -> list[Tensor]:
        return list(self.diagonal.values())

    def memory_bytes(self) -> int:
        """Bytes held by the curvature (diagonals, factors); the anchor ``θ*`` (one copy of
        the parameters) is not counted: see :meth:`anchor_bytes`."""
        return sum(t.numel() * t.element_size() for t in self._curvature_tensors())

    def anchor_bytes(self) -> int:
        """Bytes of the anchor ``θ*``."""
        return sum(t.numel() * t.element_size() for t in self.anchor.values())

    def __add__(self, other: "Union[Consolidation, ConsolidationSum]") -> "ConsolidationSum":
        return ConsolidationSum([self]) + other

    def __radd__(self, other):
        if other == 0:  # sum([...]) starts from 0
            return ConsolidationSum([self])
        return NotImplemented

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fisher={self.info.get('fisher')!r}, num_examples={self.info.get('num_examples')}, memory_bytes={self.memory_bytes()})"

    # -- persistence ---------------------------------------------------------------------
    def _meta(self) -> dict:
        return {
            "kind": self.kind, "package_version": __version__, "damping": self.damping, "info": self.info,
            # lists, not dicts: the metadata JSON is written with sorted keys, and the
            # order of the terms fixes the summation order (bit-identical round trips)
            "params": [[n, list(a.shape)] for n, a in self.anchor.items()],
            "diagonal": list(self.diagonal),
        }

    def _tensors(self, prefix: str = "") -> dict[str, Tensor]:
        tensors = {f"{prefix}anchor/{n}": a for n, a in self.anchor.items()}
        tensors.update({f"{prefix}diagonal/{n}": d for n, d in self.diagonal.items()})
        return tensors

    def save(self, path: PathLike) -> None:
        """Write the state to ``path`` (safetensors + JSON metadata, atomically)."""
        write_state(path, self._tensors(), self._meta())

    @classmethod
    def load(cls, path: PathLike, model: nn.Module) -> "Consolidation":
        """Read a state saved by :meth:`save` and check it against ``model``."""
        tensors, meta = read_state(path, device=_device_of(model))
        if meta.get("kind") != cls.kind:
            raise StateFileError(f"{path} holds a {meta.get('kind')!r} state, not {cls.kind!r}; use kfac_tutorial.load() or {meta.get('kind')}.load()")
        return cls._from_tensors(tensors, meta, model, "", str(path))

    @classmethod
    def _from_tensors(cls, tensors, meta, model, prefix, source) -> "Consolidation":
        what = f"the state in {source}"
        meta = {**meta, "params": dict((n, tuple(s)) for n, s in meta["params"])}
        _check_matches(meta["params"], model, what)

        def get(key: str, shape=None) -> Tensor:
            if prefix + key not in tensors:
                raise StateFileError(f"{source} is damaged: tensor '{prefix + key}' is missing")
            t = tensors[prefix + key]
            if shape is not None and tuple(t.shape) != tuple(shape):
                raise StateFileError(f"{source} is damaged: tensor '{prefix + key}' has shape {tuple(t.shape)}, expected {tuple(shape)}")
            return t

        anchor = {n: get(f"anchor/{n}", s) for n, s in meta["params"].items()}
        diagonal = {n: get(f"diagonal/{n}", meta["params"][n]) for n in meta["diagonal"]}
        obj = cls(anchor, diagonal, damping=meta.get("damping", 0.0), info=meta.get("info"))
        obj._load_extra(tensors, meta, model, prefix, get, source)
        return obj

    def _load_extra(self, tensors, meta, model, prefix, get, source) -> None:
        pass


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class EWC(Consolidation):
    """Diagonal Fisher consolidation (Elastic Weight Consolidation)."""

    kind: ClassVar[str] = "EWC"

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        batches: Iterable,
        fisher: str = "mc",
        mc_samples: int = 1,
        *,
        likelihood: str = "categorical",
        seed: int = 0,
        damping: float = 0.0,
        progress: bool = True,
    ) -> "EWC":
        """Estimate ``diag F = (1/N) Σ_n Σ_v w_v (J_nᵀ v)²`` from per-example gradients.

        Args:
            model: any ``nn.Module`` with ``model(inputs) -> (B, C)`` or ``(B, T, C)``
                outputs; put in ``eval()`` during the estimate.
            batches: iterable of ``(inputs, targets)``; inputs a tensor or dict of tensors.
            fisher: ``"exact"``, ``"mc"`` or ``"empirical"`` (see
                :mod:`kfac_tutorial.curvature.flavours`).
            mc_samples: sampled labels per example for ``"mc"``.
            likelihood: ``"categorical"`` (logits) or ``"gaussian"`` (unit-variance means).
            seed: seeds the label sampling.
            damping: ``δ`` of ``F̂ + δI`` in the penalty.
            progress: show a tqdm progress bar.
        """
        est, anchor, info = cls._estimate(model, batches, fisher=fisher, mc_samples=mc_samples, likelihood=likelihood, seed=seed, damping=damping, progress=progress, kronecker=False)
        return cls(anchor, est.diagonal, damping=damping, info=info)

    def merge(self, new: "EWC", gamma: float = 1.0) -> "EWC":
        """Online EWC: ``F ← γ F_self + F_new`` around ``new``'s anchor."""
        if not isinstance(new, EWC):
            raise TypeError(f"can only merge an EWC state into an EWC state, got {type(new).__name__}")
        if set(new.diagonal) != set(self.diagonal):
            raise StateMismatchError("the two EWC states cover different parameters")
        diagonal = {n: gamma * self.diagonal[n] + new.diagonal[n] for n in new.diagonal}
        info = {**new.info, "online_gamma": gamma, "merged_tasks": self.info.get("merged_tasks", 1) + 1}
        return EWC({n: a.clone() for n, a in new.anchor.items()}, diagonal, damping=new.damping, info=info)


class _DiagonalQuadratic(torch.autograd.Function):
    """``Σ d ⊙ (θ − θ*)²`` with gradient ``2 d ⊙ (θ − θ*)``, in two passes over the
    parameter instead of autograd's five (the EWC penalty is memory-bound)."""

    @staticmethod
    def forward(ctx, theta: Tensor, anchor: Tensor, d: Tensor) -> Tensor:
        delta = theta.detach() - anchor
        M = d.to(delta.dtype) * delta
        ctx.save_for_backward(M)
        return (M * delta).sum()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (M,) = ctx.saved_tensors
        return 2.0 * grad_output * M, None, None


class _KroneckerQuadratic(torch.autograd.Function):
    """``sum(D ⊙ M)`` with ``M = G D A`` (or ``M = diag(a) D G`` for an embedding, where ``D``
    is ``(V, D_emb)``); gradient ``2 M`` (``G``, ``A`` symmetric), reusing ``M`` instead of
    differentiating through two matrix products: the penalty then costs two matmuls per
    layer in the forward pass and none in the backward pass."""

    @staticmethod
    def forward(ctx, D: Tensor, G: Tensor, A: Optional[Tensor], a_diag: Optional[Tensor]) -> Tensor:
        M = (a_diag.unsqueeze(1) * D) @ G if a_diag is not None else G @ D @ A
        ctx.save_for_backward(M)
        return (D * M).sum()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (M,) = ctx.saved_tensors
        return 2.0 * grad_output * M, None, None, None


def _nonzero_rows(f: LayerFactors) -> Tensor:
    """Indices of the embedding rows with ``A_v > 0`` (cached on the factor object)."""
    cached = getattr(f, "_rows", None)
    if cached is None or cached[0] is not f.A:
        cached = (f.A, torch.nonzero(f.A > 0).reshape(-1))
        f._rows = cached
    return cached[1]


class KFAC(Consolidation):
    """Kronecker-factored consolidation: per layer ``G ⊗ A``, diagonal elsewhere.

    Attributes:
        factors: ``{module name: LayerFactors(kind, A, G, weight, bias)}``.
    """

    kind: ClassVar[str] = "KFAC"

    def __init__(self, anchor, diagonal, factors: Optional[dict[str, LayerFactors]] = None, *, damping=0.0, info=None):
        super().__init__(anchor, diagonal, damping=damping, info=info)
        self.factors = dict(factors or {})

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        batches: Iterable,
        fisher: str = "mc",
        mc_samples: int = 1,
        *,
        likelihood: str = "categorical",
        weight_sharing: str = "reduce",
        diagonal_modules: Sequence[str] = (),
        seed: int = 0,
        damping: float = 0.0,
        progress: bool = True,
    ) -> "KFAC":
        """Estimate Kronecker factors for Linear, Conv1d and Embedding layers.

        ``A`` and ``G`` follow :mod:`kfac_tutorial.curvature.estimate`; ``weight_sharing``
        chooses ``"reduce"`` (default: a mention linker pools its tokens into one vector
        before the loss, the reduce setting of Eschenhagen et al. 2023) or ``"expand"``
        (one prediction per position). Modules named in ``diagonal_modules`` (or below
        them) and layers without a Kronecker rule get diagonal entries. Other arguments
        as :meth:`EWC.fit`.
        """
        est, anchor, info = cls._estimate(
            model, batches, fisher=fisher, mc_samples=mc_samples, likelihood=likelihood, seed=seed, damping=damping,
            progress=progress, kronecker=True, weight_sharing=weight_sharing, diagonal_modules=diagonal_modules,
        )
        return cls(anchor, est.diagonal, est.factors, damping=damping, info=info)

    # -- penalty ---------------------------------------------------------------------------
    def _quadratic(self, params):
        total = super()._quadratic(params)
        for f in self.factors.values():
            dW = params[f.weight] - self.anchor[f.weight]
            A, G = f.A.to(dW.dtype), f.G.to(dW.dtype)
            if f.kind == "embedding":
                # vec(ΔW)ᵀ (diag(A) ⊗ G) vec(ΔW) = Σ_v A_v ΔW_v G ΔW_vᵀ over the rows (tokens)
                # seen in the Fisher data only: for a BERT vocabulary most A_v are 0
                rows = _nonzero_rows(f)
                D = dW.index_select(0, rows)
                a = A.index_select(0, rows)
                if f.G_root:  # Σ_v a_v ‖ΔW_v R_G‖²
                    Y = (a.sqrt().unsqueeze(1) * D) @ G
                    term = (Y * Y).sum()
                else:
                    term = _KroneckerQuadratic.apply(D, G, None, a)
            else:
                D = dW.reshape(dW.shape[0], -1)
                if f.bias is not None:
                    D = torch.cat([D, (params[f.bias] - self.anchor[f.bias]).unsqueeze(1)], dim=1)
                if f.A_root and f.G_root:  # ‖R_Gᵀ D R_A‖²
                    Y = torch.linalg.multi_dot([G.T, D, A])
                    term = (Y * Y).sum()
                elif f.A_root:  # tr(Xᵀ G X), X = D R_A
                    X = D @ A
                    term = (X * (G @ X)).sum()
                elif f.G_root:  # tr(Y A Yᵀ), Y = R_Gᵀ D
                    Y = G.T @ D
                    term = (Y * (Y @ A)).sum()
                else:
                    term = _KroneckerQuadratic.apply(D, G, A, None)  # tr(Dᵀ G D A)
            total = term if total is None else total + term
        return total

    def _add_blocks(self, dense, offsets, params):
        for f in self.factors.values():
            w = params[f.weight]
            A, G = f.full_A().detach().double().cpu(), f.full_G().detach().double().cpu()
            if f.kind == "embedding":
                block = torch.kron(torch.diag(A), G)
                idx = torch.arange(w.numel()) + offsets[f.weight]
            else:
                out_dim, in_dim = w.shape[0], w[0].numel()
                block = torch.kron(G, A)
                cols = in_dim + (f.bias is not None)
                o = torch.arange(out_dim).unsqueeze(1)
                i = torch.arange(in_dim).unsqueeze(0)
                idx = torch.empty(out_dim, cols, dtype=torch.long)
                idx[:, :in_dim] = offsets[f.weight] + o * in_dim + i
                if f.bias is not None:
                    idx[:, in_dim] = offsets[f.bias] + torch.arange(out_dim)
                idx = idx.reshape(-1)
            dense[idx.unsqueeze(1), idx.unsqueeze(0)] += block

    def _curvature_tensors(self):
        return super()._curvature_tensors() + [t for f in self.factors.values() for t in (f.A, f.G)]  # roots as stored

    # -- several tasks -------------------------------------------------------------------------
    def merge(self, new: "KFAC", gamma: float = 1.0) -> "KFAC":
        """Online KFAC around ``new``'s anchor: ``A ← (γ A_self + A_new)/(1+γ)``,
        ``G ← γ G_self + G_new``; diagonals ``γ d_self + d_new`` (see module docstring)."""
        if not isinstance(new, KFAC):
            raise TypeError(f"can only merge a KFAC state into a KFAC state, got {type(new).__name__}")
        if set(new.factors) != set(self.factors) or set(new.diagonal) != set(self.diagonal):
            raise StateMismatchError("the two KFAC states have different layer structures (factors or diagonal parameters)")
        factors = {}
        for name, f in new.factors.items():  # low-rank factors are merged as full matrices
            old = self.factors[name]
            factors[name] = LayerFactors(f.kind, (gamma * old.full_A() + f.full_A()) / (1.0 + gamma), gamma * old.full_G() + f.full_G(), f.weight, f.bias)
        diagonal = {n: gamma * self.diagonal[n] + new.diagonal[n] for n in new.diagonal}
        info = {**new.info, "online_gamma": gamma, "merged_tasks": self.info.get("merged_tasks", 1) + 1}
        return KFAC({n: a.clone() for n, a in new.anchor.items()}, diagonal, factors, damping=new.damping, info=info)

    # -- low-rank storage (opt-in) ---------------------------------------------------------
    def low_rank(self, tol: float = 0.0, max_fraction: float = 0.5) -> "KFAC":
        """A copy whose factors are held as roots ``R`` (``M ≈ R Rᵀ``, ``d × r``) wherever
        the kept rank ``r ≤ max_fraction · d``; other factors stay full.

        ``tol=0``: keep eigenvalues above the factor's rounding level (numerical rank;
        the penalty is unchanged to rounding). ``tol>0``: drop the smallest eigenvalues
        holding at most ``tol/2`` of each factor's trace (an approximation: the trace of
        every layer's ``G ⊗ A`` keeps at least ``1 − tol`` of its mass). The anchor and
        diagonal entries are shared with ``self``. ``info["low_rank_tol"]`` records ``tol``.
        """
        if tol < 0 or tol >= 1:
            raise ValueError(f"tol must be in [0, 1), got {tol}")
        factors = {}
        for m, f in self.factors.items():
            A, A_root = (f.A, f.A_root) if f.kind == "embedding" else _maybe_root(f.full_A(), tol / 2, max_fraction)
            G, G_root = _maybe_root(f.full_G(), tol / 2, max_fraction)
            factors[m] = LayerFactors(f.kind, A, G, f.weight, f.bias, A_root=A_root, G_root=G_root)
        info = {**self.info, "low_rank_tol": tol}
        return KFAC(self.anchor, self.diagonal, factors, damping=self.damping, info=info)

    # -- persistence ---------------------------------------------------------------------------
    def _meta(self):
        meta = super()._meta()
        meta["factors"] = [
            {"module": m, "kind": f.kind, "weight": f.weight, "bias": f.bias,
             "A_storage": _storage(f.A, f.A_root, f.kind == "embedding"), "G_storage": _storage(f.G, f.G_root, False)}
            for m, f in self.factors.items()
        ]
        return meta

    def _tensors(self, prefix=""):
        tensors = super()._tensors(prefix)
        for m, f in self.factors.items():
            tensors[f"{prefix}A/{m}"] = _pack(f.A, _storage(f.A, f.A_root, f.kind == "embedding"))
            tensors[f"{prefix}G/{m}"] = _pack(f.G, _storage(f.G, f.G_root, False))
        return tensors

    def _load_extra(self, tensors, meta, model, prefix, get, source):
        modules = dict(model.named_modules())
        shapes = meta["params"]
        for spec in meta.get("factors", []):
            m = spec["module"]
            if m not in modules:
                raise StateMismatchError(f"the state in {source} has Kronecker factors for module '{m}', which the model lacks")
            wshape = shapes[spec["weight"]]
            if spec["kind"] == "embedding":
                a_shape, g_shape = (wshape[0],), (wshape[1], wshape[1])
            else:
                d_in = 1
                for s in wshape[1:]:
                    d_in *= s
                d_in += spec["bias"] is not None
                a_shape, g_shape = (d_in, d_in), (wshape[0], wshape[0])
            A, A_root = _unpack(get, f"A/{m}", a_shape, spec.get("A_storage", "dense"), source, prefix)
            G, G_root = _unpack(get, f"G/{m}", g_shape, spec.get("G_storage", "dense"), source, prefix)
            self.factors[m] = LayerFactors(spec["kind"], A, G, spec["weight"], spec["bias"], A_root=A_root, G_root=G_root)


def _maybe_root(M: Tensor, tol: float, max_fraction: float) -> tuple[Tensor, bool]:
    """``(R, True)`` with ``M ≈ R Rᵀ`` when the kept rank is at most ``max_fraction · d``,
    else ``(M, False)``. Eigenvalues are computed in float64 and clamped at 0."""
    d = M.shape[0]
    s, U = torch.linalg.eigh(M.detach().double())
    s, U = s.flip(0).clamp(min=0), U.flip(1)
    total = float(s.sum())
    if total <= 0:
        return M.new_zeros(d, 0), True
    if tol > 0:
        tail = torch.cumsum(s.flip(0), 0).flip(0)  # tail[k] = Σ_{i≥k} s_i
        r = int((tail > tol * total).sum())
    else:
        r = int((s > s[0] * d * torch.finfo(M.dtype).eps).sum())
    if r > max_fraction * d:
        return M, False
    return (U[:, :r] * s[:r].sqrt()).to(M.dtype), True


def _storage(t: Tensor, root: bool, diagonal: bool) -> str:
    """How a factor goes to a file: ``root`` (d × r), ``triu`` (upper triangle of an exactly
    symmetric matrix, exact) or ``dense``."""
    if root:
        return "root"
    if diagonal or t.dim() != 2 or not torch.equal(t, t.T):
        return "dense"
    return "triu"


def _pack(t: Tensor, storage: str) -> Tensor:
    if storage != "triu":
        return t
    i, j = torch.triu_indices(t.shape[0], t.shape[0], device=t.device)
    return t[i, j].contiguous()


def _unpack(get, key: str, shape: tuple, storage: str, source: str, prefix: str) -> tuple[Tensor, bool]:
    """Read one factor stored as ``dense``, ``triu`` or ``root`` and check its shape."""
    if storage == "dense":
        return get(key, shape), False
    if storage == "triu":
        d = shape[0]
        v = get(key, (d * (d + 1) // 2,))
        i, j = torch.triu_indices(d, d, device=v.device)
        M = v.new_zeros(d, d)
        M[i, j] = v
        M[j, i] = v
        return M, False
    if storage == "root":
        t = get(key)
        if t.dim() != 2 or t.shape[0] != shape[0] or t.shape[1] > shape[0]:
            raise StateFileError(f"{source} is damaged: low-rank factor '{prefix + key}' has shape {tuple(t.shape)}, expected ({shape[0]}, r ≤ {shape[0]})")
        return t, True
    raise StateFileError(f"{source}: factor '{prefix + key}' has unknown storage {storage!r} (dense, triu or root); upgrade kfac_tutorial")


class ConsolidationSum:
    """Per-task sum of consolidation terms, each around its own anchor.

    ``penalty = Σ_k ½ (θ − θ*_k)ᵀ F̂_k (θ − θ*_k)``; ``to_dense`` is ``Σ_k F̂_k``.
    """

    kind: ClassVar[str] = "sum"

    def __init__(self, terms: Sequence[Consolidation]):
        self.terms = list(terms)

    def __add__(self, other):
        if isinstance(other, ConsolidationSum):
            return ConsolidationSum(self.terms + other.terms)
        if isinstance(other, Consolidation):
            return ConsolidationSum(self.terms + [other])
        return NotImplemented

    def __radd__(self, other):
        if other == 0:
            return self
        return NotImplemented

    def __len__(self) -> int:
        return len(self.terms)

    def __iter__(self):
        return iter(self.terms)

    def penalty(self, model: nn.Module) -> Tensor:
        """Sum of the terms' penalties (differentiable)."""
        return sum(t.penalty(model) for t in self.terms)

    def to_dense(self, model: nn.Module) -> Tensor:
        """Sum of the terms' dense matrices."""
        return sum(t.to_dense(model) for t in self.terms)

    def memory_bytes(self) -> int:
        """Curvature bytes of all terms."""
        return sum(t.memory_bytes() for t in self.terms)

    def anchor_bytes(self) -> int:
        return sum(t.anchor_bytes() for t in self.terms)

    def __repr__(self) -> str:
        return f"ConsolidationSum({self.terms!r})"

    def save(self, path: PathLike) -> None:
        """Write every term into one state file (atomically)."""
        tensors, metas = {}, []
        for i, term in enumerate(self.terms):
            tensors.update(term._tensors(prefix=f"term{i}/"))
            metas.append(term._meta())
        write_state(path, tensors, {"kind": self.kind, "package_version": __version__, "terms": metas})

    @classmethod
    def load(cls, path: PathLike, model: nn.Module) -> "ConsolidationSum":
        tensors, meta = read_state(path, device=_device_of(model))
        if meta.get("kind") != cls.kind:
            raise StateFileError(f"{path} holds a {meta.get('kind')!r} state, not a sum; use kfac_tutorial.load()")
        return cls._from(tensors, meta, model, str(path))

    @classmethod
    def _from(cls, tensors, meta, model, source):
        terms = []
        for i, term_meta in enumerate(meta["terms"]):
            kind = _KINDS.get(term_meta.get("kind"))
            if kind is None:
                raise StateFileError(f"{source}: term {i} has unknown kind {term_meta.get('kind')!r}")
            terms.append(kind._from_tensors(tensors, term_meta, model, f"term{i}/", source))
        return cls(terms)


_KINDS = {"EWC": EWC, "KFAC": KFAC}


def load(path: PathLike, model: nn.Module) -> Union[EWC, KFAC, ConsolidationSum]:
    """Load any state file (EWC, KFAC or a per-task sum) and check it against ``model``."""
    tensors, meta = read_state(path, device=_device_of(model))
    kind = meta.get("kind")
    if kind == ConsolidationSum.kind:
        return ConsolidationSum._from(tensors, meta, model, str(path))
    if kind not in _KINDS:
        raise StateFileError(f"{path}: unknown state kind {kind!r}")
    return _KINDS[kind]._from_tensors(tensors, meta, model, "", str(path))
