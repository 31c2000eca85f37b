"""Cost of fitting a stock Hugging Face BERT with every parameter trainable.

A MiniLM-sized ``BertModel`` (random weights, built offline from a config) with a CLS
head, 4 batches of 32 sequences of 32 tokens, default inputs (so BERT calls its
position embedding with ``(1, T)`` ids broadcast over the batch). Reports seconds for
one plain forward+backward over the batches, ``KFAC.fit`` and ``EWC.fit`` (first fit
of a fresh model included: the probes run), and their ratios. Rounds are interleaved
and medians reported (the CPU may be shared).

    PYTHONPATH=$PWD python -m benchmarks.stock_bert --rounds 3 [--tree /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn


class ClsHead(nn.Module):
    """``BertModel`` + linear head on the CLS token; takes the tokenizer's dict."""

    def __init__(self, config, classes: int):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, classes)

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.head(self.bert(**inputs).last_hidden_state[:, 0])


def build(seed: int = 0, classes: int = 20, batches: int = 4, batch_size: int = 32, length: int = 32):
    from transformers import BertConfig

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        attn_implementation="eager",
    )
    model = ClsHead(config, classes).eval()
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(batches):
        ids = torch.randint(1000, 30000, (batch_size, length), generator=g)
        mask = torch.ones(batch_size, length, dtype=torch.long)
        mask[: batch_size // 2, length * 3 // 4 :] = 0
        data.append(({"input_ids": ids, "attention_mask": mask}, torch.randint(0, classes, (batch_size,), generator=g)))
    return model, data


def plain(model, data) -> float:
    t0 = time.perf_counter()
    for inputs, y in data:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(inputs), y).backward()
    return time.perf_counter() - t0


def timed_fit(cls, model, data) -> float:
    t0 = time.perf_counter()
    cls.fit(model, data, fisher="mc", progress=False)
    return time.perf_counter() - t0


def main(argv=None):
    import kfac_tutorial as kt

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    times = {"plain": [], "KFAC": [], "EWC": []}
    for r in range(args.rounds):
        for name in ("plain", "KFAC", "EWC"):  # a fresh model each time: first fits
            model, data = build(seed=r)
            plain(model, data[:1])  # warm-up of the kernels, not of the package
            times[name].append(plain(model, data) if name == "plain" else timed_fit(getattr(kt, name), model, data))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "package": kt.__file__,
        "median_s": med,
        "runs_s": times,
        "ratio_KFAC": med["KFAC"] / med["plain"],
        "ratio_EWC": med["EWC"] / med["plain"],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
