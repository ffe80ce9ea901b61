"""Attribution graphs: exact replacement model, edges vs interventions, biases, pruning, scores, files."""

from __future__ import annotations

import copy

import pytest
import torch

from circuitlab.engine.forward import final_logits, run_to_final
from circuitlab.engine.hooks import count_hooks
from circuitlab.engine.sites import hook_name
from circuitlab.graphs.attribute import GraphConfig, attribute
from circuitlab.graphs.fit import FitConfig, fit_transcoders
from circuitlab.graphs.graph import Graph
from circuitlab.graphs.prune import prune, pruned_graph, scores, subgraph_scores
from circuitlab.graphs.replacement import clean_run, frozen_run
from circuitlab.graphs.transcoders import TranscoderSet, as_transcoders, load_transcoders, save_transcoders
from circuitlab.graphs.verify import intervention_effects, node_target, target_nodes
from circuitlab.sparse.base import config_class, make_coder

PROMPTS = ["when Mary and John went to the store , John gave a drink to",
           "then Tom and Anna went to the park , Anna gave a book to",
           "when John and Mary went to the park , Mary gave a book to"]
PROMPT = "when Mary and John went to the store , John gave"

_TC: dict = {}


def transcoders(model, family: str, **kw) -> TranscoderSet:
    key = (family, repr(sorted(kw.items())))
    if key not in _TC:
        _TC[key] = fit_transcoders(model, PROMPTS, FitConfig(n_features=48, steps=120, **kw))
    return _TC[key]


def _sum_error(g: Graph) -> torch.Tensor:
    rows = target_nodes(g)
    A = g.adjacency[rows]
    err = (A.sum(1) + g.bias[rows] - g.preact[rows]).abs()
    scale = A.abs().sum(1) + g.bias[rows].abs()
    # float32 rounding of large cancelling terms (random 3x-scaled weights): the backward pass cancels
    # intermediate values far larger than the row's own terms, so the allowance scales with the row.
    # Seen on one machine: median |error| / scale 2e-7, worst 4e-5 (a CPU's kernels set the rounding).
    return err - 1e-4 * scale


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_replacement_forward_is_exact(tiny_model, arch):
    model = tiny_model(arch)
    before = count_hooks(model.bridge)
    tcs = transcoders(model, arch)
    toks = model.to_tokens(PROMPT)
    clean = clean_run(model, tcs, toks)
    real = final_logits(model, run_to_final(model, toks[None]))[0, -1]
    assert torch.allclose(clean.logits, real.float(), atol=1e-4)
    for l, tc in enumerate(tcs.layers):  # error node makes each MLP output exact
        recon = tc.decode(clean.acts[l], clean.reads[l]) + clean.errors[l]
        assert torch.allclose(recon, clean.mlp_out[l], atol=1e-4)
    assert count_hooks(model.bridge) == before


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_edges_plus_bias_equal_preactivations(tiny_model, arch):
    model = tiny_model(arch)
    before = count_hooks(model.bridge)
    g = attribute(model, transcoders(model, arch), PROMPT, cfg=GraphConfig(max_feature_nodes=None, batch_size=64))
    assert g.n_features == g.meta["n_active"] > 0
    assert (_sum_error(g) <= 1e-3).all()
    rows = target_nodes(g)  # most rows are exact to float32 rounding, not just within the allowance
    rel = ((g.adjacency[rows].sum(1) + g.bias[rows] - g.preact[rows]).abs()
           / (g.adjacency[rows].abs().sum(1) + g.bias[rows].abs()))
    assert rel.median() < 1e-5, rel.median()
    # the bias really is "everything but the sources": a frozen run without sources agrees
    tn = target_nodes(g)[:5]
    clean = clean_run(model, transcoders(model, arch), g.tokens)
    b = frozen_run(model, transcoders(model, arch), clean, [node_target(g, i) for i in tn], bias_only=True)[0]
    assert torch.allclose(b, g.bias[tn], atol=1e-4)
    assert count_hooks(model.bridge) == before


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_edge_matches_an_intervention(tiny_model, arch):
    model = tiny_model(arch)
    tcs = transcoders(model, arch)
    g = attribute(model, tcs, PROMPT, cfg=GraphConfig(max_feature_nodes=24, batch_size=12))
    assert g.n_features == 24  # the rest merged into error nodes
    assert (_sum_error(g) <= 1e-3).all()
    sources = list(range(g.n_features)) + list(range(g.error_start, g.logit_start))
    measured, predicted = intervention_effects(model, tcs, g, sources)
    assert predicted.abs().max() > 0.01
    assert torch.allclose(measured, predicted, atol=1e-3, rtol=1e-4), (measured - predicted).abs().max()


