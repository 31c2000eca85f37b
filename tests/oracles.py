"""Brute-force float64 reference implementations (oracles) for the curvature tests.

Independent of ``kfac_tutorial``: dense Jacobians with ``torch.func`` and plain loops,
written to be obviously correct rather than fast. Conventions (DESIGN.md §3, §4):

* ``J_n``: Jacobian of example ``n``'s logits (shape ``(C,)`` or ``(T, C)``) w.r.t. the
  flat vector of every trainable parameter, in ``model.named_parameters()`` order, each
  flattened row-major.
* Fisher = (1/N) Σ_n Σ_v w_v (J_nᵀ v)(J_nᵀ v)ᵀ, i.e. the MEAN per-example Fisher:
  - exact categorical: Σ_v w_v v vᵀ = diag(p) − p pᵀ for each position separately;
  - exact gaussian: identity (F = GGN = JᵀJ);
  - empirical: v = p − e_y (gaussian: f − y), summed over positions of the example.
* KFAC factors: per module call, the layer inputs ``a_s`` (1 appended for a trainable
  bias) and the output gradients ``g_s`` of v·logits_n, combined per the expand /
  reduce formulas of the contract.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev

# =========================================================================== parameters


def trainable(model: nn.Module) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def param_slices(model: nn.Module) -> dict:
    """name -> slice into the flat parameter vector."""
    out, start = {}, 0
    for name, p in trainable(model).items():
        out[name] = slice(start, start + p.numel())
        start += p.numel()
    return out


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable(model).values())


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainable(model).values()])


def _unflatten(model: nn.Module, theta: torch.Tensor) -> dict:
    out, start = {}, 0
    for name, p in trainable(model).items():
        out[name] = theta[start : start + p.numel()].view(p.shape)
        start += p.numel()
    return out


# =========================================================================== Jacobians


def batch_jacobian(model: nn.Module, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, J)`` with ``J[..., P] = d logits[...] / d theta`` for the whole batch.

    Example n's Jacobian is ``J[n]`` (shape ``(C, P)`` or ``(T, C, P)``): computing the
    Jacobian of the full batch output and slicing it is correct even when examples share
    computation (candidate names encoded once per batch).
    """
    model.eval()
    theta0 = flat_params(model)
    fixed = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    fixed = {k: v.detach() for k, v in fixed.items()}

    def f(theta):
        return functional_call(model, {**fixed, **_unflatten(model, theta)}, (inputs,))

    with torch.no_grad():
        logits = f(theta0)
    jac = jacrev(f)(theta0)
    assert jac.shape == logits.shape + theta0.shape
    return logits, jac


def _per_position(logits_n: torch.Tensor, jac_n: torch.Tensor):
    """Reshape example n's logits/Jacobian to (T, C) and (T, C, P); T=1 for (C,)."""
    c = logits_n.shape[-1]
    return logits_n.reshape(-1, c), jac_n.reshape(-1, c, jac_n.shape[-1])


# =========================================================================== Fisher


def output_fisher_vectors(logits_n, target_n, fisher: str, likelihood: str):
    """Backprop vectors ``V`` (K, T, C) and weights ``w`` (K,) for one example so that
    Σ_k w_k (Jᵀ v_k)(Jᵀ v_k)ᵀ is that example's Fisher term (exact / empirical only)."""
    lg = logits_n.reshape(-1, logits_n.shape[-1])  # (T, C)
    t, c = lg.shape
    if fisher == "exact":
        vecs = []
        for pos in range(t):
            if likelihood == "categorical":
                p = lg[pos].softmax(-1)
                cols = p.sqrt()[:, None] * (torch.eye(c, dtype=lg.dtype) - p[None, :])
            else:
                cols = torch.eye(c, dtype=lg.dtype)
            for k in range(c):
                v = torch.zeros(t, c, dtype=lg.dtype)
                v[pos] = cols[k]
                vecs.append(v)
        return torch.stack(vecs), torch.ones(len(vecs), dtype=lg.dtype)
    if fisher == "empirical":
        if likelihood == "categorical":
            y = target_n.reshape(-1)
            v = lg.softmax(-1) - nn.functional.one_hot(y, c).to(lg.dtype)
        else:
            v = lg - target_n.reshape(t, c)
        return v[None], torch.ones(1, dtype=lg.dtype)
    raise ValueError(fisher)


