"""Weight sharing (token / position dimensions): KFAC-expand and KFAC-reduce
(Eschenhagen et al. 2023), padding exclusion, modules called several times.

Exactness claims (deep linear networks, ``likelihood="gaussian"``, any N):
* reduce setting (layers per position, mean over T, then the output layer): the
  ``weight_sharing="reduce"`` blocks equal the exact Fisher (= GGN) blocks, also with a
  padding mask; ``"expand"`` is NOT exact there.
* expand setting (one prediction per position): ``"expand"`` is exact, ``"reduce"`` not.
Why: in a deep linear net the Jacobian of the output w.r.t. a layer output is a
constant matrix B_l, so the per-example Fisher block is (ā ā^T) ⊗ B_lᵀB_l (reduce
setting) or Σ_t a_t a_tᵀ ⊗ B_lᵀB_l (expand setting), which the matching KFAC reproduces.

Formula claims (any architecture): the factors equal the contract's expand / reduce
formulas computed by brute force (``oracles.kfac_factors``) for a masked-pooling model,
a tiny BERT, a bi-encoder (names encoded once per batch: every example gets all name
positions), a Siamese model (module called twice), every layer type of
``tests/cases.py`` called twice per example, and per-position (B, T, C) outputs.
"""

import pytest
import torch

import kfac_tutorial as kt

try:
    from . import models as M
    from . import oracles as O
    from .cases import LAYER_CASES
except ImportError:  # pragma: no cover
    import models as M
    import oracles as O
    from cases import LAYER_CASES

RTOL, ATOL = 1e-8, 1e-12


def _close(a, b):
    torch.testing.assert_close(a.to(torch.float64), b.to(torch.float64), rtol=RTOL, atol=ATOL)


def _block_errors(model, batches, kfac, layers):
    F = O.fisher_dense(model, batches, "exact", likelihood="gaussian")
    D = kfac.to_dense(model)
    out = {}
    for layer in layers:
        names = O.module_param_names(model, layer)
        Fb, Db = O.block(F, model, names), O.block(D, model, names)
        out[layer] = (float((Db - Fb).abs().max()), float(Fb.abs().max()))
    return out


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_kfac_reduce_is_exact_for_deep_linear_networks_in_the_reduce_setting(masked, bias):
    model, batches = M.deep_linear("reduce", n=4, t=3, masked=masked, bias=bias)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", likelihood="gaussian", weight_sharing="reduce")
    for layer, (err, scale) in _block_errors(model, batches, kfac, ["l1", "l2", "out"]).items():
        assert scale > 1e-2, layer
        assert err <= 1e-10 * scale, (layer, err, scale)


@pytest.mark.parametrize("bias", [True, False])
def test_kfac_expand_is_exact_for_deep_linear_networks_in_the_expand_setting(bias):
    model, batches = M.deep_linear("expand", n=4, t=3, bias=bias)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", likelihood="gaussian", weight_sharing="expand")
    for layer, (err, scale) in _block_errors(model, batches, kfac, ["l1", "l2", "out"]).items():
        assert scale > 1e-2, layer
        assert err <= 1e-10 * scale, (layer, err, scale)


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_kfac_expand_is_not_exact_in_the_reduce_setting(masked):
    """Expand gives (1/(N T²)) Σ_{n,t} a aᵀ ⊗ BᵀB instead of (1/N) Σ_n ā āᵀ ⊗ BᵀB:
    different unless all positions of an example carry the same input."""
    model, batches = M.deep_linear("reduce", n=4, t=3, masked=masked)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", likelihood="gaussian", weight_sharing="expand")
    errs = _block_errors(model, batches, kfac, ["l1", "l2"])
    for layer, (err, scale) in errs.items():
        assert err > 0.05 * scale, (layer, err, scale)


def test_kfac_reduce_is_not_exact_in_the_expand_setting():
    """Reduce gives (T/N) Σ_n ā āᵀ ⊗ BᵀB instead of (1/N) Σ_{n,t} a aᵀ ⊗ BᵀB."""
    model, batches = M.deep_linear("expand", n=4, t=3)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", likelihood="gaussian", weight_sharing="reduce")
    for layer, (err, scale) in _block_errors(model, batches, kfac, ["l1", "l2"]).items():
        assert err > 0.05 * scale, (layer, err, scale)


