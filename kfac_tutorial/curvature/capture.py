"""Recording module calls during a forward pass (inputs, outputs and padding masks).

A :class:`CallRecorder` registers forward hooks on the layers whose curvature is
estimated. Each call of such a layer, including repeated calls of one module within one
forward pass (a bi-encoder encodes mentions and candidate names with the same encoder),
is kept as a :class:`Call`: the detached input, the graph-connected output (gradients
with respect to it are the ``g`` of KFAC) and the padding mask that applies to it.

Padding masks. Hugging Face models take ``attention_mask=`` as a keyword argument. The
recorder watches every submodule call for such a keyword (and the ``attention_mask``
entry of a dict input, registered by the caller with :meth:`CallRecorder.push_mask`);
while that call runs, a layer whose input has leading shape ``(rows, T)`` equal to a
known 2-D mask's shape takes that mask (innermost first). Positions with mask 0 are
padding: they are excluded from the Kronecker factors. Pass masks as keywords.

Calls broadcast over the batch. A call with one row whose 3-D (or higher) output the
model broadcasts over the batch (Hugging Face's position embedding, called with
``(1, T)`` ids) is handed on expanded to ``(B, ...)`` (a view: the same numbers), so the
one backward pass gives every example's gradient w.r.t. its own copy of the output.
The estimate checks once per model that the expansion leaves the logits unchanged and
switches it off otherwise.

How a layer's call is seen is its rule's business (``LayerRule.attach``): a forward hook
for most layers; a layer that applies its matrix inside a larger forward
(``nn.MultiheadAttention``) hands that call to its :class:`_Site` itself, and names the
calls it cannot explain (:attr:`CallRecorder.refused`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

from torch import Tensor, nn

from .rules import rule_for


@dataclass
class Call:
    """One call of a recorded module.

    Attributes:
        name: the module's name in ``model.named_modules()``.
        module: the module.
        index: the how-many-th call of this module in the current forward pass.
        input: the first positional input, detached; leading dimension ``rows``.
        output: the output tensor, still attached to the graph.
        mask: boolean ``(rows, T)`` padding mask (True = real token) or ``None``.
        stream: which of the module's input streams the call feeds (0: the only one). A
            rule whose matrix sees several inputs in one call (cross-attention's
            in-projection) records one call per input, each with its own stream number;
            the accumulator keeps separate factors per stream (``LayerRule.combine_streams``).
    """

    name: str
    module: nn.Module
    index: int
    input: Tensor
    output: Tensor
    mask: Optional[Tensor]
    version: int = field(default=0)
    stream: int = field(default=0)

    @property
    def rows(self) -> int:
        return self.input.shape[0]

    def check_not_modified(self) -> None:
        """Refuse outputs modified in place after the call (their gradient would be wrong)."""
        if self.output._version != self.version:
            raise RuntimeError(
                f"the output of module '{self.name}' was modified in place after the call "
                "(e.g. by nn.ReLU(inplace=True)); its gradient cannot be recovered. "
                "Use the out-of-place version of that operation."
            )


class CallRecorder:
    """Context manager that records calls of ``modules`` (a dict name -> module)."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module], broadcast: bool = True):
        self.model = model
        self.modules = modules
        self.rules = {name: rule_for(module) for name, module in modules.items()}
        self.broadcast = broadcast  # expand (1, ...) calls to the batch (see the hook)
        self.batch_size = 0  # examples of the current batch (set by the caller)
        self.expanded = False  # whether a call was expanded since the last reset
        self.calls: list[Call] = []
        self._masks: list[tuple[int, Optional[Tensor]]] = []
        self._handles: list = []
        self._counts: dict[str, int] = {}
        self.refused: dict[str, str] = {}  # module name -> why a call of it was not recorded
        self.active = True

    # -- padding masks -------------------------------------------------------------
    def push_mask(self, mask: Optional[Tensor]) -> None:
        """Register an outer mask (e.g. the ``attention_mask`` of a dict input)."""
        self._masks.append((0, mask))

    def find_mask(self, rows: int, length: int) -> Optional[Tensor]:
        """The innermost known 2-D mask of shape ``(rows, length)``, as booleans."""
        for _, mask in reversed(self._masks):
            if mask is not None and mask.dim() == 2 and tuple(mask.shape) == (rows, length):
                return mask.bool()
        # a call broadcast over the batch (e.g. Hugging Face's (1, T) position ids) takes
        # the innermost mask's (B, T): position t of example n is padding iff mask[n, t] == 0
        innermost = next((m for _, m in reversed(self._masks) if m is not None and m.dim() == 2), None)
        if rows == 1 and innermost is not None and innermost.shape[1] == length:
            return innermost.bool()
        return None

    def _mask_pre_hook(self, module, args, kwargs):
        if not self.active:
            return
        mask = kwargs.get("attention_mask")
        if isinstance(mask, Tensor):
            self._masks.append((id(module), mask.detach()))

    def _mask_post_hook(self, module, args, kwargs, output):
        if self._masks and self._masks[-1][0] == id(module):
            self._masks.pop()

    # -- layer calls -----------------------------------------------------------------
    def _make_layer_hook(self, name: str, rule):
        def hook(module, args, output, stream: int = 0):
            if not self.active:
                return None
            if not args or not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
                raise TypeError(f"module '{name}' must be called with a tensor and return a tensor")
            x = args[0]
            replaced = None
            if self.broadcast and self.batch_size > 1 and x.shape[0] == 1 and output.dim() >= 3 and output.requires_grad:
                # a call broadcast over the batch (Hugging Face's (1, T) position ids): hand
                # the rest of the model the output expanded to the batch (a view; the same
                # numbers), so that one backward pass gives each example's output gradient
                x = x.expand(self.batch_size, *x.shape[1:])
                output = replaced = output.expand(self.batch_size, *output.shape[1:])
                self.expanded = True
            mask = None
            length = rule.mask_length(module, x)
            if length is not None:
                mask = self.find_mask(x.shape[0], length)
            index = self._counts.get(name, 0)
            self._counts[name] = index + 1
            if output.requires_grad:
                self.calls.append(Call(name, module, index, x.detach(), output, mask, version=output._version, stream=stream))
            return replaced

        return hook

    def __enter__(self) -> "CallRecorder":
        for module in self.model.modules():
            self._handles.append(module.register_forward_pre_hook(self._mask_pre_hook, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._mask_post_hook, with_kwargs=True, always_call=True))
        for name, module in self.modules.items():
            self._handles.append(self.rules[name].attach(module, _Site(self, name, self.rules[name])))
        return self

    @contextmanager
    def aside(self) -> Iterator[None]:
        """Run a forward pass whose calls (and masks, counts, flags) are forgotten on exit:
        the recorder's state of the enclosing pass is restored."""
        saved = (self.calls, self._counts, self._masks, self.expanded, self.refused, self.batch_size)
        try:
            yield
        finally:
            self.calls, self._counts, self._masks, self.expanded, self.refused, self.batch_size = saved

    def reset(self) -> None:
        """Forget the calls of the previous forward pass."""
        self.calls = []
        self._counts = {}
        self._masks = []
        self.expanded = False
        self.refused = {}

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class _Site:
    """One recorded module's view of the recorder (the ``CallSite`` of ``rules.registry``)."""

    def __init__(self, recorder: CallRecorder, name: str, rule):
        self._recorder, self._name = recorder, name
        self.record = recorder._make_layer_hook(name, rule)

    @property
    def active(self) -> bool:
        return self._recorder.active

    def refuse(self, module: nn.Module, reason: str) -> None:
        if self._recorder.active:
            self._recorder.refused.setdefault(self._name, reason)

    @contextmanager
    def padding(self, mask: Optional[Tensor]) -> Iterator[None]:
        entry = (id(self), mask)
        self._recorder._masks.append(entry)
        try:
            yield
        finally:
            masks = self._recorder._masks
            for i in range(len(masks) - 1, -1, -1):
                if masks[i] is entry:
                    del masks[i]
                    break
