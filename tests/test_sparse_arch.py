"""Sparse-coder architectures: training-loss gradients against a hand-written dense reference.

The reference derives every gradient by hand (no autograd) with dense masks, in float64. It
catches AuxK gradients that never reach the encoder, thresholds that stop learning, and
crosscoder / transcoder penalties that use the wrong decoder norms.
"""

import pytest
import torch

from circuitlab.sparse.base import LossContext, config_class, make_coder

B, D, N = 24, 8, 32


def _coder(arch: str, kind: str):
    extra = {"k": 3, "aux_k": 5} if "topk" in arch else {}
    if arch == "jumprelu":
        extra = {"l0_coeff": 0.7, "bandwidth": 0.5, "init_threshold": 0.3}
    if arch == "relu":
        extra = {"l1_coeff": 0.9}
    if kind == "sae":
        shape = dict(d_in=D, d_sae=N)
    elif kind == "transcoder":
        shape = dict(d_in=D, d_sae=N, d_out=D, skip=True, hooks_in=("blocks.0.hook_resid_mid",),
                     hooks_out=("blocks.0.hook_mlp_out",))
    else:
        shape = dict(d_in=D, d_sae=N, n_sources=2)
    c = make_coder(config_class(arch)(seed=3, init_decoder_norm=0.7, **shape, **extra)).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in (c.b_enc, c.b_dec) + ((c.W_skip,) if c.W_skip is not None else ()):
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return c


def reference_grads(c, x, y, scale, dead):
    """Loss and gradients of every parameter, derived by hand."""
    cfg = c.cfg
    We, be, Wd, bd = (t.detach() for t in (c.W_enc, c.b_enc, c.W_dec, c.b_dec))
    Ws = c.W_skip.detach() if c.W_skip is not None else None
    T = cfg.n_targets_
    b_pre = bd if cfg.b_dec_in else torch.zeros_like(x[0])
    xc = x - b_pre
    h = xc @ We + be
    a = h.clamp_min(0)
    grads = {}
    extra_dh = torch.zeros_like(h)
    dWd_extra = torch.zeros_like(Wd)
    if cfg.arch == "relu":
        act_d = (h > 0).double()
        f = a
    elif cfg.arch == "topk":
        order = h.argsort(dim=1, descending=True)[:, : cfg.k]
        M = torch.zeros_like(h).scatter(1, order, 1.0)
        f = a * M
        act_d = M * (h > 0).double()
    elif cfg.arch == "batchtopk":
        t = a.flatten().sort(descending=True).values[cfg.k * x.shape[0] - 1]
        keep = ((a >= t) & (a > 0)).double()
        f = a * keep
        act_d = keep
    elif cfg.arch == "jumprelu":
        theta = c.log_threshold.detach().exp()
        eps = cfg.bandwidth
        on = (a > theta).double()
        K = (((a - theta) / eps).abs() < 0.5).double()
        f = a * on
        act_d = on * (h > 0).double()
    yhat = f @ Wd + bd + (x @ Ws if Ws is not None else 0)
    r = yhat - y
    loss = (r**2).sum() / B
    g_y = 2 * r / B
    df = g_y @ Wd.T
    blocks = Wd.view(N, T, -1)
    bn = blocks.norm(dim=-1)  # [N, T]
    if cfg.arch == "relu":
        lam = cfg.l1_coeff * scale
        dec = bn.sum(-1)
        loss = loss + lam * (f * dec).sum() / B
        df = df + lam * dec / B
        Fm = f.sum(0) / B
        dWd_extra += (lam * Fm[:, None, None] * blocks / bn[..., None]).view(N, -1)
    if cfg.arch in ("topk", "batchtopk") and dead is not None and dead.any():
        n_dead = int(dead.sum())
        kk = min(cfg.aux_k, n_dead)
        ad = a.masked_fill(~dead, -1.0)
        sel = ad.argsort(dim=1, descending=True)[:, :kk]
        A = torch.zeros_like(h).scatter(1, sel, 1.0)
        fa = a * A
        e = (y - yhat)
        ehat = fa @ Wd
        sc = cfg.aux_coeff * min(n_dead / cfg.aux_k, 1.0)
        loss = loss + sc * ((ehat - e) ** 2).sum() / B
        g_e = 2 * sc * (ehat - e) / B
        dWd_extra += fa.T @ g_e
        extra_dh += (g_e @ Wd.T) * A * (h > 0).double()
    if cfg.arch == "jumprelu":
        lam = cfg.l0_coeff * scale
        loss = loss + lam * on.sum() / B
        dtheta = (df * (-(theta / eps) * K)).sum(0) + lam * (-(1 / eps) * K).sum(0) / B
        grads["log_threshold"] = dtheta * theta
    dh = df * act_d + extra_dh
    grads["W_dec"] = f.T @ g_y + dWd_extra
    grads["b_dec"] = g_y.sum(0) - ((dh @ We.T).sum(0) if cfg.b_dec_in else 0)
    grads["W_enc"] = xc.T @ dh
    grads["b_enc"] = dh.sum(0)
    if Ws is not None:
        grads["W_skip"] = x.T @ g_y
    return loss, grads


