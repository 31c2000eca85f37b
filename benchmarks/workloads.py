"""The models and data every benchmark uses: the CNN and MiniLM linkers on a real
vocabulary (ci profile sizes), and a BERT-base-sized config with random weights.

``workload(name)`` returns a :class:`Workload`: the model (eval mode), the batches as
``(dict inputs, targets)`` (what ``kt.KFAC.fit`` takes) and a tensor-input wrapper
with stacked ``(B, K, T)`` inputs (what the peer libraries take).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass
class Workload:
    name: str
    model: nn.Module  # dict inputs -> (B, C) logits
    batches: list  # [(dict of (B, T) tensors, (B,) targets)]
    keys: tuple  # order of the stacked inputs
    kfac_diagonal: tuple = ()  # modules the experiments hold diagonally
    weight_sharing: str = "reduce"
    notes: dict = field(default_factory=dict)

    def stacked(self) -> "StackedInputs":
        return StackedInputs(self.model, self.keys)

    def tensor_batches(self) -> list:
        return [(torch.stack([x[k] for k in self.keys], 1), y) for x, y in self.batches]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "Workload":
        """Move the model and every batch to ``device`` (in place; returns self)."""
        self.model.to(device)
        self.batches = [({k: v.to(device) for k, v in x.items()}, y.to(device)) for x, y in self.batches]
        return self

    @property
    def num_classes(self) -> int:
        with torch.no_grad():
            return int(self.model(self.batches[0][0]).shape[-1])

    @property
    def num_examples(self) -> int:
        return sum(len(y) for _, y in self.batches)


class StackedInputs(nn.Module):
    """``forward(X)`` with ``X`` of shape ``(B, K, T)`` (ids, mask, ... stacked) → logits.
    Peer libraries want one tensor input; the submodules are the model's own."""

    def __init__(self, model: nn.Module, keys: tuple):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.model({k: X[:, i] for i, k in enumerate(self.keys)})


def _task(model: str, examples: int, max_concepts: int | None = None, task: str = "diseases"):
    from kfac_tutorial.data import load_task
    from kfac_tutorial.experiments.harness import prepare_task
    from kfac_tutorial.experiments.profiles import get_profile

    profile = get_profile(model, "ci")
    if max_concepts is not None:
        profile = profile.with_overrides(max_concepts=max_concepts)
    t = prepare_task(load_task(task, seed=0, max_concepts=profile.max_concepts, require_test=True), profile)
    return profile, t, t.train[:examples]


def linker_workload(
    model: str,
    examples: int = 256,
    batch_size: int | None = None,
    max_length: int | None = None,
    max_concepts: int | None = None,
    freeze_embeddings: bool | None = None,
) -> Workload:
    """The ``ci`` profile's CNN or MiniLM linker over one real vocabulary (diseases)."""
    from kfac_tutorial.experiments.harness import build_linker
    from kfac_tutorial.linkers import ConceptInventory
    from kfac_tutorial.training import linking_batches

    profile, task, examples_ = _task(model, examples, max_concepts)
    overrides = {}
    if max_length is not None:
        overrides["max_length"] = max_length
    if freeze_embeddings is not None and model == "bert":
        overrides["linker"] = {**profile.linker, "freeze_embeddings": freeze_embeddings}
    profile = profile.with_overrides(**overrides)
    inventory = ConceptInventory.from_concepts(task.concepts)
    linker = build_linker(model, inventory, profile, seed=0)
    linker.begin_task(list(task.concepts))
    batches = list(linking_batches(linker, examples_, batch_size or profile.batch_size))
    keys = tuple(batches[0][0].keys())
    frozen = bool(profile.linker.get("freeze_embeddings", False))
    return Workload(
        f"{model}-linker",
        linker.eval(),
        batches,
        keys,
        kfac_diagonal=tuple(profile.kfac_diagonal),
        weight_sharing=profile.weight_sharing,
        notes={
            "concepts": len(task.concepts),
            "examples": len(examples_),
            "batch_size": batch_size or profile.batch_size,
            "max_length": profile.max_length,
            "embeddings_frozen": frozen,
            "parameters": sum(p.numel() for p in linker.parameters() if p.requires_grad),
        },
    )


class PooledBert(nn.Module):
    """BERT encoder (random weights), masked mean pooling, a linear head over classes."""

    def __init__(self, config, num_classes: int):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, num_classes, bias=False)

    def forward(self, x: dict) -> torch.Tensor:
        ids, mask = x["input_ids"], x["attention_mask"]
        h = self.bert(
            input_ids=ids,
            attention_mask=mask,
            token_type_ids=torch.zeros_like(ids),
            position_ids=torch.arange(ids.shape[1], device=ids.device).expand_as(ids),
        ).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def bert_base_workload(
    layers: int = 12,
    classes: int = 1000,
    examples: int = 32,
    batch_size: int = 16,
    length: int = 16,
    vocab: int = 30522,
    freeze_embeddings: bool = False,
    seed: int = 0,
) -> Workload:
    """A BERT-base-sized config (hidden 768, FFN 3072) with random weights; random tokens."""
    from transformers import BertConfig

    torch.manual_seed(seed)
    model = PooledBert(BertConfig(num_hidden_layers=layers, vocab_size=vocab), classes).eval()
    if freeze_embeddings:
        model.bert.embeddings.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, examples, batch_size):
        b = min(batch_size, examples - start)
        ids = torch.randint(1000, vocab, (b, length), generator=g)
        mask = torch.ones_like(ids)
        lengths = torch.randint(length // 2, length + 1, (b,), generator=g)
        mask[torch.arange(length)[None, :] >= lengths[:, None]] = 0
        batches.append(({"input_ids": ids, "attention_mask": mask}, torch.randint(0, classes, (b,), generator=g)))
    return Workload(
        f"bert-base-{layers}L",
        model,
        batches,
        ("input_ids", "attention_mask"),
        notes={
            "layers": layers,
            "classes": classes,
            "examples": examples,
            "batch_size": batch_size,
            "max_length": length,
            "vocab": vocab,
            "embeddings_frozen": freeze_embeddings,
            "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        },
    )


def workload(name: str, device: torch.device | str = "cpu", **kw) -> Workload:
    """The named workload (``cnn``, ``minilm``, ``bert-base``) with its model and data on ``device``."""
    if name == "cnn":
        w = linker_workload("cnn", **kw)
    elif name == "minilm":
        w = linker_workload("bert", **kw)
    elif name == "bert-base":
        w = bert_base_workload(**kw)
    else:
        raise ValueError(f"unknown workload {name!r}: cnn, minilm, bert-base")
    return w.to(torch.device(device))