def fisher_dense(model, batches, fisher="exact", likelihood="categorical"):
    """Dense (P, P) mean per-example Fisher (exact or empirical): the book's one brute
    force, :func:`kfac_tutorial.theory.dense_fisher` (``torch.func`` Jacobians of each
    whole batch; independent of :mod:`kfac_tutorial.curvature`), averaged over batches
    with their sizes as weights."""
    from kfac_tutorial.theory import dense_fisher

    total, n_total = None, 0
    for inputs, targets in batches:
        n = (inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values()))).shape[0]
        F = n * dense_fisher(model, inputs, targets, fisher=fisher, likelihood=likelihood)
        total = F if total is None else total + F
        n_total += n
    return total / n_total


def per_example_loss_grads(model, batches, likelihood="categorical"):
    """(N, P) gradients of each example's own loss (sum over its positions), by plain
    autograd on a full-batch forward pass — an independent route to the empirical
    Fisher (1/N) Σ g_n g_nᵀ."""
    model.eval()
    params = list(trainable(model).values())
    grads = []
    for inputs, targets in batches:
        logits = model(inputs)
        for n in range(logits.shape[0]):
            lg = logits[n].reshape(-1, logits.shape[-1])
            if likelihood == "categorical":
                loss = nn.functional.cross_entropy(lg, targets[n].reshape(-1), reduction="sum")
            else:
                loss = 0.5 * ((targets[n].reshape(lg.shape) - lg) ** 2).sum()
            g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1) for gi, p in zip(g, params)]))
    return torch.stack(grads).detach()


def dense_diag_to_dict(model, diag: torch.Tensor) -> dict:
    return {name: diag[sl].view(trainable(model)[name].shape) for name, sl in param_slices(model).items()}


def block(F: torch.Tensor, model, names_a, names_b=None) -> torch.Tensor:
    """Sub-block of a dense (P, P) matrix for parameter-name lists (params order)."""
    sl = param_slices(model)
    names_b = names_a if names_b is None else names_b
    ia = torch.cat([torch.arange(P.start, P.stop) for P in (sl[n] for n in names_a)])
    ib = torch.cat([torch.arange(P.start, P.stop) for P in (sl[n] for n in names_b)])
    return F[ia][:, ib]


def module_param_names(model, module_name) -> list:
    """Trainable parameter names of one module, in named_parameters order."""
    prefix = module_name + "." if module_name else ""
    own = {prefix + n for n, p in model.get_submodule(module_name).named_parameters(recurse=False) if p.requires_grad}
    return [n for n in trainable(model) if n in own]


# =========================================================================== vec order


def wb_to_params_perm(d_out: int, d_in: int, bias: bool) -> torch.Tensor:
    """Index ``perm`` such that ``M[perm][:, perm]`` re-orders a matrix indexed by the
    row-major vec of ``[W | b]`` (shape (d_out, d_in+1)) into (vec W, b) order."""
    width = d_in + 1 if bias else d_in
    w_idx = [i * width + j for i in range(d_out) for j in range(d_in)]
    b_idx = [i * width + d_in for i in range(d_out)] if bias else []
    return torch.tensor(w_idx + b_idx)


def kron_block_params_order(A: torch.Tensor, G: torch.Tensor, kind: str, bias: bool):
    """The dense Fisher block of one KFAC layer in named_parameters order.

    linear / conv1d: kron(G, A) over vec([W | b]) (row-major), permuted to (W, b).
    embedding: A is the diagonal vector; block = kron(diag(A), G) over vec(W), W (V, D).
    """
    A, G = A.contiguous(), G.contiguous()
    if kind == "embedding":
        return torch.kron(torch.diag(A), G)
    K = torch.kron(G, A)
    d_out = G.shape[0]
    d_in = A.shape[0] - (1 if bias else 0)
    perm = wb_to_params_perm(d_out, d_in, bias)
    return K[perm][:, perm]


# =========================================================================== layer I/O


class _Recorder:
    """Forward hook on one module: records inputs, adds a zero perturbation ``eps_k``
    (requires_grad) to the output of call k so d logits / d output can be taken."""

    def __init__(self, module):
        self.inputs, self.eps = [], []
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.inputs.append(args[0].detach())
        eps = torch.zeros_like(output, requires_grad=True)
        self.eps.append(eps)
        return output + eps