@pytest.mark.parametrize("kind", ["sae", "transcoder", "crosscoder"])
@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_loss_gradients_match_dense_reference(arch, kind):
    c = _coder(arch, kind)
    g = torch.Generator().manual_seed(7)
    din = c.cfg.d_in * c.cfg.n_sources
    x = torch.randn(B, din, generator=g, dtype=torch.float64)
    y = None if c.cfg.autoencoder else torch.randn(B, c.cfg.d_out_ * c.cfg.n_targets_, generator=g, dtype=torch.float64)
    dead = torch.zeros(N, dtype=torch.bool)
    dead[::3] = True
    scale = 0.6
    out = c.loss(x, y, LossContext(sparsity_scale=scale, dead=dead))
    out.loss.backward()
    ref_loss, ref = reference_grads(c, x, x if y is None else y, scale, dead)
    assert torch.allclose(out.loss.detach(), ref_loss, rtol=1e-10, atol=1e-10)
    for name, gref in ref.items():
        got = c.W_enc_t.grad.t() if name == "W_enc" else getattr(c, name).grad  # held transposed
        assert got is not None, f"{name} received no gradient"
        assert torch.allclose(got, gref, rtol=1e-8, atol=1e-10), f"{arch}/{kind}: gradient of {name} differs"
    if "topk" in arch:
        # AuxK must reach the encoder columns of dead latents
        with_aux = c.W_enc_t.grad.clone()
        c.zero_grad()
        c.loss(x, y, LossContext(sparsity_scale=scale, dead=None)).loss.backward()
        diff = (with_aux - c.W_enc_t.grad).abs().sum(1)
        assert diff[dead].sum() > 1e-6 and diff[~dead].sum() == 0
    if arch == "jumprelu":
        assert c.log_threshold.grad.abs().sum() > 0, "thresholds receive no gradient"


def test_jumprelu_threshold_stays_fp32_and_learns_under_bf16():
    c = make_coder(config_class("jumprelu")(d_in=D, d_sae=N, bandwidth=0.5, init_threshold=0.3)).to(torch.bfloat16)
    c.log_threshold.data = c.log_threshold.data.float()
    x = torch.randn(B, D, dtype=torch.bfloat16)
    out = c.loss(x, None)
    out.loss.backward()
    assert c.log_threshold.dtype == torch.float32 and c.log_threshold.grad.dtype == torch.float32
    assert c.log_threshold.grad.abs().sum() > 0


def test_fold_scaling_preserves_function():
    for kind in ("sae", "transcoder", "crosscoder"):
        c = _coder("relu", kind)
        S, T = c.cfg.n_sources, c.cfg.n_targets_
        c.in_scale.copy_(torch.rand(S, dtype=torch.float64) + 0.5)
        c.out_scale.copy_(c.in_scale if c.cfg.autoencoder else torch.rand(T, dtype=torch.float64) + 0.5)
        x = torch.randn(5, c.cfg.d_in * S, dtype=torch.float64)
        s_in = c.in_scale.repeat_interleave(c.cfg.d_in)
        s_out = c.out_scale.repeat_interleave(c.cfg.d_out_)
        f0 = c.encode(x * s_in)
        y0 = c.decode(f0, x * s_in) / s_out
        c.fold_scaling()
        assert torch.allclose(c.encode(x), f0) and torch.allclose(c(x), y0)


@pytest.mark.parametrize("kind", ["sae", "transcoder"])
def test_topk_sparse_backward_gives_the_input_its_dense_gradient(kind):
    """The sparse encoder backward builds per-token input gradients only when the input needs
    one (a spliced coder being attributed through); they must equal dense autograd's."""
    from circuitlab.sparse.base import recon_loss

    c = _coder("topk", kind)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, c.cfg.d_in, generator=g, dtype=torch.float64, requires_grad=True)
    y = None if c.cfg.autoencoder else torch.randn(B, c.cfg.d_out_, generator=g, dtype=torch.float64)
    c.loss(x, y, LossContext()).loss.backward()
    got_x, got_bdec = x.grad.clone(), c.b_dec.grad.clone()
    x.grad = None
    c.zero_grad()
    f = c.activate(c.pre(x))
    y_hat = f @ c.W_dec + c.b_dec + (x @ c.W_skip if c.W_skip is not None else 0)
    recon_loss(y_hat, x if y is None else y, LossContext()).backward()
    assert torch.allclose(got_x, x.grad, rtol=1e-8, atol=1e-10)
    assert torch.allclose(got_bdec, c.b_dec.grad, rtol=1e-8, atol=1e-10)


