"""Sparse coders on a (tiny random) model: activation store, cache, splice, eval, latent patching."""

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