def reference_attention(mha: nn.MultiheadAttention, xq, xk, xv, key_padding_mask=None, attn_mask=None, eps=None, eps_out=None):
    """Attention of batch-first ``xq`` ``(N, L, E)`` over ``xk``, ``xv`` ``(N, S, E)`` from its
    definition, one head at a time: ``q = xq W_qᵀ + b_q (+ eps[0])``, ``k = xk W_kᵀ + b_k
    (+ eps[1])``, ``v = xv W_vᵀ + b_v (+ eps[2])`` with ``W_q, W_k, W_v`` the row blocks of
    ``in_proj_weight``; head ``h``: ``softmax(q_h k_hᵀ / √D + mask) v_h``; ``o`` = the heads
    side by side; ``out = o W_outᵀ + b_out (+ eps_out)``. Masks: bool True (or -inf) = not
    attended; a ``key_padding_mask`` ``(N, S)``, an ``attn_mask`` ``(L, S)`` or ``(N·H, L, S)``.
    Returns ``(out, o)``, both ``(N, L, E)``."""
    N, L, E = xq.shape
    S = xk.shape[1]
    H = mha.num_heads
    D = E // H
    W = mha.in_proj_weight
    b = mha.in_proj_bias
    proj = []
    for j, x in enumerate((xq, xk, xv)):
        P = x @ W[j * E : (j + 1) * E].T
        if b is not None:
            P = P + b[j * E : (j + 1) * E]
        if eps is not None and eps[j] is not None:
            P = P + eps[j]
        proj.append(P)

    def additive(m):
        return torch.zeros(m.shape, dtype=xq.dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m

    bias = torch.zeros(N, H, L, S, dtype=xq.dtype)
    if attn_mask is not None:
        bias = bias + (additive(attn_mask) if attn_mask.dim() == 2 else additive(attn_mask).reshape(N, H, L, S))
    if key_padding_mask is not None:
        bias = bias + additive(key_padding_mask)[:, None, None, :]
    heads = []
    for h in range(H):
        q, k, v = (P[..., h * D : (h + 1) * D] for P in proj)
        heads.append(torch.softmax(q @ k.transpose(1, 2) / D**0.5 + bias[:, h], dim=-1) @ v)
    o = torch.cat(heads, dim=-1)
    out = o @ mha.out_proj.weight.T
    if mha.out_proj.bias is not None:
        out = out + mha.out_proj.bias
    if eps_out is not None:
        out = out + eps_out
    return out, o


def reference_self_attention(mha: nn.MultiheadAttention, x, key_padding_mask=None, attn_mask=None, eps_in=None, eps_out=None):
    """:func:`reference_attention` of ``x`` over itself; ``eps_in`` ``(N, L, 3E)`` perturbs the
    packed projection ``P = x W_inᵀ + b_in`` (``q, k, v = P[:E], P[E:2E], P[2E:]``)."""
    E = x.shape[-1]
    eps = None if eps_in is None else tuple(eps_in[..., j * E : (j + 1) * E] for j in range(3))
    return reference_attention(mha, x, x, x, key_padding_mask, attn_mask, eps, eps_out)


class _AttentionRecorder:
    """For ``nn.MultiheadAttention`` (whose projections no hook sees): replaces the module's
    output by :func:`reference_self_attention` (checked equal to it), with a zero
    perturbation ``eps`` on the in-projection (``part="in"``) or the out-projection
    (``"out"``) output; records that projection's batch-first input."""

    def __init__(self, mha, part):
        self.inputs, self.eps, self.part = [], [], part
        self.handle = mha.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, mha, args, kwargs, output):
        query, key, value = (list(args) + [kwargs.get(k) for k in ("query", "key", "value")][len(args) :])[:3]
        assert query is key and key is value, "the oracle covers self-attention only"
        x = query if mha.batch_first else query.transpose(0, 1)
        N, L, E = x.shape
        eps = torch.zeros(N, L, 3 * E if self.part == "in" else E, dtype=x.dtype, requires_grad=True)
        masks = {k: kwargs.get(k) for k in ("key_padding_mask", "attn_mask")}
        out, o = reference_self_attention(mha, x, **masks, **({"eps_in": eps} if self.part == "in" else {"eps_out": eps}))
        stock = output[0] if mha.batch_first else output[0].transpose(0, 1)
        torch.testing.assert_close(out.detach(), stock.detach(), rtol=1e-10, atol=1e-12)
        self.inputs.append((x if self.part == "in" else o).detach())
        self.eps.append(eps)
        return (out if mha.batch_first else out.transpose(0, 1)), output[1]