def test_sparse_decode_backward_equals_gathered_rows():
    """The decoder's custom backward (CSR weight gradient, embedding_bag's per-sample kernel)
    against brute-force gathers of the chosen rows."""
    from circuitlab.sparse.sparse_grad import sparse_decode

    g = torch.Generator().manual_seed(5)
    W = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(N, generator=g)[:4] for _ in range(B)])
    vals = torch.rand(B, 4, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(B, D, generator=g, dtype=torch.float64)
    (sparse_decode(W, idx, vals) * up).sum().backward()
    got_W, got_v = W.grad.clone(), vals.grad.clone()
    W.grad = vals.grad = None
    ((W[idx] * vals[..., None]).sum(1) * up).sum().backward()
    assert torch.allclose(got_W, W.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got_v, vals.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,k,ties,grouped", [(1024, 32, False, 4), (1024, 32, True, 4), (6144, 32, False, 8),
                                               (6144, 32, True, 8), (1000, 32, False, 2), (512, 16, False, 4),
                                               (96, 8, False, 1)])
def test_row_topk_selects_the_same_values_as_torch_topk(n, k, ties, grouped):
    """The grouped pre-selection keeps exactly torch.topk's values, also with ties."""
    from circuitlab.sparse.sparse_grad import _group_size, row_topk

    assert _group_size(n, k) == grouped  # the cases exercise the grouped path (and the fallback)

    g = torch.Generator().manual_seed(n + k)
    h = torch.randn(300, n, generator=g)
    if ties:
        h = (h * 2).round()  # few distinct values: many ties at the k-th place
    vals, idx = row_topk(h, k)
    ref = h.topk(k, dim=-1).values
    assert torch.equal(vals.sort(-1, descending=True).values, ref)
    assert torch.equal(h.gather(1, idx), vals)
    assert all(len(set(r.tolist())) == k for r in idx)  # no column chosen twice


def test_latent_major_sampled_matmul_matches_brute_force():
    """LatentMajor.sampled reads a @ m.T at the (token, latent) pairs, back in token-major order."""
    from circuitlab.sparse.sparse_grad import LatentMajor

    g = torch.Generator().manual_seed(5)
    B, n, d, k = 64, 96, 12, 7
    idx = torch.rand(B, n, generator=g).topk(k, -1).indices
    a, m = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(B, d, generator=g, dtype=torch.float64)
    got = LatentMajor(idx, n).sampled(a, m)
    assert torch.allclose(got, (a[idx] * m[:, None, :]).sum(-1), rtol=1e-12, atol=1e-12)


def test_encoder_product_through_onednn_matches_addmm_and_the_topk_loss_uses_it():
    """The fp32 CPU encoder product of a TopK step (oneDNN where available) equals torch.addmm's
    up to fp32 rounding, is only taken for the held-transposed layout and fp32, and the TopK
    loss built on it reconstructs like the dense reference."""
    from circuitlab.sparse.sparse_grad import _onednn_linear

    g = torch.Generator().manual_seed(11)
    x, W_t, b = torch.randn(256, 64, generator=g), torch.randn(512, 64, generator=g) / 8, torch.randn(512, generator=g)
    h = _onednn_linear(x, W_t.t(), b)
    if h is None:
        pytest.skip("this torch build has no oneDNN linear kernel")
    assert torch.allclose(h, torch.addmm(b, x, W_t.t()), rtol=1e-5, atol=1e-5)
    assert _onednn_linear(x, W_t.t().contiguous(), b) is None  # not the held-transposed layout
    assert _onednn_linear(x.double(), W_t.double().t(), b.double()) is None
    c = make_coder(config_class("topk")(d_in=64, d_sae=512, k=8, seed=3))
    with torch.no_grad():
        c.b_enc.copy_(b / 10)
        vals, idx = c.pre(x).topk(8, dim=-1)
        ref = torch.zeros(256, 512).scatter(1, idx, vals.relu()) @ c.W_dec + c.b_dec
    assert torch.allclose(c.loss(x, None).y_hat, ref, rtol=1e-5, atol=1e-5)
