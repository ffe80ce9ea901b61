"""Edges and circuits against ground truth: exact edge patching, node patching, invariants."""

import pytest
import torch

import circuitlab as cl
from circuitlab import circuits as cc
from circuitlab.circuits.graph import component_graph
from circuitlab.engine.forward import metric_per_prompt
from tiny import save_linear_gpt2


def same_task(model, pairs):
    return cl.tasks.from_pairs(model, [dict(p, corrupt=p["clean"]) for p in pairs])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_eap_zero_when_clean_equals_corrupt(tiny_model, ioi_pairs, arch, direction):
    m = tiny_model(arch)
    task = same_task(m, ioi_pairs)
    for scores in (cc.eap(m, task, direction), cc.eap(m, task, direction, per_position=True),
                   cc.eap_ig(m, task, direction, steps=3)):
        assert scores.values.abs().max() < 1e-6, scores.method


def test_graph_is_gqa_aware_and_respects_order(tiny_model):
    g = component_graph(tiny_model("llama"))  # 4 query heads, 2 key/value heads
    assert len([r for r in g.receivers if r.layer == 0 and r.kind == "k"]) == 2
    assert len([r for r in g.receivers if r.layer == 0 and r.kind == "q"]) == 4
    assert not g.mask[g.sender("L1.H0"), g.receiver("L1.H0.q")]  # same layer: no edge
    assert g.mask[g.sender("L1.H0"), g.receiver("L1.mlp")]  # sequential block: head feeds its MLP
    neox = component_graph(tiny_model("neox"))  # parallel attention and MLP
    assert not neox.mask[neox.sender("L1.H0"), neox.receiver("L1.mlp")]
    with pytest.raises(ValueError, match="not additive"):
        component_graph(tiny_model("gemma2"))


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    """GPT-2 made linear (see tests/test_estimators.py): identity MLP activation, constant
    attention, LayerNorm epsilon 1e4 with gains x100; weights x3 so effects are not tiny."""
    d = save_linear_gpt2(tmp_path_factory.mktemp("linear_edges"), weight_scale=3.0)
    return cl.load(str(d), device="cpu", dtype=torch.float64)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("per_position", [False, True])
