"""Sparse coders on a (tiny random) model: activation store, cache, splice, eval, latent patching;
AtP*, RelP and IG on latents against exact patching and the component methods (gpt2-zoo coders)."""

import torch

from circuitlab.engine.hooks import count_hooks
from circuitlab.sparse.base import config_class, make_coder
from circuitlab.sparse.store import (
    ActivationCache, ActivationSource, Exclusion, ShardLoader, ShardPlan, SourceSpec, make_shard,
)
from circuitlab.sparse.splice import splice

DOCS = ["<bos> when Mary and John went to the store , John gave a drink to Mary .",
        "<bos> the capital of France is Paris .", "<bos> then Tom went to the park ."] * 3


def _sae(model, layer=1, arch="topk", **kw):
    kw = {"k": 8, **kw} if "topk" in arch else kw
    return make_coder(config_class(arch)(d_in=model.d_model, d_sae=128, hooks_in=(f"blocks.{layer}.hook_resid_post",),
                                         init_decoder_norm=0.3, **kw))


def test_store_one_forward_excludes_bos_and_special_tokens(gpt2):
    spec = SourceSpec(("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"))
    ex = Exclusion(bos=True, token_ids=(1,))  # <unk>
    src = ActivationSource([gpt2], spec, ex, ctx_len=16)
    rows = src.rows(DOCS)
    assert rows.x.shape[1] == 2 * gpt2.d_model
    assert (rows.pos > 0).all() and (rows.tokens != 1).all()
    from circuitlab.engine.cache import capture
    from circuitlab.sparse.store import tokenize_documents

    toks, _ = tokenize_documents(gpt2.tokenizer, DOCS, 16)
    ref = capture(gpt2, toks, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"]
    assert torch.allclose(rows.x[:, gpt2.d_model:], ref[rows.doc.long(), rows.pos.long()], atol=1e-6)
    cut = src.calibrate(DOCS, factor=1.0)  # median: about half the tokens are above
    src.exclusion = Exclusion(True, (1,), cut)
    assert 0 < len(src.rows(DOCS)) < len(rows)


def test_cache_written_atomically_and_streamed_per_shard(gpt2, tmp_path, monkeypatch):
    import circuitlab.sparse.store as store

    monkeypatch.setattr(store, "documents", lambda seed, n: [DOCS[seed % len(DOCS)]] * n)
    src = ActivationSource(
        [gpt2], SourceSpec(("blocks.0.hook_resid_mid",), ("blocks.0.hook_mlp_out",)), Exclusion(), 16
    )
    plan = ShardPlan(seed=1, shard_tokens=40, docs_per_batch=4)
    cache = ActivationCache(tmp_path / "c").build(src, plan, 3)
    assert cache.n_shards == 3 and not list((tmp_path / "c").glob(".*tmp"))
    r = cache.read(1)
    fresh = make_shard(src, plan, 1)
    assert torch.equal(r.x, fresh.x) and torch.equal(r.y, fresh.y) and torch.equal(r.tokens, fresh.tokens)
    reads = []
    loader = ShardLoader(lambda i: reads.append(i) or cache.read(i), 3, 20, buffer_shards=1)
    loader.next()
    assert len(reads) == 1  # only one shard was loaded
    cache.build(src, plan, 4)  # extends, keeps existing shards
    assert cache.n_shards == 4


def test_splice_error_term_is_exact_and_cleans_up(gpt2):
    from circuitlab.engine.forward import run_to_final

    sae = _sae(gpt2)
    toks = torch.randint(2, 20, (2, 7))
    clean = run_to_final(gpt2, toks)
    n0 = count_hooks(gpt2.bridge)
    with splice(gpt2, [sae], error=True) as sp:
        assert sp.latent_hooks == ["blocks.1.hook_latents"]
        assert torch.equal(run_to_final(gpt2, toks), clean)
    with splice(gpt2, [sae], error=False):
        assert not torch.allclose(run_to_final(gpt2, toks), clean)
    assert count_hooks(gpt2.bridge) == n0 and "blocks.1.hook_latents" not in gpt2.bridge.hook_dict


def test_eval_metrics_on_tiny_model(gpt2):
    from circuitlab.sparse.evaluate import evaluate

    tc = make_coder(config_class("relu")(d_in=gpt2.d_model, d_sae=64, d_out=gpt2.d_model, skip=True,
                                         hooks_in=("blocks.0.hook_resid_mid",), hooks_out=("blocks.0.hook_mlp_out",)))
    for coder in (_sae(gpt2), tc):
        m = evaluate(gpt2, coder, docs=DOCS, ctx_len=16)
        assert abs(m["ce_coder_with_error"] - m["ce_clean"]) < 1e-6 and m["kl_coder_with_error"] < 1e-8
        assert m["kl_coder"] > 0 and 0 <= m["dead_fraction"] <= 1 and m["fvu"] > 0
        from circuitlab.sparse.store import tokenize_documents

        _, lengths = tokenize_documents(gpt2.tokenizer, DOCS, 16)
        assert m["tokens"] == int((lengths - 1).sum())  # BOS excluded, no padding


def _ioi(gpt2):
    import circuitlab as cl
    from tiny import IOI_PAIRS

    return cl.tasks.from_pairs(gpt2, IOI_PAIRS)


def test_latent_patching(gpt2):
    from circuitlab.engine.cache import capture
    from circuitlab.engine.forward import metric_per_prompt
    from circuitlab.engine.gradients import forward_for_grads
    from circuitlab.sparse.attribution import patch_latents

    task = _ioi(gpt2)
    sae = _sae(gpt2, layer=1)
    units = [0, 5, 17]
    ex = patch_latents(gpt2, task, [sae], "exact", positions=["S2", 3], units=units)
    assert ex.values.shape == (1, 2, 3) and ex.labels[0] == "L1.F0@S2"
    # reference: add (f_src - f_base)_u * W_dec[u] at the site, by hand
    site = "blocks.1.hook_resid_post"
    base, src = task.corrupt_tokens, task.clean_tokens
    fb = sae.encode(capture(gpt2, base, [site])[site])
    fs = sae.encode(capture(gpt2, src, [site])[site])
    m = task.metric
    b0 = float(m.reduce(metric_per_prompt(gpt2, base, m)[None])[0])
    pos = task.roles["S2"]
    u = 5
    rows = torch.arange(base.shape[0])

    def hook(a):
        a = a.clone()
        a[rows, pos] += (fs[rows, pos, u] - fb[rows, pos, u])[:, None] * sae.W_dec[u].detach()
        return a

    ref = float(m.reduce(metric_per_prompt(gpt2, base, m, [(site, hook)])[None])[0]) - b0
    assert abs(float(ex.values[0, 0, 1]) - ref) < 1e-4
    # AtP on latents = (f_src - f_base) . (dmetric/dsite . W_dec[u])
    at = patch_latents(gpt2, task, [sae], "atp", positions=["S2"], units=units)
    g = forward_for_grads(gpt2, base, m, [site]).grads()[site]
    gu = g[rows, pos] @ sae.W_dec[u].detach()
    ref_atp = float(((fs[rows, pos, u] - fb[rows, pos, u]) * gu).sum())
    assert abs(float(at.values[0, 0, 1]) - ref_atp) < 1e-4 * max(1, abs(ref_atp))


def _zoo_coders(*names):
    from circuitlab.sparse.bundled import PRETRAINED
    from circuitlab.sparse.files import load_coder

    return [load_coder(PRETRAINED / "gpt2-zoo" / f"gpt2-zoo_{n}") for n in names]


def _unspliced_base_metric(model, task):
    from circuitlab.engine.forward import metric_per_prompt

    base, _ = task.base_and_source("denoising")
    m = task.metric
    return float(m.reduce(metric_per_prompt(model, base, m)[None])[0])


def test_latent_estimators_split_their_site_and_keep_the_model(zoo_model):
    """Latents + error term of each coder sum to the component method's value of the coder's
    site (RelP: the relevance of the layer), and no method changes the unpatched metric."""
    import circuitlab as cl
    from circuitlab.sparse.attribution import LATENT_METHODS

    model = zoo_model("gpt2-zoo")
    task = cl.tasks.bundled(model, "ioi", n=2, seed=0)
    coders = _zoo_coders("resid_L1", "transcoder_L2")  # writes resid_post 1 and mlp_out 2
    pos = ["S2", "END"]
    b0 = _unspliced_base_metric(model, task)
    n_hooks = count_hooks(model.bridge)
    for method in LATENT_METHODS:
        units = list(range(8)) if method == "exact" else None  # exact: a few latents (one run each)
        kw = {"steps": 4} if method == "ig" else {}  # the split holds at any number of steps
        r = cl.patch(model, task, "latents", method=method, coders=coders, positions=pos, units=units, **kw)
        assert abs(r.baseline - b0) < 1e-6 * max(1.0, abs(b0)), method
        assert count_hooks(model.bridge) == n_hooks
        assert r.extras["error"].shape == (2, 2) and r.values.shape == (2, 2, len(units or range(1024)))
        if method in ("exact", "atp*"):
            continue
        for i, (layer, family) in enumerate([(1, "resid_post"), (2, "mlp_out")]):
            site = cl.patch(model, task, family, method=method, positions=pos, layers=[layer], **kw).values[0]
            split = r.values[i].sum(-1) + r.extras["error"][i]
            assert torch.allclose(split, site, rtol=1e-4, atol=1e-5), (method, family, split, site)
            assert site.abs().max() > 1e-2  # not a vacuous zero


def test_latent_ig_sums_to_patching_the_whole_site(zoo_model):
    """IG on activations interpolates one coder's latents and error term together: over a coder
    the scores add up to exact patching of its whole site at every position."""
    import circuitlab as cl
    from circuitlab.engine.cache import capture
    from circuitlab.engine.forward import metric_per_prompt

    model = zoo_model("gpt2-zoo")
    task = cl.tasks.bundled(model, "ioi", n=2, seed=0)
    coders = _zoo_coders("resid_L1", "transcoder_L2")
    ig = cl.patch(model, task, "latents", method="ig", coders=coders, variant="activations", steps=6,
                  rule="gauss-legendre")
    assert ig.meta["variant"] == "activations" and ig.cost.backward_passes == 12  # 6 steps per coder
    base, src = task.base_and_source("denoising")
    b0, m = _unspliced_base_metric(model, task), task.metric
    for i, c in enumerate(coders):
        s = capture(model, src, [c.hook_out])[c.hook_out]
        patched = float(m.reduce(metric_per_prompt(model, base, m, [(c.hook_out, lambda a, s=s: s)])[None])[0])
        total = float(ig.values[i].sum() + ig.extras["error"][i].sum())
        assert abs(total - (patched - b0)) < 1e-3 * max(1.0, abs(patched - b0)), (c.hook_out, total, patched - b0)


def test_latent_ig_converges_to_exact_where_one_latent_carries_the_change(gpt2):
    """A coder at the last layer whose one latent reads (and writes) exactly the direction in
    which the answer position's residual changes: IG's path is then the patch's own path, so IG
    with many steps equals exact patching, while AtP's first-order estimate does not."""
    import circuitlab as cl
    from circuitlab.engine.cache import capture
    from tiny import IOI_PAIRS

    task = cl.tasks.from_pairs(gpt2, IOI_PAIRS[:1])
    site = f"blocks.{gpt2.n_layers - 1}.hook_resid_post"
    base, src = task.base_and_source("denoising")
    end = int(task.roles["END"][0])
    d = capture(gpt2, src, [site])[site][0, end] - capture(gpt2, base, [site])[site][0, end]
    c = make_coder(config_class("relu")(d_in=gpt2.d_model, d_sae=1, hooks_in=(site,)))
    with torch.no_grad():  # f = x.w + 10 > 0 always; decode(f) = (x.w) w: the change at END is f's alone
        c.W_enc_t.copy_(d[None] / d.norm())
        c.W_dec.copy_(d[None] / d.norm())
        c.b_enc.fill_(10.0)
        c.b_dec.zero_()
    kw = dict(coders=[c], positions=["END", 3])
    ex = cl.patch(gpt2, task, "latents", method="exact", **kw)
    ig = cl.patch(gpt2, task, "latents", method="ig", variant="activations", steps=12, rule="gauss-legendre", **kw)
    at = cl.patch(gpt2, task, "latents", method="atp", **kw)
    e = float(ex.values[0, 0, 0])
    assert abs(e) > 1e-2 and float(ex.values[0, 1, 0]) == 0.0  # position 3 cannot reach the last layer's END
    assert abs(float(ig.values[0, 0, 0]) - e) < 1e-5 * max(1.0, abs(e) * 100)
    assert abs(float(at.values[0, 0, 0]) - e) > 1e-3  # the nonlinearity IG integrates over is real
    assert ig.extras["error"].abs().max() < 1e-5 and ex.extras["error"].abs().max() < 1e-5


def test_latent_atp_star_is_atp_with_graddrop_ranks(zoo_model):
    """Latents are not query/key nodes, so AtP* values are AtP's; GradDrop's rank score of a
    last-layer SAE keeps every layer's gradient (L/(L-1) |AtP|), and a last-layer transcoder's
    latents lose theirs when their own MLP output is dropped (|AtP|)."""
    import circuitlab as cl

    model = zoo_model("gpt2-zoo")
    task = cl.tasks.bundled(model, "ioi", n=2, seed=0)
    L = model.n_layers
    for name, factor in (("resid_L3", L / (L - 1)), ("transcoder_L3", 1.0)):
        coders = _zoo_coders(name)
        at = cl.patch(model, task, "latents", method="atp", coders=coders, positions=["S2", "END"])
        st = cl.patch(model, task, "latents", method="atp*", coders=coders, positions=["S2", "END"])
        assert torch.equal(st.values, at.values) and torch.equal(st.extras["error"], at.extras["error"])
        assert torch.allclose(st.extras["rank_score"], factor * at.values.abs(), rtol=1e-5, atol=1e-7), name
        assert st.cost.backward_passes == 1 + L
    quick = cl.patch(model, task, "latents", method="atp*", coders=coders, positions=["END"], graddrop=False)
    assert "rank_score" not in quick.extras and quick.cost.backward_passes == 1


def test_exact_error_term_patch(gpt2):
    """The exact error-term effect: the site at its base value plus the error term's change."""
    from circuitlab.engine.cache import capture
    from circuitlab.engine.forward import metric_per_prompt
    from circuitlab.sparse.attribution import patch_latents

    task = _ioi(gpt2)
    sae = _sae(gpt2, layer=1)
    site = "blocks.1.hook_resid_post"
    r = patch_latents(gpt2, task, [sae], "exact", positions=["S2"], units=[0])
    base, src = task.corrupt_tokens, task.clean_tokens
    xb, xs = (capture(gpt2, t, [site])[site] for t in (base, src))
    with torch.no_grad():
        d_err = (xs - xb) - (sae.encode(xs) - sae.encode(xb)) @ sae.W_dec
    rows, pos = torch.arange(base.shape[0]), task.roles["S2"]

    def hook(a):
        a = a.clone()
        a[rows, pos] += d_err[rows, pos]
        return a

    m = task.metric
    ref = m.reduce(metric_per_prompt(gpt2, base, m, [(site, hook)])[None])[0] - r.baseline
    assert abs(float(r.extras["error"][0, 0]) - float(ref)) < 1e-5 and abs(float(ref)) > 1e-4


def test_exact_latents_beside_a_last_layer_transcoder(gpt2):
    """A transcoder writing the last block's MLP output, scored beside a coder at another layer:
    each coder's exact effects are those it has alone (the engine may run the last MLP at the
    read positions only, which a transcoder reading the full residual stream cannot follow)."""
    from circuitlab.sparse.attribution import patch_latents

    task = _ioi(gpt2)
    last = gpt2.n_layers - 1
    tc = make_coder(config_class("relu")(d_in=gpt2.d_model, d_sae=128, d_out=gpt2.d_model,
                                         hooks_in=(f"blocks.{last}.hook_resid_mid",),
                                         hooks_out=(f"blocks.{last}.hook_mlp_out",)))
    sae = _sae(gpt2, layer=0)
    both = patch_latents(gpt2, task, [sae, tc], "exact", positions=["S2", "END"])
    for i, c in enumerate((sae, tc)):
        alone = patch_latents(gpt2, task, [c], "exact", positions=["S2", "END"])
        assert torch.equal(both.values[i], alone.values[0])
        assert torch.equal(both.extras["error"][i], alone.extras["error"][0])
    assert both.values[0].abs().max() > 1e-4 and both.values[1].abs().max() > 1e-6


def test_latent_options_are_checked(gpt2):
    import pytest

    import circuitlab as cl
    from circuitlab.sparse.attribution import patch_latents

    task, sae = _ioi(gpt2), _sae(gpt2)
    with pytest.raises(ValueError, match="'ig'"):
        patch_latents(gpt2, task, [sae], "relp", steps=4)
    with pytest.raises(ValueError, match="variant"):
        cl.patch(gpt2, task, "latents", method="ig", coders=[sae], variant="neurons")
    with pytest.raises(ValueError, match="atp"):
        patch_latents(gpt2, task, [sae], "atp_star")
    with pytest.raises(ValueError, match="attention rule"):
        patch_latents(gpt2, task, [sae], "relp", attention="softmax")
    r = cl.patch(gpt2, task, "latents", method="relp", coders=[sae], attention="attnlrp", positions=["END"])
    assert r.meta["attention"] == "attnlrp" and r.method == "relp"


def test_dashboard_cards(gpt2, tmp_path):
    from circuitlab.sparse.dashboard import latent_cards, save_dashboard

    sae = _sae(gpt2, layer=2)
    cards = latent_cards(gpt2, sae, [0, 3], docs=DOCS, ctx_len=16)
    assert len(cards) == 2
    c = cards[0]
    assert len(c.promoted) == 10 and c.promoted[0][1] >= c.promoted[-1][1]
    if c.top_contexts:
        ctx = c.top_contexts[0]
        assert abs(ctx.activation - c.max_activation) < 1e-6 and 0 <= ctx.index < len(ctx.tokens)
    save_dashboard(cards, tmp_path / "d.html")
    assert "latent 0" in (tmp_path / "d.html").read_text()