def test_padding_positions_do_not_enter_the_reduce_factors():
    """Changing the content of padded positions changes nothing (they are masked out
    of the model output and must be masked out of A as well)."""
    model, batches = M.deep_linear("reduce", n=4, t=3, masked=True)
    ((inp, y),) = batches
    other = dict(inp)
    pad = (inp["attention_mask"] == 0).unsqueeze(-1)
    other["inputs"] = torch.where(pad, -7.0 * torch.ones_like(inp["inputs"]), inp["inputs"])
    assert pad.any()
    kw = dict(fisher="exact", likelihood="gaussian")
    for ws in ("reduce", "expand"):
        a = kt.KFAC.fit(model, [(inp, y)], weight_sharing=ws, **kw)
        b = kt.KFAC.fit(model, [(other, y)], weight_sharing=ws, **kw)
        _close(a.to_dense(model), b.to_dense(model))


# ------------------------------------------------------------------ formulas


def _mask_from_batch(inputs, k, a):
    """Calls over the batch (leading size B, positions T) use the batch mask."""
    mask = inputs["attention_mask"]
    if a.shape[:2] == mask.shape:
        return mask
    return torch.ones(a.shape[:2], dtype=torch.bool)


def _check_factors(model, batches, kfac, mode, masks, modules=None, fisher="exact"):
    modules = modules or list(kfac.factors)
    for name in modules:
        A, G = O.kfac_factors(model, batches, name, mode=mode, fisher=fisher, masks=masks)
        f = kfac.factors[name]
        try:
            _close(f.A, A)
            _close(f.G, G)
        except AssertionError as e:
            raise AssertionError(f"module {name!r} ({mode}): {e}") from None


@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_kfac_factors_of_a_masked_pooling_model_follow_the_formulas(mode):
    model, batches = M.masked_pool_classifier(n=4, t=5)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", weight_sharing=mode)
    assert set(kfac.factors) == {"emb", "proj", "head"}
    _check_factors(model, batches, kfac, mode, _mask_from_batch)


@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_kfac_factors_of_a_tiny_bert_follow_the_formulas_with_padding_excluded(mode):
    model, batches = M.bert_linker(n=3, t=5)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", weight_sharing=mode)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    embeddings = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert set(kfac.factors) == linears | embeddings
    assert {n.rsplit(".", 1)[0] for n in kfac.diagonal} == {
        n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)
    }
    for name in embeddings:
        assert kfac.factors[name].kind == "embedding"
    _check_factors(model, batches, kfac, mode, _mask_from_batch)


def test_kfac_embedding_frequencies_of_bert_count_only_unpadded_tokens():
    model, batches = M.bert_linker(n=3, t=5)
    kfac = kt.KFAC.fit(model, batches, fisher="exact")
    ((inp, _),) = batches
    ids, mask = inp["input_ids"], inp["attention_mask"].bool()
    V = model.bert.config.vocab_size
    counts = torch.bincount(ids[mask], minlength=V).double()
    _close(kfac.factors["bert.embeddings.word_embeddings"].A, counts / mask.sum())
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    counts = torch.bincount(pos[mask], minlength=model.bert.config.max_position_embeddings)
    _close(kfac.factors["bert.embeddings.position_embeddings"].A, counts.double() / mask.sum())


@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_kfac_bert_without_explicit_ids_matches_explicit_ids(mode):
    """A wrapper that does not pass position_ids / token_type_ids computes the same
    function, so every factor must be the same. (HF then looks up positions with a
    (1, T) index: a call broadcast over the batch, which takes the batch's (B, T)
    mask per example, so padded positions stay out of the position-embedding A.)"""
    explicit, batches = M.bert_linker(n=3, t=5, explicit_ids=True)
    implicit, _ = M.bert_linker(n=3, t=5, explicit_ids=False)
    implicit.load_state_dict(explicit.state_dict())
    a = kt.KFAC.fit(explicit, batches, fisher="exact", weight_sharing=mode)
    b = kt.KFAC.fit(implicit, batches, fisher="exact", weight_sharing=mode)
    assert set(a.factors) == set(b.factors)
    for name in a.factors:
        _close(b.factors[name].A, a.factors[name].A)
        _close(b.factors[name].G, a.factors[name].G)
    for name in a.diagonal:
        _close(b.diagonal[name], a.diagonal[name])


