"""Tiny float64 test models and data for the curvature oracle tests.

Every factory returns ``(model, batches)`` with the model in float64 and ``batches`` a
list of ``(inputs, targets)`` pairs, where ``inputs`` is a tensor or a dict of tensors
exactly as ``kfac_tutorial`` receives them (``model(inputs)`` gives the logits).

The models are deliberately tiny so that dense ``(P, P)`` Fishers are cheap, and they
cover the structures the curvature core must handle: plain MLPs, Conv1d over token
embeddings, masked pooling over embeddings with a LayerNorm, a randomly initialised
Hugging Face BERT, a bi-encoder whose encoder is called on the mentions (B rows) and on
a fixed set of candidate names (C rows), a Siamese model that calls one module twice per
example, and deep *linear* networks with a weight-sharing (position) dimension.
"""

from __future__ import annotations

import torch
from torch import nn

DTYPE = torch.float64


# --------------------------------------------------------------------------- helpers
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _finish(model: nn.Module) -> nn.Module:
    return model.to(DTYPE).eval()


def concat_inputs(inputs_list):
    """Concatenate inputs (tensors or dicts of tensors) along the batch dimension."""
    first = inputs_list[0]
    if isinstance(first, dict):
        return {k: torch.cat([x[k] for x in inputs_list]) for k in first}
    return torch.cat(inputs_list)


def join_batches(batches):
    """All batches as one ``(inputs, targets)`` pair."""
    return concat_inputs([x for x, _ in batches]), torch.cat([y for _, y in batches])


def split_batches(batches, sizes):
    """Re-split the examples of ``batches`` into consecutive batches of ``sizes``."""
    inputs, targets = join_batches(batches)
    assert sum(sizes) == targets.shape[0], (sizes, targets.shape)
    out, start = [], 0
    for size in sizes:
        sl = slice(start, start + size)
        if isinstance(inputs, dict):
            x = {k: v[sl] for k, v in inputs.items()}
        else:
            x = inputs[sl]
        out.append((x, targets[sl]))
        start += size
    return out


def num_examples(batches) -> int:
    return sum(y.shape[0] for _, y in batches)


def _random_mask(gen, n, t, min_len=1):
    """(n, t) 0/1 attention mask, every row starting with >= min_len ones (right pad)."""
    lengths = torch.randint(min_len, t + 1, (n,), generator=gen)
    lengths[0] = t  # at least one full row
    if n > 1:
        lengths[1] = min_len  # and one heavily padded row
    return (torch.arange(t)[None, :] < lengths[:, None]).long()


# --------------------------------------------------------------------------- MLP
def mlp(seed=0, n=5, dims=(4, 6, 5, 3), act="tanh", bias=True, batch_sizes=None):
    """Linear-act-Linear-act-Linear classifier; sequential names '0', '2', '4'."""
    torch.manual_seed(seed)
    acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
    layers = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out, bias=bias))
        if i < len(dims) - 2:
            layers.append(acts[act]())
    model = _finish(nn.Sequential(*layers))
    g = _gen(seed + 1)
    x = torch.randn(n, dims[0], generator=g, dtype=DTYPE)
    y = torch.randint(0, dims[-1], (n,), generator=g)
    batches = [(x, y)]
    if batch_sizes is not None:
        batches = split_batches(batches, batch_sizes)
    return model, batches


# --------------------------------------------------------------------------- Conv1d
class ConvClassifier(nn.Module):
    """Embedding -> Conv1d(padding='same') -> ReLU -> max/mean pool over T -> Linear."""

    def __init__(self, vocab=11, dim=4, channels=5, kernel=3, classes=3, pool="max"):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.conv = nn.Conv1d(dim, channels, kernel, padding="same")
        self.head = nn.Linear(channels, classes)
        self.pool = pool

    def forward(self, ids):
        h = self.emb(ids).transpose(1, 2)  # (B, D, T)
        h = torch.relu(self.conv(h))  # (B, channels, T)
        h = h.amax(dim=2) if self.pool == "max" else h.mean(dim=2)
        return self.head(h)


