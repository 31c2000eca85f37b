"""The ``nn.MultiheadAttention`` rule against brute force (float64).

Claims: the explicit path a recorded MHA computes through gives the stock module's
outputs (masks, ``need_weights``, ``batch_first`` variants); the rule's per-example
gradients of ``in_proj_weight``/``in_proj_bias`` and of ``out_proj`` equal ``torch.func``
per-example gradients of the stock model; both projections' factors equal the
definition built from an independent reference attention (padding excluded), expand and
reduce; at one token KFAC's ``out_proj`` block is the exact Fisher block; a fit leaves the
model as it was and its state maps to the real parameters through save/load; every
configuration the rule does not compute exactly is named, with its reason, in the
fallback warning (``strict=True`` raises). The generic layer tests (``LAYER_CASES``) cover
the in-projection's one-position block, the diagonal and the penalty.
"""

from __future__ import annotations

import contextlib
import re
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import kfac_tutorial as kt
from cases import AttentionHead, attention_inputs
from kfac_tutorial.curvature.capture import CallRecorder
from kfac_tutorial.curvature.estimate import DiagonalFallbackWarning
from kfac_tutorial.curvature.rules import rule_for
from kfac_tutorial.curvature.grouped_factors import QKVGroupFactors
from kfac_tutorial.curvature.memory import memory_report
from kfac_tutorial.curvature.rules.attention import attention_forward, qkv_groups
from models import flat_delta, perturb
from oracles import block, fisher_dense, grouped_attention_factors, kfac_factors, module_param_names

DTYPE = torch.float64
E, H, L = 4, 2, 4


class _Site:
    """A stand-in for the recorder: keeps what the explicit path hands it."""

    active = True

    def __init__(self):
        self.recorded, self.refused, self.masks = [], [], []

    def record(self, module, args, output, stream=0):
        self.recorded.append((args[0], output) if stream == 0 else (args[0], output, stream))
        return None

    def refuse(self, module, reason):
        self.refused.append(reason)

    def padding(self, mask):
        self.masks.append(mask)
        return contextlib.nullcontext()


def _model(batch_first=True, padding=True, bias=True, need_weights=False, attn_mask=None, seed=0):
    torch.manual_seed(seed)
    layer = nn.MultiheadAttention(E, H, batch_first=batch_first, bias=bias)
    if bias:
        nn.init.normal_(layer.in_proj_bias)
        nn.init.normal_(layer.out_proj.bias)
    return AttentionHead(layer, padding=padding, need_weights=need_weights, attn_mask=attn_mask).to(DTYPE).eval()


def _batches(seed=0, pad_last=1):
    g = torch.Generator().manual_seed(seed + 1)
    xs = [attention_inputs(3, L, E, seed, pad_last).to(DTYPE), attention_inputs(2, L, E, seed + 2, pad_last).to(DTYPE)]
    return [(x, torch.randint(0, 3, (x.shape[0],), generator=g)) for x in xs]


def _real(x):
    return ~(x[..., -1] > 0.5)


_CAUSAL = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)


