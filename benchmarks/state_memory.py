"""KFAC and EWC state memory against the parameter count, for a BERT-base-sized model.

Random initialisation (no download): ``BertConfig()`` defaults are BERT-base
(12 layers, hidden 768, intermediate 3072, vocabulary 30522). The curvature is
estimated on a few random token sequences; memory does not depend on the data.

    python benchmarks/state_memory.py [--layers 12] [--out results/state_memory.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch
from torch import nn
from transformers import BertConfig, BertModel

import kfac_tutorial as kt


class PooledBert(nn.Module):
    """BERT encoder, masked mean pooling, a linear head over ``num_classes`` concepts."""

    def __init__(self, config: BertConfig, num_classes: int):
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, num_classes, bias=False)

    def forward(self, x: dict) -> torch.Tensor:
        batch, length = x["input_ids"].shape
        h = self.bert(
            input_ids=x["input_ids"], attention_mask=x["attention_mask"],
            position_ids=torch.arange(length, device=x["input_ids"].device).expand(batch, length),
            token_type_ids=torch.zeros_like(x["input_ids"]),
        ).last_hidden_state
        m = x["attention_mask"].unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = PooledBert(BertConfig(num_hidden_layers=args.layers), args.classes).eval()
    ids = torch.randint(1000, 30000, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    batches = [({"input_ids": ids, "attention_mask": mask}, None)]
    start = time.perf_counter()
    kfac = kt.KFAC.fit(model, batches, fisher="mc", progress=False)
    seconds = time.perf_counter() - start
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    by_kind = defaultdict(lambda: [0, 0])  # kind -> [param bytes, state bytes]
    for name, f in kfac.factors.items():
        module = dict(model.named_modules())[name]
        by_kind[f.kind][0] += sum(p.numel() * p.element_size() for p in module.parameters())
        by_kind[f.kind][1] += f.A.numel() * f.A.element_size() + f.G.numel() * f.G.element_size()
    diag_bytes = sum(d.numel() * d.element_size() for d in kfac.diagonal.values())
    by_kind["diagonal (LayerNorm, ...)"] = [diag_bytes, diag_bytes]
    result = {
        "model": f"BERT-base config, {args.layers} layers, head over {args.classes} classes (random init)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameter_bytes": params,
        "kfac_state_bytes": kfac.memory_bytes(),
        "kfac_state_over_parameters": kfac.memory_bytes() / params,
        "ewc_state_over_parameters": 1.0,
        "by_layer_kind": {k: {"parameter_bytes": v[0], "state_bytes": v[1], "ratio": v[1] / max(v[0], 1)} for k, v in by_kind.items()},
        "fit_seconds_4_sequences": seconds,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