def layer_calls(model, inputs, module_name):
    """Run the model once; for each call of ``module_name`` return a dict with

    * ``a``: (L, S, d) layer inputs per row and position (Linear: the trailing feature
      dim; Conv1d: unfolded patches in ``weight.reshape(out, -1)`` layout; Embedding:
      one-hot rows), with a column of ones appended for a trainable bias;
    * ``jac``: (B, *out, L, S, d_out) = d logits / d layer output at each position.
    Also returns the logits.
    """
    model.eval()
    module = model.get_submodule(module_name)
    parent = model.get_submodule(module_name.rsplit(".", 1)[0]) if "." in module_name else model
    if isinstance(module, nn.MultiheadAttention):
        rec = _AttentionRecorder(module, "in")
    elif isinstance(parent, nn.MultiheadAttention) and module is parent.out_proj:
        rec = _AttentionRecorder(parent, "out")
    else:
        rec = _Recorder(module)
    try:
        logits = model(inputs)
    finally:
        rec.handle.remove()
    flat = logits.reshape(-1)
    jacs = [torch.zeros(flat.numel(), *e.shape, dtype=e.dtype) for e in rec.eps]
    for i in range(flat.numel()):
        gs = torch.autograd.grad(flat[i], rec.eps, retain_graph=True, allow_unused=True)
        for k, g in enumerate(gs):
            if g is not None:
                jacs[k][i] = g
    calls = []
    for x, jac in zip(rec.inputs, jacs):
        jac = jac.reshape(*logits.shape, *jac.shape[1:])
        a, jac = _layer_view(module, x, jac, logits.ndim)
        calls.append({"a": a.detach(), "jac": jac.detach()})
    return logits.detach(), calls