def test_linear_model_eap_equals_exact_edge_patching(linear_model, ioi_pairs, direction, per_position):
    task = cl.tasks.from_pairs(linear_model, ioi_pairs)
    est = cc.eap(linear_model, task, direction, per_position=per_position)
    ig = cc.eap_ig(linear_model, task, direction, steps=2, per_position=per_position)
    # per position: exact-patch the 40 largest edges (and 20 more) at every position, to stay fast
    edges = [l.split("@")[0] for l, _ in est.top(10 ** 6)]
    edges = list(dict.fromkeys(edges))
    edges = edges[:40] + edges[-20:] if per_position else None
    exact = cc.edge_patching(linear_model, task, direction, edges=edges, per_position=per_position)
    sel = exact.values != 0
    scale = exact.values.abs().max()
    assert scale > 1e-6 and sel.sum() > 40  # float64: differences are exact to ~1e-16
    assert torch.allclose(est.values[sel], exact.values[sel], atol=1e-6 * scale, rtol=0)
    assert torch.allclose(ig.values[sel], exact.values[sel], atol=1e-6 * scale, rtol=0)
    if not per_position:
        assert torch.allclose(est.values, exact.values, atol=1e-6 * scale, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox"])
def test_all_edges_out_of_a_node_equal_node_patching(tiny_model, ioi_pairs, arch):
    """Patching a sender along every outgoing edge at once is patching the node itself: exact
    edge patching must reproduce the engine's node patching (heads_all, exact)."""
    m = tiny_model(arch)
    task = cl.tasks.from_pairs(m, ioi_pairs)
    g = component_graph(m)
    node = cl.patch(m, task, "heads_all", method="exact", progress=False)
    for label in ("L0.H1", "L1.H3"):
        i = g.sender(label)
        edges = [g.edge_label(i, j) for j in g.mask[i].nonzero().flatten().tolist()]
        got = cc.path_patch(m, task, edges)
        want = float(node.flat[node.labels.index(label)])
        assert got == pytest.approx(want, abs=1e-5 * max(1.0, abs(want))), label


def test_eap_matches_transformer_lens_edge_attribution(tiny_dir, ioi_pairs):
    """TransformerLens 4.3's own EAP (split q/k/v input hooks) on the same prompts: our chain-rule
    receiver gradients must agree edge by edge (summed over positions)."""
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    m = cl.load(str(tiny_dir("gpt2")), device="cpu")
    task = cl.tasks.from_pairs(m, ioi_pairs)
    ours = dict(cc.eap(m, task).edges())
    totals: dict[str, float] = {}
    for b in range(len(task)):
        n = int(task.lengths[b])
        pos, a, w = n - 1, int(task.answer_ids[b]), int(task.wrong_ids[b])
        res = attribution_patch(m.bridge, task.clean_tokens[b : b + 1, :n], task.corrupt_tokens[b : b + 1, :n],
                                lambda logits: logits[0, pos, a] - logits[0, pos, w], EdgeAttributionConfig("edge"))
        for (u, v), s in res.edge_scores.items():
            key = f"{_tl_label(u)}->{_tl_label(v)}"
            totals[key] = totals.get(key, 0.0) + s / len(task)
    assert set(totals) == set(ours)
    scale = max(abs(x) for x in ours.values())
    for k, v in ours.items():
        assert totals[k] == pytest.approx(v, abs=1e-4 * scale), k


def _tl_label(n) -> str:
    if n.kind == "embed":
        return "embed"
    if n.kind == "logits":
        return "logits"
    if n.kind == "attn_head_out":
        return f"L{n.layer}.H{n.head}"
    if n.kind in ("mlp_out", "mlp_in"):
        return f"L{n.layer}.mlp"
    return f"L{n.layer}.H{n.head}.{n.kind[0]}"


@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_faithfulness_full_is_one_empty_is_zero(tiny_model, ioi_pairs, arch, ablation):
    m = tiny_model(arch)
    task = cl.tasks.from_pairs(m, ioi_pairs)
    g = component_graph(m)
    ev = cc.Evaluator(m, task, ablation)
    full_e, full_n = cc.Circuit("edges", g.edge_labels()), cc.Circuit("nodes", g.node_labels())
    F = ev.faithfulness([full_e, cc.Circuit("edges", [])])
    Fn = ev.faithfulness([full_n, cc.Circuit("nodes", [])])
    assert F.tolist() == pytest.approx([1, 0], abs=1e-4) and Fn.tolist() == pytest.approx([1, 0], abs=1e-4)
    if ablation == "resample":  # everything ablated with corrupted values is the corrupted run
        corrupt = metric_per_prompt(m, task.corrupt_tokens, task.metric)
        assert torch.allclose(ev.empty("edges"), corrupt, atol=1e-4)
        assert torch.allclose(ev.empty("nodes"), corrupt, atol=1e-4)
    # a node circuit is the edge circuit of all edges leaving its nodes
    nodes = ["embed", "L0.H1", "L1.mlp", "L2.H3", "L1.H0"]
    edges = [e for e in g.edge_labels() if e.split("->")[0] in nodes]
    a = ev.per_prompt([cc.Circuit("nodes", nodes)])
    b = ev.per_prompt([cc.Circuit("edges", edges)])
    assert torch.allclose(a, b, atol=1e-4)


def test_per_position_node_circuit_and_roles(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    ev = cc.Evaluator(gpt2, task)
    T = task.clean_tokens.shape[1]
    every_pos = cc.Circuit("nodes", [f"{n}@{t}" for n in component_graph(gpt2).node_labels() for t in range(T)])
    assert float(ev.faithfulness([every_pos])[0]) == pytest.approx(1, abs=1e-4)
    r = ev.faithfulness([cc.Circuit("nodes", ["L2.H1@END", "embed"])])
    assert torch.isfinite(r).all()
    with pytest.raises(ValueError, match="unknown position"):
        ev.faithfulness([cc.Circuit("nodes", ["L2.H1@XYZ"])])


def test_curve_bootstrap_selection_and_round_trips(gpt2, ioi_pairs, tmp_path):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    scores = cc.eap(gpt2, task)
    curve = cc.faithfulness_curve(gpt2, task, scores, bootstrap=200)
    assert curve.sizes[0] == 0 and curve.sizes[-1] == scores.mask.sum()
    assert curve.faithfulness[0] == pytest.approx(0, abs=1e-4) and curve.faithfulness[-1] == pytest.approx(1, abs=1e-4)
    assert all(lo <= hi for lo, hi in zip(curve.lo, curve.hi))
    assert curve.lo[-1] == pytest.approx(1, abs=1e-4) and curve.hi[-1] == pytest.approx(1, abs=1e-4)
    assert curve.smallest is not None and len(curve.smallest_circuit) == curve.smallest
    assert cc.faithfulness(gpt2, task, curve.smallest_circuit) >= 0.8
    # the smallest one less is below the threshold (bisection found the boundary)
    smaller = cc.top_n(scores, curve.smallest - 1)
    assert cc.faithfulness(gpt2, task, smaller) < 0.8 or curve.smallest == 1
    # round trips
    scores.save(tmp_path / "e")
    back = cc.EdgeScores.load(tmp_path / "e")
    assert torch.equal(back.values, scores.values) and back.senders == scores.senders
    curve.save(tmp_path / "f")
    assert cc.FaithfulnessCurve.load(tmp_path / "f").faithfulness == curve.faithfulness
    curve.smallest_circuit.save(tmp_path / "c")
    assert cc.Circuit.load(tmp_path / "c") == curve.smallest_circuit
    # selection
    from circuitlab.circuits.circuit import receiver_component

    g = cc.greedy(scores, 10)
    assert len(g) == 10
    senders = {e.split("->")[0] for e in g.items} | {"logits"}
    assert all(receiver_component(e.split("->")[1]) in senders for e in g.items)  # connected to the logits
    t = cc.threshold(scores, 0.5 * abs(scores.top(1)[0][1]))
    assert 1 <= len(t) < scores.mask.sum()


def test_node_scores_feed_the_same_selection(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    ev = cc.Evaluator(gpt2, task)
    for method in ("exact", "atp"):
        r = cl.patch(gpt2, task, "heads_all", method=method, **({"progress": False} if method == "exact" else {}))
        c = cc.top_n(r, 4)
        assert c.kind == "nodes" and len(c) == 4
        assert torch.isfinite(ev.faithfulness([c])).all()
    mlp = cl.patch(gpt2, task, "mlp_out", method="atp", positions=["END"])
    assert all(i.startswith("L") and ".mlp@END" in i for i in cc.top_n(mlp, 2).items)
    g = cc.greedy_nodes(gpt2, task, cl.patch(gpt2, task, "heads_all", method="atp"), 2, pool=4, evaluator=ev)
    assert len(g) == 2
    with pytest.raises(ValueError, match="not a circuit component"):
        cc.top_n(cl.patch(gpt2, task, "resid_pre", method="atp"), 3)
