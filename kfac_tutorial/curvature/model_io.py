"""Calling a model on a batch: stock Hugging Face models as they are.

* A dict input (a tokenizer's batch) is passed as keyword arguments when the model's
  forward names every key (BertForSequenceClassification(**batch)), else as one
  argument (model(batch), the linkers of this package).
* The logits are the output itself, its .logits (a Hugging Face ModelOutput) or
  a tuple's first element.
* A wrapped model (``DistributedDataParallel``, ``DataParallel``: ``.module``; a
  ``torch.compile``'d model: ``._orig_mod``) is used through the module it wraps
  (:func:`unwrap`), so parameter names never carry ``module.`` or ``_orig_mod.``.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from torch import Tensor, nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module a wrapper holds, unwrapped repeatedly: ``DistributedDataParallel`` and
    ``DataParallel`` (``.module``), ``torch.compile``'s ``OptimizedModule``
    (``._orig_mod``). Any other module is returned as it is.

    The wrapped module shares its parameters with the wrapper (the same tensors), so a
    penalty computed on it back-propagates into the wrapper's parameters, and a state
    fitted through a wrapper names its parameters as the plain model does."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    for _ in range(16):  # wrappers nest at most a few levels (compile of DDP, ...)
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model
    return model


def takes_keywords(model: nn.Module, inputs: Any) -> bool:
    """Whether inputs is a dict whose every key is a parameter of model.forward."""
    if not isinstance(inputs, Mapping):
        return False
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return len(inputs) > 0 and all(k in named for k in inputs)


def logits_of(output: Any) -> Tensor:
    """The logits of a model output: a tensor, a ModelOutput's .logits or a
    tuple's first element."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"the model returned {type(output).__name__}; expected logits: a tensor, an object with "
        "a .logits tensor (Hugging Face ModelOutput) or a tuple whose first element is the logits"
    )


def call_model(model: nn.Module, inputs: Any) -> Tensor:
    """The logits of model on inputs (see the module docstring)."""
    output = model(**inputs) if takes_keywords(model, inputs) else model(inputs)
    return logits_of(output)


def has_non_finite(inputs: Any) -> bool:
    """Whether a floating tensor of inputs (a tensor, or a dict/tuple of them) holds NaN/inf."""
    if isinstance(inputs, Tensor):
        return inputs.is_floating_point() and not bool(torch.isfinite(inputs).all())
    values = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (list, tuple)) else ()
    return any(has_non_finite(v) for v in values)


def batch_size_of(inputs) -> int:
    """Leading dimension of a tensor input, or of the first tensor in a dict/tuple input."""
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    values = inputs.values() if isinstance(inputs, dict) else inputs
    for value in values:
        if isinstance(value, Tensor):
            return value.shape[0]
    raise TypeError("inputs must be a tensor or a dict/tuple containing tensors")


def to_device(inputs, device: torch.device):
    """Move a tensor, or the tensors of a dict/list/tuple, to ``device``."""
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs
