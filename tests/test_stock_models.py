"""Stock Hugging Face models as they are: tokenizer dicts as keyword arguments, logits from
a ``ModelOutput``; BERT and GPT-2 sequence classifiers with small random configurations
(built offline from config objects), every parameter trainable.

Claims: every layer gets its rule (``strict=True`` passes); the fit of the stock model
equals the fit through an explicit wrapper; EWC equals the brute-force diagonal
Fisher; the position embedding, called with ``(1, T)`` ids broadcast over the batch,
gets the brute-force factors; the penalty is ``½ Δᵀ F̂ Δ`` and survives save/load.
"""

import pytest
import torch
from torch import nn

import kfac_tutorial as kt
from models import flat_delta, perturb
from oracles import fisher_dense, kfac_factors

transformers = pytest.importorskip("transformers")


class Wrapped(nn.Module):
    """The wrapper a reader had to write before: ``model(inputs) -> logits``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return self.model(**inputs).logits


def _batches(seed=0, n=(3, 2), t=5, vocab=50, classes=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in n:
        ids = torch.randint(1, vocab, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        mask[0, t - 2 :] = 0
        ids[0, t - 2 :] = 0
        out.append(({"input_ids": ids, "attention_mask": mask}, torch.randint(0, classes, (b,), generator=g)))
    return out


def bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config).double().eval()


def gpt2(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=50,
        n_embd=8,
        n_layer=2,
        n_head=2,
        n_positions=16,
        num_labels=3,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2ForSequenceClassification(config).double().eval()


MODELS = {"bert": bert, "gpt2": gpt2}


@pytest.fixture(params=sorted(MODELS))
def stock(request):
    return request.param, MODELS[request.param]()


def test_every_layer_gets_its_rule_and_the_fit_equals_the_wrapped_fit(stock):
    name, model = stock
    batches = _batches()
    kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False, strict=True)
    wrapped = kt.KFAC.fit(Wrapped(model), batches, fisher="exact", progress=False)
    kinds = {f.kind for f in kfac.factors.values()}
    assert "embedding" in kinds and ("transposed_linear" if name == "gpt2" else "linear") in kinds
    for m, f in kfac.factors.items():
        g = wrapped.factors[f"model.{m}"]
        torch.testing.assert_close(f.A, g.A, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(f.G, g.G, rtol=1e-10, atol=1e-13)


def test_ewc_equals_the_brute_force_diagonal(stock):
    _, model = stock
    batches = _batches()
    ewc = kt.EWC.fit(model, batches, fisher="exact", progress=False)
    F = fisher_dense(Wrapped(model), batches, fisher="exact")
    torch.testing.assert_close(torch.diagonal(ewc.to_dense(model)), torch.diagonal(F), rtol=1e-8, atol=1e-12)


def test_position_embedding_broadcast_over_the_batch_gets_brute_force_factors(stock):
    name, model = stock
    batches = _batches()
    module = "bert.embeddings.position_embeddings" if name == "bert" else "transformer.wpe"
    kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    A, G = kfac_factors(
        Wrapped(model),
        batches,
        f"model.{module}",
        mode="expand",
        masks=lambda inputs, k, a: (
            inputs["attention_mask"].bool().expand(a.shape[0], -1)
            if a.shape[0] == inputs["attention_mask"].shape[0]
            else torch.ones(a.shape[:2], dtype=torch.bool)
        ),
    )
    f = kfac.factors[module]
    torch.testing.assert_close(f.G, G, rtol=1e-8, atol=1e-12)
    assert f.A.sum() > 0


def test_penalty_is_half_the_quadratic_form_and_survives_save_load(stock, tmp_path):
    _, model = stock
    kfac = kt.KFAC.fit(model, _batches(), fisher="mc", progress=False)
    ewc = kt.EWC.fit(model, _batches(), fisher="mc", progress=False)
    delta = perturb(model, scale=0.05, seed=5)
    d = flat_delta(model, delta)
    for state in (kfac, ewc, kfac + ewc):
        expected = 0.5 * d @ state.to_dense(model) @ d
        torch.testing.assert_close(state.penalty(model).detach(), expected, rtol=1e-9, atol=1e-12)
        state.save(tmp_path / "s.safetensors")
        loaded = kt.load(tmp_path / "s.safetensors", model)
        torch.testing.assert_close(loaded.penalty(model).detach(), expected, rtol=1e-9, atol=1e-12)