@pytest.mark.parametrize("kw", [dict(arch="jumprelu", fields={}), dict(arch="topk", fields={"k": 6}),
                                dict(arch="batchtopk", fields={"k": 6}), dict(skip=True),
                                dict(read="resid_mid")])
def test_transcoder_variants(gpt2, kw):
    tcs = transcoders(gpt2, "gpt2", **kw)
    g = attribute(gpt2, tcs, PROMPT, cfg=GraphConfig(max_feature_nodes=16, batch_size=16))
    assert (_sum_error(g) <= 1e-3).all()
    sources = list(range(0, g.n_features, 3)) + list(range(g.error_start, g.logit_start, 5))
    measured, predicted = intervention_effects(gpt2, tcs, g, sources)
    assert torch.allclose(measured, predicted, atol=1e-3, rtol=1e-4), (measured - predicted).abs().max()


def test_targets_and_logit_selection(gpt2):
    tcs = transcoders(gpt2, "gpt2")
    g = attribute(gpt2, tcs, PROMPT, cfg=GraphConfig(max_feature_nodes=8))
    assert 1 <= g.n_logits <= 10
    assert float(g.logit_probs.sum()) >= 0.95 or g.n_logits == 10
    assert torch.all(g.logit_probs[:-1] >= g.logit_probs[1:])
    g1 = attribute(gpt2, tcs, PROMPT, target=" Mary", cfg=GraphConfig(max_feature_nodes=8))
    assert g1.n_logits == 1 and g1.logit_strs[0].strip() == "Mary"
    with pytest.raises(ValueError):
        attribute(gpt2, tcs, PROMPT, target=" not a single token")