def _masks(kind, n):
    pad = torch.zeros(n, L, dtype=torch.bool)
    pad[::2, -1] = True
    float_pad = torch.zeros(n, L, dtype=DTYPE).masked_fill(pad, float("-inf"))
    attn3 = torch.randn(n * H, L, L, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    return {
        "none": {},
        "kpm_bool": {"key_padding_mask": pad},
        "kpm_float": {"key_padding_mask": float_pad},
        "attn_2d_bool": {"attn_mask": _CAUSAL},
        "attn_3d_float": {"attn_mask": attn3},
        "causal": {"attn_mask": _CAUSAL, "is_causal": True},
        "kpm_and_attn": {"key_padding_mask": pad, "attn_mask": _CAUSAL},
    }[kind]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights, average", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("masks", ["none", "kpm_bool", "kpm_float", "attn_2d_bool", "attn_3d_float", "causal", "kpm_and_attn"])
def test_explicit_path_equals_the_stock_module(batch_first, need_weights, average, masks):
    torch.manual_seed(0)
    bias = masks != "attn_3d_float"  # one configuration without biases
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first, bias=bias).to(DTYPE).eval()
    n = 3
    x = torch.randn(n, L, E, dtype=DTYPE) if batch_first else torch.randn(L, n, E, dtype=DTYPE)
    kw = dict(need_weights=need_weights, average_attn_weights=average, **_masks(masks, n))
    site = _Site()
    out, weights = attention_forward(mha, site, x, x, x, **kw)
    ref_out, ref_weights = mha(x, x, x, **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    assert (weights is None) == (ref_weights is None)
    if weights is not None:
        torch.testing.assert_close(weights, ref_weights, rtol=1e-12, atol=1e-12)
    # the in-projection was handed over once: batch-first input and its packed output
    ((a, proj),) = site.recorded
    xb = x if batch_first else x.transpose(0, 1)
    torch.testing.assert_close(a, xb, rtol=0, atol=0)
    torch.testing.assert_close(proj, nn.functional.linear(xb, mha.in_proj_weight, mha.in_proj_bias), rtol=0, atol=0)
    assert not site.refused
    pad = kw.get("key_padding_mask")
    expected = None if pad is None else ~(pad if pad.dtype == torch.bool else torch.isneginf(pad))
    assert (site.masks[0] is None) == (expected is None)
    if expected is not None:
        assert torch.equal(site.masks[0], expected)


def _brute_per_example_grads(model, x, y):
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, xn, yn):
        logits = functional_call(model, p, (xn.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, yn.unsqueeze(0), reduction="sum")

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


@pytest.mark.parametrize("batch_first", [True, False])
def test_rule_per_example_grads_equal_torch_func(batch_first):
    model = _model(batch_first=batch_first)
    x, y = _batches()[0]
    modules = {"layer": model.layer, "layer.out_proj": model.layer.out_proj}
    with CallRecorder(model, modules) as rec:
        rec.batch_size = x.shape[0]
        loss = nn.functional.cross_entropy(model(x), y, reduction="sum")  # rows are examples
        calls = list(rec.calls)
        out_grads = torch.autograd.grad(loss, [c.output for c in calls])
    assert sorted(c.name for c in calls) == ["layer", "layer.out_proj"]
    brute = _brute_per_example_grads(model, x, y)
    for call, g in zip(calls, out_grads):
        assert torch.equal(call.mask, _real(x))  # key_padding_mask reaches both projections
        rule = rule_for(call.module)
        pe = rule.per_example_grads(call.module, rule.inputs(call.module, call.input), rule.output_grads(call.module, g))
        for attr, t in pe.items():
            torch.testing.assert_close(t, brute[f"{call.name}.{attr}"], rtol=1e-10, atol=1e-12)
        assert len(pe) == 2


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("setting", ["expand", "reduce"])
def test_factors_equal_the_definition_with_padding(batch_first, setting):
    model = _model(batch_first=batch_first, need_weights=True, attn_mask=_CAUSAL)
    batches = _batches()
    kfac = kt.KFAC.fit(model, batches, fisher="exact", weight_sharing=setting, progress=False)
    for name in ("layer", "layer.out_proj"):
        A, G = kfac_factors(model, batches, name, mode=setting, masks=lambda inputs, k, a: _real(inputs))
        torch.testing.assert_close(kfac.factors[name].A, A, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(kfac.factors[name].G, G, rtol=1e-9, atol=1e-12)
    # padding matters: counting the padded tokens gives another A
    A_all, _ = kfac_factors(model, batches, "layer", mode=setting)
    assert not torch.allclose(kfac.factors["layer"].A, A_all, rtol=1e-6, atol=1e-9)


def test_out_proj_block_is_exact_for_one_example_at_one_token():
    model = _model(padding=False)
    batches = [(attention_inputs(1, 1, E, 0).to(DTYPE), torch.tensor([1]))]
    kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    F = fisher_dense(model, batches, fisher="exact")
    for name in ("layer", "layer.out_proj"):
        names = module_param_names(model, name)
        torch.testing.assert_close(block(kfac.to_dense(model), model, names), block(F, model, names), rtol=1e-9, atol=1e-12)


def test_fit_leaves_the_model_unchanged_and_the_state_round_trips(tmp_path):
    model = _model(batch_first=False)
    batches = _batches()
    before = model(batches[0][0]).detach()
    keys = list(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning for a supported MHA
        kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False, strict=True)
    assert torch.equal(model(batches[0][0]).detach(), before)
    assert list(model.state_dict()) == keys
    assert "forward" not in vars(model.layer)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    f = kfac.factors["layer"]
    assert (f.kind, f.weight, f.bias) == ("multihead_attention", "layer.in_proj_weight", "layer.in_proj_bias")
    assert f.A.shape == (E + 1, E + 1) and f.G.shape == (3 * E, 3 * E)
    assert kfac.factors["layer.out_proj"].weight == "layer.out_proj.weight"
    assert not any(n.startswith("layer.") for n in kfac.diagonal)
    delta = perturb(model, scale=0.1, seed=3)
    d = flat_delta(model, delta)
    expected = 0.5 * d @ kfac.to_dense(model) @ d
    torch.testing.assert_close(kfac.penalty(model).detach(), expected, rtol=1e-9, atol=1e-12)
    kfac.save(tmp_path / "s.safetensors")
    loaded = kt.KFAC.load(tmp_path / "s.safetensors", model)
    torch.testing.assert_close(loaded.penalty(model).detach(), expected, rtol=1e-9, atol=1e-12)


class _CrossAttention(nn.Module):
    """Query from the tokens, keys and values from a transformed copy (distinct tensors)."""

    def __init__(self, only_batch_size=None, twice=False):
        super().__init__()
        self.layer = nn.MultiheadAttention(E, H, batch_first=True)
        self.out = nn.Linear(E, 3)
        self.only = only_batch_size  # cross-attention only for batches of this size
        self.twice = twice  # then self-attention with the same module in the same forward pass

    def forward(self, x):
        h = x[..., :-1]
        m = torch.tanh(h) if self.only is None or x.shape[0] == self.only else h
        o = self.layer(h, m, m, need_weights=False)[0]
        if self.twice:
            o = self.layer(o, o, o, need_weights=False)[0]
        return self.out(o.mean(1))


class _KdimHead(AttentionHead):
    def forward(self, x):
        h = x[..., :-1]
        return self.out(self.layer(h, h[..., :3], h[..., :3], need_weights=False)[0].mean(1))


class _OwnForward(nn.MultiheadAttention):
    def forward(self, query, key, value, **kwargs):
        return super().forward(query, key, value, **kwargs)


@pytest.mark.parametrize(
    "build, reason, out_proj_kept",
    [
        (lambda: AttentionHead(nn.MultiheadAttention(E, H, batch_first=True, add_zero_attn=True)), "add_zero_attn=True", False),
        (lambda: AttentionHead(nn.MultiheadAttention(E, H, batch_first=True, add_bias_kv=True)), "add_bias_kv=True", False),
        (lambda: _KdimHead(nn.MultiheadAttention(E, H, batch_first=True, kdim=3, vdim=3)), "kdim or vdim differs", False),
        (lambda: AttentionHead(_OwnForward(E, H, batch_first=True)), "_OwnForward overrides forward", False),
        (lambda: _CrossAttention(twice=True), "called with q/k/v grouped as [q, k, v] after a call grouped as [q], [k, v]", True),
    ],
)
def test_unsupported_configuration_is_named_and_strict_raises(build, reason, out_proj_kept):
    torch.manual_seed(0)
    model = build().to(DTYPE).eval()
    batches = _batches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False)
    (w,) = [w for w in caught if issubclass(w.category, DiagonalFallbackWarning)]
    message = str(w.message)
    assert "'layer'" in message and reason in message
    assert ("'layer.out_proj'" not in message) == out_proj_kept
    assert ("layer.out_proj" in kfac.factors) == out_proj_kept
    # the fallback is the exact diagonal (EWC's entries), never a wrong Kronecker block
    assert "layer" not in kfac.factors
    ewc = kt.EWC.fit(model, batches, fisher="exact", progress=False)
    for n, d in kfac.diagonal.items():
        torch.testing.assert_close(d, ewc.diagonal[n], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match=re.escape(reason)):
        kt.KFAC.fit(model, batches, fisher="exact", progress=False, strict=True)


def test_a_later_batch_the_rule_cannot_explain_raises():
    torch.manual_seed(0)
    model = _CrossAttention(only_batch_size=2).to(DTYPE).eval()  # batch 0: 3 rows (self), batch 1: 2 rows
    with pytest.raises(ValueError, match=r"batch 1: .*grouped as \[q\], \[k, v\] after a call grouped as \[q, k, v\]"):
        kt.KFAC.fit(model, _batches(), fisher="exact", progress=False)


def test_diagonal_modules_hold_the_attention_diagonally_with_exact_entries():
    model = _model()
    batches = _batches()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False, diagonal_modules=["layer"])
    assert set(kfac.factors) == {"out"}
    ewc = kt.EWC.fit(model, batches, fisher="exact", progress=False)
    names = [n for n in ewc.diagonal if n.startswith("layer.")]
    assert len(names) == 4
    for n in names:
        torch.testing.assert_close(kfac.diagonal[n], ewc.diagonal[n], rtol=1e-9, atol=1e-12)
    F = fisher_dense(model, batches, fisher="exact")
    torch.testing.assert_close(torch.diagonal(ewc.to_dense(model)), torch.diagonal(F), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- cross-attention
LQ, S = 3, 4  # query and key/value lengths differ
GROUPINGS = {"q_kv": ((0,), (1, 2)), "q_k_v": ((0,), (1,), (2,))}


class _Cross(nn.Module):
    """Queries: the first ``LQ`` tokens; memory: the last ``S`` (last feature: padding flag,
    passed as ``key_padding_mask``). ``q_kv``: key is value = tanh(memory) (a decoder's
    cross-attention); ``q_k_v``: value = sin(memory), a third tensor."""

    def __init__(self, grouping="q_kv", batch_first=True, padding=True, need_weights=False, lq=LQ):
        super().__init__()
        self.lq = lq
        self.layer = nn.MultiheadAttention(E, H, batch_first=batch_first)
        nn.init.normal_(self.layer.in_proj_bias)
        nn.init.normal_(self.layer.out_proj.bias)
        self.out = nn.Linear(E, 3)
        self.grouping, self.padding, self.need_weights = grouping, padding, need_weights

    def forward(self, x):
        q, mem, pad = x[:, : self.lq, :-1], x[:, self.lq :, :-1], x[:, self.lq :, -1] > 0.5
        if not self.layer.batch_first:
            q, mem = q.transpose(0, 1), mem.transpose(0, 1)
        k = torch.tanh(mem)
        v = k if self.grouping == "q_kv" else torch.sin(mem)
        o = self.layer(q, k, v, key_padding_mask=pad if self.padding else None, need_weights=self.need_weights)[0]
        if not self.layer.batch_first:
            o = o.transpose(0, 1)
        return self.out(torch.tanh(o).mean(1))


def _cross_inputs(n, seed, lq=LQ, s=S):
    x = torch.randn(n, lq + s, E + 1, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    x[..., -1] = 0.0
    x[::2, -1, -1] = 1.0  # the last memory token of every other example is padding
    return x


def _cross(grouping="q_kv", batch_first=True, seed=0, **kw):
    torch.manual_seed(seed)
    model = _Cross(grouping, batch_first, **kw).to(DTYPE).eval()
    g = torch.Generator().manual_seed(seed + 1)
    batches = [(x, torch.randint(0, 3, (x.shape[0],), generator=g)) for x in (_cross_inputs(3, seed), _cross_inputs(2, seed + 2))]
    return model, batches


def test_groups_are_decided_by_identity():
    a, b, c = (torch.zeros(1, 2, E) for _ in range(3))
    assert qkv_groups(a, a, a) == (7,)
    assert qkv_groups(a, b, b) == (1, 6)
    assert qkv_groups(a, b, c) == (1, 2, 4)
    assert qkv_groups(a, a, b) == (3, 4)
    assert qkv_groups(a, b, a) == (5, 2)
    assert qkv_groups(a, b.clone(), b) == (1, 2, 4)  # equal values, distinct tensors


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("grouping", ["q_kv", "q_k_v"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_cross_path_equals_the_stock_module_and_records_one_call_per_group(batch_first, grouping, need_weights):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first).to(DTYPE).eval()
    nn.init.normal_(mha.in_proj_bias)
    xq, xk = torch.randn(2, LQ, E, dtype=DTYPE), torch.randn(2, S, E, dtype=DTYPE)
    xv = xk if grouping == "q_kv" else torch.randn(2, S, E, dtype=DTYPE)
    pad = torch.zeros(2, S, dtype=torch.bool)
    pad[0, -1] = True
    args = [t if batch_first else t.transpose(0, 1) for t in (xq, xk, xv)]
    if grouping == "q_kv":
        args[2] = args[1]
    site = _Site()
    out, weights = attention_forward(mha, site, *args, key_padding_mask=pad, need_weights=need_weights)
    ref_out, ref_weights = mha(*args, key_padding_mask=pad, need_weights=need_weights)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    if need_weights:
        torch.testing.assert_close(weights, ref_weights, rtol=1e-12, atol=1e-12)
    assert not site.refused
    groups = GROUPINGS[grouping]
    assert len(site.recorded) == len(groups)
    W, b = mha.in_proj_weight, mha.in_proj_bias
    for (a, proj, stream), blocks in zip(site.recorded, groups):
        x = (xq, xk, xv)[blocks[0]]
        assert stream == sum(1 << j for j in blocks)
        torch.testing.assert_close(a, x, rtol=0, atol=0)
        for j in range(3):  # the group's blocks' projections, zeros in the others' columns
            expected = (
                nn.functional.linear(x, W[j * E : (j + 1) * E], b[j * E : (j + 1) * E])
                if j in blocks
                else torch.zeros(*x.shape[:2], E, dtype=DTYPE)
            )
            torch.testing.assert_close(proj[..., j * E : (j + 1) * E], expected, rtol=0, atol=0)
    # padding: the query's own group none, the key/value groups the key_padding_mask
    assert site.masks[0] is None
    for m in site.masks[1 : len(groups)]:
        assert torch.equal(m, ~pad)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("grouping", ["q_kv", "q_k_v"])
def test_cross_per_example_grads_equal_torch_func(batch_first, grouping):
    model, batches = _cross(grouping, batch_first)
    x, y = batches[0]
    with CallRecorder(model, {"layer": model.layer}) as rec:
        rec.batch_size = x.shape[0]
        loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
        calls = list(rec.calls)
        out_grads = torch.autograd.grad(loss, [c.output for c in calls])
    assert [c.stream for c in calls] == [sum(1 << j for j in g) for g in GROUPINGS[grouping]]
    total = {}
    for call, g in zip(calls, out_grads):
        rule = rule_for(call.module)
        pe = rule.per_example_grads(call.module, rule.inputs(call.module, call.input), rule.output_grads(call.module, g))
        for attr, t in pe.items():
            total[attr] = total.get(attr, 0) + t
    brute = _brute_per_example_grads(model, x, y)
    for attr in ("in_proj_weight", "in_proj_bias"):
        torch.testing.assert_close(total[attr], brute[f"layer.{attr}"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("grouping", ["q_kv", "q_k_v"])
@pytest.mark.parametrize("setting", ["expand", "reduce"])
def test_cross_factors_equal_the_definition_per_group(batch_first, grouping, setting):
    model, batches = _cross(grouping, batch_first)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", weight_sharing=setting, progress=False, strict=True)
    f = kfac.factors["layer"]
    assert isinstance(f, QKVGroupFactors) and f.kind == "multihead_attention_groups"
    expected = grouped_attention_factors(model, batches, "layer", GROUPINGS[grouping], mode=setting)
    parts = f.parts()
    assert len(parts) == len(expected)
    for (rows, A, G), (A_ref, G_ref) in zip(parts, expected):
        torch.testing.assert_close(A, A_ref, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(G, G_ref, rtol=1e-9, atol=1e-12)
    assert kfac.factors["layer.out_proj"].A.shape == (E + 1, E + 1)  # out_proj: an ordinary Linear
    # padding matters: counting the padded memory tokens gives another A for the key/value side
    if setting == "expand":
        model.padding = False
        unpadded = grouped_attention_factors(model, batches, "layer", GROUPINGS[grouping], mode=setting)
        assert not torch.allclose(parts[1][1], unpadded[1][0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("grouping", ["q_kv", "q_k_v"])
@pytest.mark.parametrize("lq, s", [(1, 2), (2, 1)])
def test_cross_fisher_blocks_are_exact_at_one_token_per_group(grouping, lq, s):
    """One example; a group whose input has one token has per-example gradient ``g aᵀ``
    (one term), so its block of the exact Fisher is ``G_g ⊗ A_g``. (With one key token the
    queries get no gradient, hence two configurations.)"""
    torch.manual_seed(0)
    model = _Cross(grouping, padding=False, lq=lq).to(DTYPE).eval()
    batches = [(_cross_inputs(1, 3, lq=lq, s=s), torch.tensor([1]))]
    kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False, strict=True)
    F = fisher_dense(model, batches, fisher="exact")
    K = kfac.to_dense(model)
    slices, start = {}, 0
    for n, p in model.named_parameters():
        slices[n] = torch.arange(start, start + p.numel())
        start += p.numel()
    w_idx = slices["layer.in_proj_weight"].reshape(3 * E, E)
    b_idx = slices["layer.in_proj_bias"]
    group_idx = [
        torch.cat([torch.cat([w_idx[j * E : (j + 1) * E], b_idx[j * E : (j + 1) * E, None]], 1).reshape(-1) for j in g])
        for g in GROUPINGS[grouping]
    ]
    exact = [lq == 1] + [s == 1] * (len(group_idx) - 1)  # the groups with one token
    checked = 0
    for gi, idx in enumerate(group_idx):
        if exact[gi]:  # (with one key token, the query and key blocks vanish: 0 = 0)
            checked += int(F[idx][:, idx].abs().max() > 1e-6)
            torch.testing.assert_close(K[idx][:, idx], F[idx][:, idx], rtol=1e-9, atol=1e-12)
        elif F[idx][:, idx].abs().max() > 1e-6:  # several tokens: an approximation, not the exact block
            assert not torch.allclose(K[idx][:, idx], F[idx][:, idx], rtol=1e-6, atol=1e-9)
        for other in group_idx[gi + 1 :]:  # block diagonal: no cross-group curvature
            assert torch.count_nonzero(K[idx][:, other]) == 0
    assert checked >= 1  # a nonzero exact block was compared
    if lq == 1:  # the out-projection at one query token is exact too
        out_names = module_param_names(model, "layer.out_proj")
        torch.testing.assert_close(block(K, model, out_names), block(F, model, out_names), rtol=1e-9, atol=1e-12)


def test_cross_penalty_gradient_dense_save_load_merge_and_low_rank(tmp_path):
    model, batches = _cross("q_k_v", batch_first=False)
    kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False, strict=True)
    other = kt.KFAC.fit(model, batches, fisher="mc", mc_samples=2, seed=1, progress=False, strict=True)
    delta = perturb(model, scale=0.1, seed=3)
    d = flat_delta(model, delta)
    F = kfac.to_dense(model)
    penalty = kfac.penalty(model)
    torch.testing.assert_close(penalty.detach(), 0.5 * d @ F @ d, rtol=1e-9, atol=1e-12)
    # gradient: F d
    grads = torch.autograd.grad(penalty, list(model.parameters()))
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in grads]), F @ d, rtol=1e-9, atol=1e-12)
    # the block of the in-projection is block diagonal over [q], [k], [v] (9 blocks of which 6 are zero)
    idx = torch.cat([torch.arange(0, 3 * E * E)])  # in_proj_weight is the first parameter
    Fw = F[idx][:, idx].reshape(3, E * E, 3, E * E)
    assert all(torch.count_nonzero(Fw[i, :, j]) == 0 for i in range(3) for j in range(3) if i != j)
    kfac.save(tmp_path / "s.safetensors")
    loaded = kt.KFAC.load(tmp_path / "s.safetensors", model)
    assert loaded.factors["layer"].groups == (1, 2, 4)
    torch.testing.assert_close(loaded.to_dense(model), F, rtol=0, atol=0)
    merged = kfac.merge(other, gamma=0.5)
    f, g, m = kfac.factors["layer"], other.factors["layer"], merged.factors["layer"]
    torch.testing.assert_close(m.A, (0.5 * f.A + g.A) / 1.5, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m.G, 0.5 * f.G + g.G, rtol=1e-12, atol=1e-14)
    assert kfac.low_rank().factors["layer"] is f  # dense only
    # a state of another grouping does not merge
    model2, batches2 = _cross("q_kv", batch_first=False)
    kv = kt.KFAC.fit(model2, batches2, fisher="exact", progress=False)
    with pytest.raises(ValueError, match="q/k/v groups differ"):
        kv.factors["layer"].merged(f, 1.0)
    assert kfac.memory_bytes() > 0


def test_stock_transformer_decoder_layer_fits_strictly_with_grouped_factors():
    torch.manual_seed(0)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerDecoderLayer(E, H, dim_feedforward=8, dropout=0.0, batch_first=True)
            self.out = nn.Linear(E, 3)

        def forward(self, x):
            tgt, mem, pad = x[:, :LQ, :-1], x[:, LQ:, :-1], x[:, LQ:, -1] > 0.5
            causal = nn.Transformer.generate_square_subsequent_mask(LQ, dtype=x.dtype)
            o = self.layer(tgt, mem, tgt_mask=causal, memory_key_padding_mask=pad)
            return self.out(o.mean(1))

    model = Decoder().to(DTYPE).eval()
    g = torch.Generator().manual_seed(1)
    batches = [(x, torch.randint(0, 3, (x.shape[0],), generator=g)) for x in (_cross_inputs(3, 0), _cross_inputs(2, 2))]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiagonalFallbackWarning)
        kfac = kt.KFAC.fit(model, batches, fisher="exact", progress=False, strict=True)
    assert type(kfac.factors["layer.self_attn"]) is not QKVGroupFactors
    assert kfac.factors["layer.self_attn"].kind == "multihead_attention"
    assert kfac.factors["layer.multihead_attn"].groups == (1, 6)
    assert not any(n.startswith(("layer.self_attn.", "layer.multihead_attn.")) for n in kfac.diagonal)
    expected = grouped_attention_factors(model, batches, "layer.multihead_attn", GROUPINGS["q_kv"], mode="reduce")
    for (_, A, G), (A_ref, G_ref) in zip(kfac.factors["layer.multihead_attn"].parts(), expected):
        torch.testing.assert_close(A, A_ref, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(G, G_ref, rtol=1e-9, atol=1e-12)
    d = flat_delta(model, perturb(model, scale=0.1, seed=3))
    torch.testing.assert_close(kfac.penalty(model).detach(), 0.5 * d @ kfac.to_dense(model) @ d, rtol=1e-9, atol=1e-12)
    row = memory_report(kfac, model).set_index("module").loc["layer.multihead_attn"]
    assert f"G blocks {E}², {2 * E}²" in row["factors"] and "groups [q], [k, v]" in row["factors"]
    f = kfac.factors["layer.multihead_attn"]
    assert row["curvature_bytes"] == f.A.nbytes + f.G.nbytes  # out_proj is its own module
