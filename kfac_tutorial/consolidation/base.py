"""The common part of every consolidation state: anchor, diagonal entries, penalty,
dense matrix, bytes, and the state file (see the package docstring for the maths)."""

from __future__ import annotations

import math
from typing import ClassVar, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from .. import __version__
from ..curvature import FisherType, Likelihood, WeightSharing, estimate
from ..curvature.estimate import Estimate
from ..curvature.distributed import group_for, world_size
from ..curvature.flavours import parse_enum
from ..curvature.model_io import unwrap
from ..persistence import PathLike, StateFileError, StateMismatchError, read_state, write_state
from .registry import STATE_TYPES
from .sums import ConsolidationSum


def trainable(model: nn.Module) -> dict[str, Tensor]:
    """``{name: parameter}`` of the trainable parameters, named as in the unwrapped model
    (a DDP- or compile-wrapped model: the names of the module it wraps)."""
    return {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}


def device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def check_damping(damping: float) -> float:
    """``δ ≥ 0`` and finite, as a float; a ``ValueError`` naming the fix otherwise."""
    if not isinstance(damping, (int, float)) or not math.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite number >= 0 (δ of F̂ + δI), got {damping!r}")
    return float(damping)


def check_gamma(gamma: float) -> float:
    """The online decay ``γ ≥ 0`` and finite (``γ = 1``: no forgetting of old tasks)."""
    if not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0 (F ← γ F_old + F_new; usually in (0, 1]), got {gamma!r}")
    return float(gamma)


def check_matches(params: dict[str, tuple], model: nn.Module, what: str) -> None:
    """Refuse a state whose parameter names/shapes differ from the model's trainable ones."""
    model_params = {n: tuple(p.shape) for n, p in trainable(model).items()}
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


class DiagonalQuadratic(torch.autograd.Function):
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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        STATE_TYPES[cls.kind] = cls  # the loader finds subclasses here, never by import

    def __init__(
        self, anchor: dict[str, Tensor], diagonal: dict[str, Tensor], *, damping: float = 0.0, info: Optional[dict] = None
    ):
        self.anchor = anchor
        self.diagonal = diagonal
        self.damping = check_damping(damping)
        self.info = dict(info or {})

    # -- estimation ------------------------------------------------------------------
    @classmethod
    def _estimate(
        cls,
        model: nn.Module,
        batches: Iterable,
        *,
        fisher,
        mc_samples,
        likelihood,
        seed,
        damping,
        progress,
        kronecker: bool,
        weight_sharing: str = "reduce",
        storage: str = "auto",
        diagonal_modules: Sequence[str] = (),
        strict: bool = False,
        distributed: bool = True,
        process_group=None,
    ) -> tuple[Estimate, dict[str, Tensor], dict]:
        """Validate the arguments shared by every ``fit``, run the estimate, copy the anchor."""
        model = unwrap(model)
        fisher = parse_enum(FisherType, fisher, "fisher")
        likelihood = parse_enum(Likelihood, likelihood, "likelihood")
        if weight_sharing not in WeightSharing.CHOICES:
            raise ValueError(f"weight_sharing={weight_sharing!r} is not valid; choose one of {WeightSharing.CHOICES}")
        if not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples must be a positive integer, got {mc_samples!r}")
        check_damping(damping)
        est = estimate(
            model,
            batches,
            fisher=fisher,
            likelihood=likelihood,
            mc_samples=mc_samples,
            seed=seed,
            kronecker=kronecker,
            weight_sharing=weight_sharing,
            storage=storage,
            diagonal_modules=tuple(diagonal_modules),
            progress=progress,
            description=f"{cls.kind} Fisher ({fisher.value})",
            strict=strict,
            distributed=distributed,
            process_group=process_group,
        )
        anchor = {n: p.detach().clone() for n, p in trainable(model).items()}
        info = {
            "fisher": fisher.value,
            "mc_samples": mc_samples if fisher is FisherType.MC else None,
            "likelihood": likelihood.value,
            "num_examples": est.num_examples,
            "seed": seed,
        }
        if kronecker:
            info["weight_sharing"] = weight_sharing
        processes = world_size(group_for(distributed, process_group))
        if processes > 1:
            info["processes"] = processes  # statistics summed over this many ranks
        return est, anchor, info

    def _merged_info(self, new: "Consolidation", gamma: float) -> dict:
        return {**new.info, "online_gamma": gamma, "merged_tasks": self.info.get("merged_tasks", 1) + 1}

    # -- the penalty -------------------------------------------------------------------
    def _params(self, model: nn.Module) -> dict[str, Tensor]:
        params = dict(unwrap(model).named_parameters())
        missing = [n for n in self.anchor if n not in params]
        if missing:
            raise StateMismatchError(f"the model has no parameters {missing[:5]} that this {self.kind} state consolidates")
        return params

    def _quadratic(self, params: dict[str, Tensor]) -> Optional[Tensor]:
        """``Δθᵀ F̂ Δθ`` without the ½ and without damping (subclasses add their blocks)."""
        total = None
        for name, d in self.diagonal.items():
            term = DiagonalQuadratic.apply(params[name], self.anchor[name], d)
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
        params = trainable(model)
        check_matches({n: tuple(a.shape) for n, a in self.anchor.items()}, model, f"this {self.kind} state")
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

    def __add__(self, other) -> ConsolidationSum:
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
            "kind": self.kind,
            "package_version": __version__,
            "damping": self.damping,
            "info": self.info,
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
        tensors, meta = cls._read(path, model)
        return cls._from_tensors(tensors, meta, model, "", str(path))

    @classmethod
    def _read(cls, path: PathLike, model: nn.Module) -> tuple[dict, dict]:
        """``(tensors, meta)`` of the state file at ``path``, checked to hold a ``cls.kind`` state."""
        tensors, meta = read_state(path, device=device_of(model))
        if meta.get("kind") != cls.kind:
            raise StateFileError(
                f"{path} holds a {meta.get('kind')!r} state, not {cls.kind!r}; use kfac_tutorial.load() or {meta.get('kind')}.load()"
            )
        return tensors, meta

    @classmethod
    def _from_tensors(cls, tensors, meta, model, prefix, source) -> "Consolidation":
        what = f"the state in {source}"
        meta = {**meta, "params": dict((n, tuple(s)) for n, s in meta["params"])}
        check_matches(meta["params"], model, what)

        def get(key: str, shape=None) -> Tensor:
            if prefix + key not in tensors:
                raise StateFileError(f"{source} is damaged: tensor '{prefix + key}' is missing")
            t = tensors[prefix + key]
            if shape is not None and tuple(t.shape) != tuple(shape):
                raise StateFileError(
                    f"{source} is damaged: tensor '{prefix + key}' has shape {tuple(t.shape)}, expected {tuple(shape)}"
                )
            return t

        anchor = {n: get(f"anchor/{n}", s) for n, s in meta["params"].items()}
        diagonal = {n: get(f"diagonal/{n}", meta["params"][n]) for n in meta["diagonal"]}
        obj = cls(anchor, diagonal, damping=meta.get("damping", 0.0), info=meta.get("info"))
        obj._load_extra(tensors, meta, model, prefix, get, source)
        return obj

    def _load_extra(self, tensors, meta, model, prefix, get, source) -> None:
        pass
