"""Which parameters get Kronecker factors, which a hook-based diagonal, which ``torch.func``.

A module's weight gets Kronecker factors when its rule has a factor type, the module
is its only owner, and it is not named in ``diagonal_modules``. Other parameters of
modules with a rule get diagonal entries from the recorded calls; the rest (no rule,
or used outside the module's forward: ``force_vmap``) get per-example gradients from
``torch.func``. :attr:`Plan.fallback` names every module owning a trainable matrix
(a parameter of two or more dimensions) that gets no Kronecker factors, with the
reason; scalars and vectors are held diagonally by design (DESIGN §3).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

from torch import nn

from .rules import lookup, rule_for, why_no_rule


def module_matches(name: str, patterns: Sequence[str]) -> bool:
    """``name`` is one of ``patterns`` or lies below one of them."""
    return any(name == p or name.startswith(p + ".") for p in patterns)


class Plan:
    """How each trainable parameter of ``model`` is estimated (see the module docstring).

    Attributes:
        params: ``{name: parameter}``, trainable only.
        kronecker: ``{module name: (weight name, bias name or None)}``.
        hook_diag: ``{module name: [(attribute, parameter name)]}``.
        vmap_diag: parameter names left to ``torch.func``.
        recorded: ``{module name: module}`` whose calls are recorded.
        fallback: ``{module name: reason}`` (Kronecker fits only).

    ``refused``: ``{module name: reason}`` of modules whose rule could not explain a call
    (:attr:`.capture.CallRecorder.refused`); their parameters are in ``force_vmap`` and
    the reason is the one named in :attr:`fallback`.
    """

    def __init__(
        self,
        model: nn.Module,
        kronecker: bool,
        diagonal_modules: Sequence[str],
        force_vmap: frozenset = frozenset(),
        refused: Optional[dict[str, str]] = None,
    ):
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        name_of = {id(p): n for n, p in self.params.items()}
        owners = defaultdict(list)  # param id -> [(module name, module, attribute)]
        self.modules = dict(model.named_modules())
        for mname, module in self.modules.items():
            for attr, p in module.named_parameters(recurse=False):
                if p.requires_grad:
                    owners[id(p)].append((mname, module, attr))

        def sole_owner(p) -> bool:
            return p is not None and p.requires_grad and len(owners[id(p)]) == 1 and name_of[id(p)] not in force_vmap

        self.kronecker: dict[str, tuple[str, Optional[str]]] = {}
        if kronecker:
            for mname, module in self.modules.items():
                rule = rule_for(module)
                if rule is None or rule.factors is None:
                    continue
                weight, bias = rule.weight_of(module), rule.bias_of(module)
                if module_matches(mname, diagonal_modules) or not sole_owner(weight):
                    continue
                self.kronecker[mname] = (name_of[id(weight)], name_of[id(bias)] if sole_owner(bias) else None)
        in_kron = {n for pair in self.kronecker.values() for n in pair if n is not None}

        self.hook_diag: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.vmap_diag: list[str] = []
        for pname, p in self.params.items():
            if pname in in_kron:
                continue
            owner_list = owners[id(p)]
            if pname not in force_vmap and owner_list and all(rule_for(m) is not None for _, m, _ in owner_list):
                for mn, _, attr in owner_list:
                    self.hook_diag[mn].append((attr, pname))
            else:
                self.vmap_diag.append(pname)
        self.recorded = {m: self.modules[m] for m in set(self.kronecker) | set(self.hook_diag)}
        self.fallback = self._fallback(force_vmap, name_of, diagonal_modules, refused or {}) if kronecker else {}

    def own_params(self, mname: str) -> list[str]:
        """Names of the trainable parameters that module ``mname`` holds itself."""
        prefix = f"{mname}." if mname else ""
        module = self.modules[mname]
        return [prefix + a for a, p in module.named_parameters(recurse=False) if p.requires_grad]

    def _fallback(self, force_vmap, name_of, diagonal_modules, refused) -> dict[str, str]:
        """Modules with trainable parameters held diagonally although not asked to be."""
        out = {}
        for mname, module in self.modules.items():
            own = [p for _, p in module.named_parameters(recurse=False) if p.requires_grad]
            if not own or mname in self.kronecker or module_matches(mname, diagonal_modules):
                continue
            if all(p.dim() <= 1 for p in own):
                continue  # scalars and vectors (a temperature, a norm's scale): diagonal by design
            rule = lookup(module)
            if rule is not None and rule.supports(module) is None and rule.factors is None:
                continue  # diagonal by design (LayerNorm)
            if rule is None or rule.supports(module) is not None:
                out[mname] = why_no_rule(module)
            elif mname in refused:
                out[mname] = refused[mname]
            elif any(name_of[id(p)] in force_vmap for p in own):
                out[mname] = "its parameters are used outside its forward call (functionally), so its calls explain no gradient"
            elif rule.factors is not None:
                out[mname] = "its weight is shared with another module"
        return out

    def fallback_message(self) -> Optional[str]:
        """One sentence naming every module that falls back to a diagonal Fisher, or None."""
        items = self.fallback
        if not items:
            return None
        lines = "; ".join(f"'{m or '(model)'}' ({type(self.modules[m]).__name__}: {r})" for m, r in items.items())
        return (
            f"KFAC holds a diagonal Fisher for {len(items)} module(s) that have no Kronecker factors: {lines}. "
            "Register a rule for the type (kfac_tutorial.curvature.rules), or pass diagonal_modules=[...] "
            "to make the choice explicit (strict=True raises instead of warning)."
        )