def _layer_view(module, x, jac, out_ndim):
    """(L, S, d_in[+1]) inputs and (*logits, L, S, d_out) output Jacobians."""
    lead = jac.shape[:out_ndim]
    bias = getattr(module, "bias", None) is not None and module.bias.requires_grad
    if isinstance(module, nn.Linear):
        L, d_in = x.shape[0], x.shape[-1]
        a = x.reshape(L, -1, d_in)
        g = jac.reshape(*lead, L, a.shape[1], module.out_features)
    elif isinstance(module, nn.Conv1d):
        assert module.groups == 1
        k, st, dil = module.kernel_size[0], module.stride[0], module.dilation[0]
        if module.padding == "same":
            total = dil * (k - 1)
            left, right = total // 2, total - total // 2
        else:
            left = right = module.padding[0]
        xp = nn.functional.pad(x, (left, right))
        L, cin, tp = xp.shape
        t_out = (tp - dil * (k - 1) - 1) // st + 1
        a = torch.zeros(L, t_out, cin, k, dtype=x.dtype)
        for t in range(t_out):
            for j in range(k):
                a[:, t, :, j] = xp[:, :, t * st + j * dil]
        a = a.reshape(L, t_out, cin * k)
        # output (L, C_out, T_out) -> (L, T_out, C_out)
        g = jac.reshape(*lead, L, module.out_channels, t_out).transpose(-1, -2)
    elif isinstance(module, nn.Conv2d):
        assert module.groups == 1
        (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
        ph, pw = module.padding
        xp = nn.functional.pad(x, (pw, pw, ph, ph))
        L, cin, hp, wp = xp.shape
        h_out, w_out = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
        a = torch.zeros(L, h_out, w_out, cin, kh, kw, dtype=x.dtype)
        for i in range(h_out):
            for j in range(w_out):
                for u in range(kh):
                    for v in range(kw):
                        a[:, i, j, :, u, v] = xp[:, :, i * sh + u * dh, j * sw + v * dw]
        a = a.reshape(L, h_out * w_out, cin * kh * kw)
        g = jac.reshape(*lead, L, module.out_channels, h_out * w_out).transpose(-1, -2)
    elif type(module).__name__ == "Conv1D":  # Hugging Face: y = x W + b, W (d_in, d_out)
        L, d_in = x.shape[0], x.shape[-1]
        a = x.reshape(L, -1, d_in)
        g = jac.reshape(*lead, L, a.shape[1], module.weight.shape[1])
    elif isinstance(module, nn.MultiheadAttention):  # the in-projection: a Linear of output 3E
        L, d_in = x.shape[0], x.shape[-1]
        a = x.reshape(L, -1, d_in)
        g = jac.reshape(*lead, L, a.shape[1], 3 * d_in)
        bias = module.in_proj_bias is not None and module.in_proj_bias.requires_grad
    elif isinstance(module, nn.Embedding):
        L = x.shape[0]
        a = nn.functional.one_hot(x.reshape(L, -1), module.num_embeddings).to(jac.dtype)
        g = jac.reshape(*lead, L, a.shape[1], module.embedding_dim)
        bias = False
    else:
        raise TypeError(type(module))
    if bias:
        a = torch.cat([a, torch.ones(*a.shape[:-1], 1, dtype=a.dtype)], dim=-1)
    return a, g


def kfac_factors(
    model,
    batches,
    module_name,
    mode="expand",
    fisher="exact",
    likelihood="categorical",
    masks=None,
):
    """Brute-force KFAC factors (A, G) of one module, straight from the contract.

    ``masks``: callable ``(inputs, call_index, a) -> (L, S) bool`` of valid positions, or
    None (all valid). Example n's position set S_n: row n of every call with leading size
    B, and all rows of calls with another leading size. Embedding A is returned as the
    vector of normalised token counts (always expand).
    """
    module = model.get_submodule(module_name)
    is_emb = isinstance(module, nn.Embedding)
    if is_emb:
        mode = "expand"
    A_sum = G_sum = None
    count_positions = 0
    n_examples = 0
    for inputs, targets in batches:
        logits, calls = layer_calls(model, inputs, module_name)
        B = logits.shape[0]
        for n in range(B):
            a_list, g_list = [], []  # positions of S_n: a (d_a,), g (out_numel_n, d)
            for k, call in enumerate(calls):
                a, jac = call["a"], call["jac"][n]  # jac: (*out_n, L, S, d_out)
                L = a.shape[0]
                valid = torch.ones(a.shape[:2], dtype=torch.bool) if masks is None else masks(inputs, k, a).bool()
                rows = [n] if L == B else range(L)
                jac = jac.reshape(-1, *jac.shape[-3:])  # (out_numel_n, L, S, d_out)
                for r in rows:
                    for s in range(a.shape[1]):
                        if valid[r, s]:
                            a_list.append(a[r, s])
                            g_list.append(jac[:, r, s, :])
            V, w = _vectors(logits[n], targets[n], fisher, likelihood)  # (K, out_n)
            # g for each vector: (K, |S_n|, d_out)
            g = torch.stack([V @ gs for gs in g_list], dim=1)
            a = torch.stack(a_list)  # (|S_n|, d_a)
            if mode == "expand":
                A_n = a.T @ a
                G_n = torch.einsum("k,ksi,ksj->ij", w, g, g)
                count_positions += a.shape[0]
            else:
                abar = a.mean(0)
                A_n = torch.outer(abar, abar)
                ghat = g.sum(1)  # (K, d_out)
                G_n = torch.einsum("k,ki,kj->ij", w, ghat, ghat)
            A_sum = A_n if A_sum is None else A_sum + A_n
            G_sum = G_n if G_sum is None else G_sum + G_n
            n_examples += 1
    A = A_sum / (count_positions if mode == "expand" else n_examples)
    G = G_sum / n_examples
    if is_emb:
        A = torch.diagonal(A).clone()
    return A, G


def _vectors(logits_n, target_n, fisher, likelihood):
    V, w = output_fisher_vectors(logits_n, target_n, fisher, likelihood)
    return V.reshape(V.shape[0], -1), w


def layer_inputs(model, inputs, module_name) -> list:
    """Raw inputs of every call of a module (forward hooks only)."""
    seen = []
    h = model.get_submodule(module_name).register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        h.remove()
    return seen


# =========================================================================== MC statistics


def mc_categorical_error_budget(model, batches, stat):
    """Exact mean and expected squared error of a Monte-Carlo Fisher statistic.

    For each example n and each label y the per-draw statistic is ``stat(n, u)`` with
    ``u = J_nᵀ (p_n − e_y)`` (shape (T=1, C) outputs only). The MC estimate with S
    labels per example is (1/N) Σ_n (1/S) Σ_s stat(n, u_{n, y_s}); its mean is
    ``mean`` (the exact Fisher statistic) and, by independence of the draws,

        E‖estimate − mean‖²_F = (1/(N² S)) Σ_n Σ_y p_{n,y} ‖stat(n, u_y) − μ_n‖²_F.

    Returns ``(mean, expected_sq_error_for_S_equal_1)``; divide the latter by S.
    """
    means, var_sum, n_total = [], 0.0, 0
    for inputs, _ in batches:
        logits, jac = batch_jacobian(model, inputs)
        assert logits.ndim == 2, "one prediction per example only"
        for n in range(logits.shape[0]):
            p = logits[n].softmax(-1)
            C = p.shape[0]
            stats = [stat(jac[n].T @ (p - torch.eye(C, dtype=p.dtype)[y])) for y in range(C)]
            mu = sum(p[y] * stats[y] for y in range(C))
            var_sum += sum(p[y] * ((stats[y] - mu) ** 2).sum() for y in range(C))
            means.append(mu)
            n_total += 1
    mean = sum(means) / n_total
    return mean, float(var_sum) / n_total**2


# =========================================================================== cross-attention


def grouped_attention_factors(model, batches, module_name, groups, mode="expand", fisher="exact"):
    """Brute-force per-group KFAC factors of an ``nn.MultiheadAttention``'s in-projection,
    from :func:`reference_attention` (no rule code): ``groups`` is the expected grouping of
    the q/k/v blocks (tuples of block indices 0 q, 1 k, 2 v; each group sees the tensor of
    its first block). Group ``g``'s tokens: its input's positions, those masked by
    ``key_padding_mask`` excluded when ``g`` holds k or v; ``g_s`` = the gradient w.r.t. the
    group's blocks' projections at token ``s``, side by side. One call per forward pass.
    Returns ``[(A_g, G_g)]`` (``A_g`` with the homogeneous coordinate if the bias is trainable)."""
    mha = model.get_submodule(module_name)
    E = mha.embed_dim
    bias = mha.in_proj_bias is not None and mha.in_proj_bias.requires_grad
    sums = [[0, 0, 0] for _ in groups]  # A sum, G sum, positions
    n_examples = 0
    for inputs, targets in batches:
        seen = {}

        def hook(module, args, kwargs, output):
            names = ("query", "key", "value")
            q, k, v = (list(args) + [kwargs.get(n) for n in names][len(args) :])[:3]
            xs = [t if module.batch_first else t.transpose(0, 1) for t in (q, k, v)]
            eps = [torch.zeros(*x.shape[:2], E, dtype=x.dtype, requires_grad=True) for x in xs]
            kpm = kwargs.get("key_padding_mask")
            out, _ = reference_attention(module, *xs, key_padding_mask=kpm, attn_mask=kwargs.get("attn_mask"), eps=eps)
            stock = output[0] if module.batch_first else output[0].transpose(0, 1)
            torch.testing.assert_close(out.detach(), stock.detach(), rtol=1e-10, atol=1e-12)
            real = None if kpm is None else ~(kpm if kpm.dtype == torch.bool else torch.isneginf(kpm))
            seen.update(xs=[x.detach() for x in xs], eps=eps, real=real)
            return (out if module.batch_first else out.transpose(0, 1)), output[1]

        handle = mha.register_forward_hook(hook, with_kwargs=True)
        try:
            logits = model(inputs)
        finally:
            handle.remove()
        flat = logits.reshape(-1)
        jac = [torch.zeros(flat.numel(), *e.shape, dtype=e.dtype) for e in seen["eps"]]
        for i in range(flat.numel()):
            for j, g in enumerate(torch.autograd.grad(flat[i], seen["eps"], retain_graph=True)):
                jac[j][i] = g
        jac = [t.reshape(*logits.shape, *t.shape[1:]) for t in jac]  # (B, C, N, T, E)
        for n in range(logits.shape[0]):
            V, w = _vectors(logits[n], targets[n], fisher, "categorical")  # (K, C)
            for gi, blocks in enumerate(groups):
                x = seen["xs"][blocks[0]][n]  # (T, E)
                valid = torch.ones(x.shape[0], dtype=torch.bool)
                if seen["real"] is not None and any(j > 0 for j in blocks):
                    valid = seen["real"][n]
                a = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], -1) if bias else x
                a = a[valid]
                g = torch.cat([torch.einsum("kc,cte->kte", V, jac[j][n, :, n]) for j in blocks], -1)[:, valid]
                if mode == "expand":
                    sums[gi][0] = sums[gi][0] + a.T @ a
                    sums[gi][1] = sums[gi][1] + torch.einsum("k,ksi,ksj->ij", w, g, g)
                    sums[gi][2] += a.shape[0]
                else:
                    abar, ghat = a.mean(0), g.sum(1)
                    sums[gi][0] = sums[gi][0] + torch.outer(abar, abar)
                    sums[gi][1] = sums[gi][1] + torch.einsum("k,ki,kj->ij", w, ghat, ghat)
            n_examples += 1
    return [(A / (count if mode == "expand" else n_examples), G / n_examples) for A, G, count in sums]