def conv_classifier(seed=0, n=4, t=6, pool="max", vocab=11, classes=3):
    torch.manual_seed(seed)
    model = _finish(ConvClassifier(vocab=vocab, classes=classes, pool=pool))
    g = _gen(seed + 1)
    ids = torch.randint(0, vocab, (n, t), generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return model, [(ids, y)]


# --------------------------------------------------------------------------- masked embedding
class MaskedPoolClassifier(nn.Module):
    """dict(input_ids, attention_mask) -> Embedding -> LayerNorm -> Linear per position
    -> tanh -> masked mean over T -> Linear head."""

    def __init__(self, vocab=13, dim=4, hidden=5, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        h = torch.tanh(self.proj(self.norm(self.emb(ids))))  # (B, T, H)
        m = mask.to(h.dtype).unsqueeze(-1)
        pooled = (h * m).sum(1) / m.sum(1)
        return self.head(pooled)


def masked_pool_classifier(seed=0, n=5, t=5, vocab=13, classes=3):
    torch.manual_seed(seed)
    model = _finish(MaskedPoolClassifier(vocab=vocab, classes=classes))
    g = _gen(seed + 1)
    ids = torch.randint(1, vocab, (n, t), generator=g)
    mask = _random_mask(g, n, t)
    ids = ids * mask  # pad id 0 on padding positions
    y = torch.randint(0, classes, (n,), generator=g)
    return model, [({"input_ids": ids, "attention_mask": mask}, y)]


# --------------------------------------------------------------------------- tiny BERT
def tiny_bert_config(vocab=50):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        type_vocab_size=2,
        hidden_dropout_prob=0.1,  # irrelevant: the Fisher is computed in eval()
        attention_probs_dropout_prob=0.1,
        attn_implementation="eager",
    )


class BertLinker(nn.Module):
    """Randomly initialised BertModel + masked mean pooling + linear head over C
    classes; takes a dict batch (input_ids, attention_mask). ``explicit_ids=True``
    passes position_ids / token_type_ids expanded to (B, T)."""

    def __init__(self, classes=3, vocab=50, explicit_ids=True):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(tiny_bert_config(vocab), add_pooling_layer=False)
        self.head = nn.Linear(8, classes)
        self.explicit_ids = explicit_ids

    def forward(self, batch):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        kwargs = {}
        if self.explicit_ids:
            b, t = ids.shape
            kwargs["position_ids"] = torch.arange(t).expand(b, t)
            kwargs["token_type_ids"] = torch.zeros(b, t, dtype=torch.long)
        h = self.bert(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
        m = mask.to(h.dtype).unsqueeze(-1)
        return self.head((h * m).sum(1) / m.sum(1))


def bert_linker(seed=0, n=3, t=5, classes=3, vocab=50, explicit_ids=True):
    torch.manual_seed(seed)
    model = _finish(BertLinker(classes=classes, vocab=vocab, explicit_ids=explicit_ids))
    g = _gen(seed + 1)
    ids = torch.randint(1, vocab, (n, t), generator=g)
    mask = _random_mask(g, n, t, min_len=2)
    ids = ids * mask
    y = torch.randint(0, classes, (n,), generator=g)
    return model, [({"input_ids": ids, "attention_mask": mask}, y)]


# --------------------------------------------------------------------------- bi-encoder
class TokenEncoder(nn.Module):
    """Embedding -> Linear per position -> tanh -> masked mean: (L, T) ids -> (L, D)."""

    def __init__(self, vocab=17, dim=4, out=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, out)

    def forward(self, input_ids, attention_mask=None):
        h = torch.tanh(self.proj(self.emb(input_ids)))
        if attention_mask is None:
            return h.mean(1)
        m = attention_mask.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(1) / m.sum(1)


class BiEncoder(nn.Module):
    """Shared encoder called on the mentions (B rows) and on the C candidate names
    (stored as buffers, encoded once per forward pass); logits = mention @ names.T,
    optionally times a learnable logit scale (a parameter outside any layer)."""

    def __init__(self, names, names_mask, vocab=17, logit_scale=False):
        super().__init__()
        self.encoder = TokenEncoder(vocab=vocab)
        self.register_buffer("names", names)
        self.register_buffer("names_mask", names_mask)
        self.logit_scale = nn.Parameter(torch.tensor(1.5)) if logit_scale else None

    def forward(self, batch):
        m = self.encoder(batch["input_ids"], attention_mask=batch["attention_mask"])
        c = self.encoder(self.names, attention_mask=self.names_mask)
        logits = m @ c.T
        return logits if self.logit_scale is None else self.logit_scale * logits


def bi_encoder(seed=0, n=3, t=4, num_names=5, t_names=3, vocab=17, pad_names=False, logit_scale=False):
    """``num_names`` (C) differs from ``n`` (B) so the two calls are distinguishable."""
    torch.manual_seed(seed)
    g = _gen(seed + 1)
    names = torch.randint(1, vocab, (num_names, t_names), generator=g)
    if pad_names:
        names_mask = _random_mask(g, num_names, t_names)
    else:
        names_mask = torch.ones(num_names, t_names, dtype=torch.long)
    names = names * names_mask
    model = _finish(BiEncoder(names, names_mask, vocab=vocab, logit_scale=logit_scale))
    ids = torch.randint(1, vocab, (n, t), generator=g)
    mask = _random_mask(g, n, t)
    ids = ids * mask
    y = torch.randint(0, num_names, (n,), generator=g)
    return model, [({"input_ids": ids, "attention_mask": mask}, y)]


# --------------------------------------------------------------------------- tied weights
class TiedEmbeddingClassifier(nn.Module):
    """Embedding whose weight is reused functionally as the output projection (weight
    tying): logits over the vocabulary = mean_t(tanh(proj(emb(ids)))) @ emb.weightᵀ.
    The embedding weight gets gradient from its module call AND from outside it."""

    def __init__(self, vocab=7, dim=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids):
        h = torch.tanh(self.proj(self.emb(ids))).mean(1)
        return nn.functional.linear(h, self.emb.weight)


def tied_embedding_classifier(seed=0, n=4, t=3, vocab=7):
    torch.manual_seed(seed)
    model = _finish(TiedEmbeddingClassifier(vocab=vocab))
    g = _gen(seed + 1)
    ids = torch.randint(0, vocab, (n, t), generator=g)
    y = torch.randint(0, vocab, (n,), generator=g)
    return model, [(ids, y)]


# --------------------------------------------------------------------------- Siamese
class Siamese(nn.Module):
    """One encoder Linear called twice per example (on inputs 'a' and 'b')."""

    def __init__(self, d=4, h=5, classes=3):
        super().__init__()
        self.enc = nn.Linear(d, h)
        self.head = nn.Linear(2 * h, classes)

    def forward(self, batch):
        ha = torch.tanh(self.enc(batch["a"]))
        hb = torch.tanh(self.enc(batch["b"]))
        return self.head(torch.cat([ha, hb], dim=1))


def siamese(seed=0, n=4, d=4, classes=3):
    torch.manual_seed(seed)
    model = _finish(Siamese(d=d, classes=classes))
    g = _gen(seed + 1)
    a = torch.randn(n, d, generator=g, dtype=DTYPE)
    b = torch.randn(n, d, generator=g, dtype=DTYPE)
    y = torch.randint(0, classes, (n,), generator=g)
    return model, [({"a": a, "b": b}, y)]


# --------------------------------------------------------------------------- per-token outputs
class TokenTagger(nn.Module):
    """(B, T, d) -> Linear -> tanh -> Linear: one prediction per position, (B, T, C)."""

    def __init__(self, d=3, h=4, classes=3):
        super().__init__()
        self.l1 = nn.Linear(d, h)
        self.l2 = nn.Linear(h, classes)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


def token_tagger(seed=0, n=3, t=4, d=3, classes=3):
    torch.manual_seed(seed)
    model = _finish(TokenTagger(d=d, classes=classes))
    g = _gen(seed + 1)
    x = torch.randn(n, t, d, generator=g, dtype=DTYPE)
    y = torch.randint(0, classes, (n, t), generator=g)
    return model, [(x, y)]


# --------------------------------------------------------------------------- deep linear nets
class DeepLinearReduce(nn.Module):
    """Reduce setting: Linear layers applied per position to (B, T, d), (masked) mean
    over T, then an output Linear. No activations: a deep linear network."""

    def __init__(self, d=3, h1=4, h2=3, out=2, bias=True):
        super().__init__()
        self.l1 = nn.Linear(d, h1, bias=bias)
        self.l2 = nn.Linear(h1, h2, bias=bias)
        self.out = nn.Linear(h2, out, bias=bias)

    def forward(self, batch):
        if isinstance(batch, dict):
            x, mask = batch["inputs"], batch["attention_mask"]
        else:
            x, mask = batch, None
        h = self.l2(self.l1(x))
        if mask is None:
            pooled = h.mean(1)
        else:
            m = mask.to(h.dtype).unsqueeze(-1)
            pooled = (h * m).sum(1) / m.sum(1)
        return self.out(pooled)


class DeepLinearExpand(nn.Module):
    """Expand setting: Linear layers applied per position, outputs (B, T, D)."""

    def __init__(self, d=3, h1=4, h2=3, out=2, bias=True):
        super().__init__()
        self.l1 = nn.Linear(d, h1, bias=bias)
        self.l2 = nn.Linear(h1, h2, bias=bias)
        self.out = nn.Linear(h2, out, bias=bias)

    def forward(self, x):
        return self.out(self.l2(self.l1(x)))


def deep_linear(setting, seed=0, n=4, t=3, d=3, out=2, masked=False, bias=True):
    """Gaussian-likelihood regression data for the deep linear networks."""
    torch.manual_seed(seed)
    cls = {"reduce": DeepLinearReduce, "expand": DeepLinearExpand}[setting]
    model = _finish(cls(d=d, out=out, bias=bias))
    g = _gen(seed + 1)
    x = torch.randn(n, t, d, generator=g, dtype=DTYPE)
    if setting == "reduce":
        y = torch.randn(n, out, generator=g, dtype=DTYPE)
        inputs = x
        if masked:
            mask = _random_mask(g, n, t)
            x = x * mask.unsqueeze(-1)  # padding content is irrelevant but keep it tidy
            x = x + 5.0 * (1 - mask.unsqueeze(-1))  # make padding *visible* if counted
            inputs = {"inputs": x, "attention_mask": mask}
    else:
        assert not masked
        y = torch.randn(n, t, out, generator=g, dtype=DTYPE)
        inputs = x
    return model, [(inputs, y)]


# --------------------------------------------------------------------------- misc
def perturb(model: nn.Module, scale=0.1, seed=123) -> dict:
    """Add N(0, scale²) noise to every trainable parameter in place; return Δθ."""
    g = _gen(seed)
    delta = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                d = scale * torch.randn(p.shape, generator=g, dtype=p.dtype)
                p.add_(d)
                delta[name] = d
    return delta


def flat_delta(model: nn.Module, delta: dict) -> torch.Tensor:
    return torch.cat([delta[n].reshape(-1) for n, p in model.named_parameters() if p.requires_grad])