def test_pruning_and_scores(gpt2):
    g = attribute(gpt2, transcoders(gpt2, "gpt2"), PROMPT, cfg=GraphConfig(max_feature_nodes=None, batch_size=64))
    full = scores(g)
    pr = prune(g)
    assert pr.node_mask[g.token_start:].all()  # tokens and logits always kept
    kept = pr.kept_features(g)
    assert 0 < len(kept) < g.n_features
    pg = pruned_graph(g, pr)
    sp = scores(pg, "pruned")
    sub = subgraph_scores(g, kept[: len(kept) // 2])
    for s in (full, sp, sub):
        assert 0 <= s.replacement <= 1 and 0 <= s.completeness <= 1
    assert sp.graph == "pruned" and sub.graph == "sub"
    assert abs(subgraph_scores(g, range(g.n_features)).completeness - full.completeness) < 1e-6
    assert (_sum_error(pg) <= 1e-3).all()  # merging keeps edges + bias exact
    assert full.completeness >= sp.completeness - 1e-6
    loose = prune(g, node_threshold=0.5, edge_threshold=0.9)
    assert loose.node_mask[: g.n_features].sum() <= pr.node_mask[: g.n_features].sum()
    assert loose.node_mask[g.token_start:].all()
    # every kept edge joins kept nodes
    e = pr.edge_mask
    assert not e[~pr.node_mask].any() and not e[:, ~pr.node_mask].any()
    with pytest.raises(ValueError):
        prune(g, node_threshold=0)


def test_graph_save_load(gpt2, tmp_path):
    g = attribute(gpt2, transcoders(gpt2, "gpt2"), PROMPT, cfg=GraphConfig(max_feature_nodes=8))
    g.save(tmp_path / "g")
    h = Graph.load(tmp_path / "g")
    assert torch.equal(h.adjacency, g.adjacency) and h.token_strs == g.token_strs
    assert [h.node_id(i) for i in range(h.n_nodes)] == [g.node_id(i) for i in range(g.n_nodes)]
    with pytest.raises(FileNotFoundError):
        Graph.load(tmp_path / "missing")


def test_transcoder_files_and_sets(gpt2, tmp_path):
    tcs = transcoders(gpt2, "gpt2", arch="jumprelu", fields={})
    save_transcoders(tcs, tmp_path / "tc")
    back = load_transcoders(tmp_path / "tc")
    assert len(back) == len(tcs) and back[1].cfg.arch == "jumprelu"
    assert torch.allclose(back[1].W_enc, tcs[1].W_enc) and torch.allclose(back[1].threshold, tcs[1].threshold)
    assert back[2].hook_in == tcs[2].hook_in == "blocks.2.ln2.hook_out"
    x = torch.randn(5, gpt2.d_model)
    assert torch.allclose(back[1].decode(back[1].encode(x), x), tcs[1].decode(tcs[1].encode(x), x), atol=1e-5)
    assert not any(p.requires_grad for c in back.layers for p in c.parameters())  # held frozen
    mine = [copy.deepcopy(c).requires_grad_(True) for c in tcs.layers]
    ts = as_transcoders(mine[::-1])  # any order: sorted by the layer each coder writes
    assert [c.hook_out for c in ts.layers] == [f"blocks.{l}.hook_mlp_out" for l in range(gpt2.n_layers)]
    assert all(p.requires_grad for p in mine[0].parameters())  # the caller's coders are copied, not frozen
    with pytest.raises(ValueError, match="each layer"):
        TranscoderSet([tcs[0], tcs[2]])
    with pytest.raises(TypeError, match="not a circuitlab.sparse coder"):
        TranscoderSet([object()])
    sae = make_coder(config_class("relu")(d_in=gpt2.d_model, d_sae=8, hooks_in=("blocks.0.hook_mlp_out",)))
    mp = make_coder(config_class("mpsae")(d_in=gpt2.d_model, d_sae=8, k=2, hooks_in=("blocks.0.hook_mlp_out",)))
    with pytest.raises(ValueError, match="own encoder"):
        TranscoderSet([mp])
    TranscoderSet([sae])  # an SAE on the MLP output replaces it too
    resid = make_coder(config_class("relu")(d_in=gpt2.d_model, d_sae=8, hooks_in=("blocks.0.hook_resid_post",)))
    with pytest.raises(ValueError, match="must write blocks.0.hook_mlp_out"):
        TranscoderSet([resid])
    with pytest.raises(FileNotFoundError):
        load_transcoders(tmp_path / "none")


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "relu"])
def test_circuitlab_sparse_transcoders_adapt(gpt2, tmp_path, arch):
    import circuitlab.sparse as sparse
    from circuitlab.sparse.files import save_coder

    kw = {"k": 4} if arch == "topk" else {}
    coders = []
    for l in range(gpt2.n_layers):
        cfg = sparse.transcoder_config(arch, l, gpt2.d_model, 32, skip=True, **kw)
        c = sparse.make_coder(cfg)
        with torch.no_grad():
            c.b_enc.fill_(0.2)
            c.W_skip.normal_(0, 0.05)
        coders.append(c)
        save_coder(c, tmp_path / f"tc_L{l}")
    sae_cfg = sparse.config_class("relu")(d_in=gpt2.d_model, d_sae=16, hooks_in=(hook_name("resid_post", 0),))
    save_coder(sparse.make_coder(sae_cfg), tmp_path / "sae")
    for ts in (load_transcoders(tmp_path), as_transcoders(coders)):  # files (SAE skipped) and objects
        assert len(ts) == gpt2.n_layers and ts[0].hook_in == hook_name("resid_mid", 0) and ts[0].W_skip is not None
        x = torch.randn(5, gpt2.d_model)
        with torch.no_grad():
            assert torch.allclose(ts[1].encode(x), coders[1].encode(x), atol=1e-5)
            assert torch.allclose(ts[1].decode(ts[1].encode(x), x), coders[1](x), atol=1e-5)
    g = attribute(gpt2, load_transcoders(tmp_path), PROMPT, cfg=GraphConfig(max_feature_nodes=12, batch_size=12))
    assert (_sum_error(g) <= 1e-3).all()
    nodes = list(range(0, g.n_features, 3)) + [g.token_start + 2]
    m, p = intervention_effects(gpt2, load_transcoders(tmp_path), g, nodes)
    assert torch.allclose(m, p, atol=1e-3, rtol=1e-4)