@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_kfac_bi_encoder_gives_every_example_all_candidate_name_positions(mode):
    """The encoder's Linear runs on B mention rows and on C name rows (C != B): S_n =
    row n of the mention call + every position of the names call."""
    model, batches = M.bi_encoder(n=3, num_names=5)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", weight_sharing=mode)
    assert set(kfac.factors) == {"encoder.emb", "encoder.proj"}
    _check_factors(model, batches, kfac, mode, _mask_from_batch)


@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_kfac_bi_encoder_excludes_padded_name_positions_via_the_attention_mask_kwarg(mode):
    """Names padding comes from the ``attention_mask=`` keyword of the encoder call
    (shape (C, T'), matched to the names call by shape)."""
    model, batches = M.bi_encoder(n=3, num_names=5, pad_names=True)
    assert (model.names_mask == 0).any()
    kfac = kt.KFAC.fit(model, batches, fisher="exact", weight_sharing=mode)

    def masks(inputs, k, a):
        if a.shape[:2] == inputs["attention_mask"].shape:
            return inputs["attention_mask"]
        assert a.shape[:2] == model.names_mask.shape
        return model.names_mask

    _check_factors(model, batches, kfac, mode, masks)


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_kfac_module_called_twice_per_example_contributes_both_calls(mode, fisher):
    model, batches = M.siamese(n=4)
    kfac = kt.KFAC.fit(model, batches, fisher=fisher, weight_sharing=mode)
    _check_factors(model, batches, kfac, mode, None, fisher=fisher)
    # and it is not what one call alone would give
    A1 = O.layer_inputs(model, batches[0][0], "enc")[0]
    A1 = torch.cat([A1, torch.ones(A1.shape[0], 1, dtype=A1.dtype)], 1)
    assert not torch.allclose(kfac.factors["enc"].A.double(), A1.T @ A1 / A1.shape[0])


class CalledTwice(torch.nn.Module):
    """A layer case's model run on two inputs per example, logits summed: every module
    of it (``head.layer`` among them) is called twice per example."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, batch):
        return self.head(batch["a"]) + self.head(batch["b"])


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("mode", ["expand", "reduce"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=repr)
def test_every_layer_type_called_twice_per_example_contributes_both_calls(case, mode, fisher):
    head, batches = case.build(False, 0)
    _, others = case.build(False, 7)  # same shapes, other inputs
    model = CalledTwice(head)
    batches = [({"a": x, "b": xo}, y) for (x, y), (xo, _) in zip(batches, others)]
    kfac = kt.KFAC.fit(model, batches, fisher=fisher, weight_sharing=mode)
    assert "head.layer" in kfac.factors
    _check_factors(model, batches, kfac, mode, None, fisher=fisher)
    # and it is not what one call alone would give
    one = kt.KFAC.fit(head, [(x["a"], y) for x, y in batches], fisher=fisher, weight_sharing=mode)
    assert not torch.allclose(kfac.factors["head.layer"].A.double(), one.factors["layer"].A.double())


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_kfac_per_position_outputs_sum_the_fisher_over_positions(mode, fisher):
    model, batches = M.token_tagger(n=3, t=4)
    kfac = kt.KFAC.fit(model, batches, fisher=fisher, weight_sharing=mode)
    _check_factors(model, batches, kfac, mode, None, fisher=fisher)


@pytest.mark.parametrize("n", [1, 3])
def test_kfac_expand_bias_blocks_are_exact_when_positions_do_not_interact(n):
    """Layers applied per position, one prediction per position: output position t
    depends only on input position t, so g_s is nonzero only at s = t and the bias
    block Σ_t J_{t,b}ᵀ H_t J_{t,b} is exactly G (the bias entry of A is 1)."""
    model, batches = M.token_tagger(n=n, t=3)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", weight_sharing="expand")
    F = O.fisher_dense(model, batches, "exact")
    D = kfac.to_dense(model)
    for name in ("l1.bias", "l2.bias"):
        _close(O.block(D, model, [name]), O.block(F, model, [name]))
