"""Planted ground truth, interventions (no hooks left behind), CLI and the shipped example."""

import pytest
import torch

import circuitlab as cl
from circuitlab import circuits as cc
from circuitlab.circuits.planted import build
from circuitlab.engine.hooks import count_hooks
from circuitlab.engine.sites import Node
from circuitlab.graphs.targets import Supernode


@pytest.fixture(scope="module")
def induction(tmp_path_factory):
    p = build("induction", tmp_path_factory.mktemp("planted_induction"))
    m = p.load()
    return p, m, p.task(m, 6)


@pytest.fixture(scope="module")
def copy_model(tmp_path_factory):
    p = build("copy", tmp_path_factory.mktemp("planted_copy"))
    m = p.load()
    return p, m, p.task(m, 6)


def test_planted_models_implement_their_mechanism(induction, copy_model):
    from circuitlab.engine.forward import metric_per_prompt

    for p, m, task in (induction, copy_model):
        clean = metric_per_prompt(m, task.clean_tokens, task.metric)
        corrupt = metric_per_prompt(m, task.corrupt_tokens, task.metric)
        assert (clean > 9).all(), p.name  # the copying head writes 10 x the answer's direction
        assert (corrupt < 1).all(), p.name


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_path_patching_true_edges_change_metric_non_edges_do_not(induction, direction):
    p, m, task = induction
    true = {e: cc.path_patch(m, task, [e], direction) for e in p.edges}
    assert all(abs(v) > 5 for v in true.values()), true
    big = min(abs(v) for v in true.values())
    for non_edge in ("L0.H0->L1.H0.q", "L0.H1->L1.H0.k", "L0.H0->L1.H1.k", "embed->L1.H0.v", "embed->L0.H0.q",
                     "L0.H0->L1.H0.v", "embed->logits"):
        assert abs(cc.path_patch(m, task, [non_edge], direction)) < 1e-4 * big, non_edge


def test_exact_methods_recover_the_planted_truth(induction, copy_model):
    from circuitlab.circuits.groundtruth import precision_recall

    for p, m, task in (induction, copy_model):
        for d in ("denoising", "noising"):
            pr = precision_recall(cc.edge_patching(m, task, d), p.edges)
            assert pr["precision"] == 1 and pr["recall"] == 1, (p.name, d, pr)
            node = cl.patch(m, task, "heads_all", direction=d, progress=False)
            pr = precision_recall(node, p.heads)
            assert pr["precision"] == 1 and pr["recall"] == 1, (p.name, d, pr)
            # the smallest faithful circuit from exact scores is exactly the true edges
            curve = cc.faithfulness_curve(m, task, cc.edge_patching(m, task, d), bootstrap=50)
            assert curve.smallest_circuit.items == frozenset(p.edges)


def test_eap_on_planted_induction(induction):
    """Denoising EAP finds the circuit; noising EAP misses the previous-token edges because the
    induction head's softmax is saturated on clean prompts (the known AtP failure)."""
    from circuitlab.circuits.groundtruth import precision_recall

    p, m, task = induction
    pr = precision_recall(cc.eap(m, task, "denoising"), p.edges)
    assert pr["precision"] == 1 and pr["recall"] == 1
    pr = precision_recall(cc.eap(m, task, "noising"), p.edges)
    assert pr["missed"] == ["L0.H0->L1.H0.k", "embed->L0.H0.v"]
    pr = precision_recall(cc.eap_ig(m, task, "noising", steps=8), p.edges)
    assert pr["recall"] == 1  # integrated gradients leave the saturated region


def test_interventions_leave_no_hooks_also_when_generation_raises(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    before = count_hooks(gpt2.bridge)
    prompt = task.clean_tokens[0, :5]
    plain = cc.generate(gpt2, prompt, 3)
    assert count_hooks(gpt2.bridge) == before
    same = cc.generate(gpt2, prompt, 3, [cc.Intervention("L1.H2.v", "scale", 1.0)])
    assert torch.equal(plain, same)
    calls = {"n": 0}

    class Boom:
        def hooks(self, model, edit, positions):
            def fn(x):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise RuntimeError("boom")
                return None
            return [("blocks.1.hook_resid_pre", fn)]

    with pytest.raises(RuntimeError, match="boom"):
        cc.generate(gpt2, prompt, 4, [cc.Intervention(Boom(), "add", 0.0)])
    assert count_hooks(gpt2.bridge) == before
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="boom"):
        with cc.intervene(gpt2, [cc.Intervention(Boom(), "add", 0.0)]):
            cc.score(gpt2, task.clean_tokens, task.metric)
            cc.score(gpt2, task.clean_tokens, task.metric)
    assert count_hooks(gpt2.bridge) == before


def test_intervention_semantics(gpt2, ioi_pairs):
    from circuitlab.engine.cache import capture

    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    toks, metric = task.clean_tokens, task.metric
    base = cc.score(gpt2, toks, metric)
    # scaling a head's value vectors by 0 zeroes its output (z = pattern . v)
    z0 = capture(gpt2, toks, ["blocks.1.attn.hook_z"], hooks=cc.Intervention("L1.H2.v", "scale", 0.0).hooks(gpt2))
    assert z0["blocks.1.attn.hook_z"][:, :, 2].abs().max() == 0
    a = cc.score(gpt2, toks, metric, [cc.Intervention("L1.H2.v", "scale", 0.0)])
    b = cc.score(gpt2, toks, metric, [cc.Intervention("L1.H2", "set", 0.0)])
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, base)
    # add then subtract is the identity; positions limit the edit
    up = cc.Intervention(Node(0, "neurons", unit=5), "add", 3.0, positions=(2,))
    down = cc.Intervention(Node(0, "neurons", unit=5), "add", -3.0, positions=(2,))
    assert torch.allclose(cc.score(gpt2, toks, metric, [up, down]), base, atol=1e-5)
    post = capture(gpt2, toks, ["blocks.0.mlp.hook_post"], hooks=up.hooks(gpt2))["blocks.0.mlp.hook_post"]
    ref = capture(gpt2, toks, ["blocks.0.mlp.hook_post"])["blocks.0.mlp.hook_post"]
    diff = post - ref
    assert torch.allclose(diff[:, 2, 5], torch.full_like(diff[:, 2, 5], 3.0)) and diff[:, :2].abs().max() == 0
    # plug-in targets: an identity "SAE" with latent scale 1 changes nothing; scale 0 removes that coordinate
    eye = lambda x: x  # noqa: E731
    sae = cc.CoderTarget("blocks.1.hook_resid_pre", eye, eye, (0, 1))
    assert torch.allclose(cc.score(gpt2, toks, metric, [cc.Intervention(sae, "scale", 1.0)]), base, atol=1e-6)
    r = capture(gpt2, toks, ["blocks.1.hook_resid_pre"], hooks=cc.Intervention(sae, "scale", 0.0).hooks(gpt2))
    assert r["blocks.1.hook_resid_pre"][..., :2].abs().max() == 0
    tc = cc.TranscoderTarget("blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out", eye, eye, (3,))
    out = capture(gpt2, toks, ["blocks.0.hook_mlp_out", "blocks.0.mlp.hook_in"],
                  hooks=cc.Intervention(tc, "add", 1.0).hooks(gpt2))
    ref = capture(gpt2, toks, ["blocks.0.hook_mlp_out"])
    d = out["blocks.0.hook_mlp_out"] - ref["blocks.0.hook_mlp_out"]
    assert torch.allclose(d[..., 3], torch.ones_like(d[..., 3]), atol=1e-5) and d[..., :3].abs().max() < 1e-5
    u = torch.zeros(gpt2.d_model)
    u[7] = 1.0
    sup = Supernode((cc.DirectionTarget("blocks.2.hook_resid_pre", u), "L0.H1"))
    r = capture(gpt2, toks, ["blocks.2.hook_resid_pre"], hooks=cc.Intervention(sup, "set", 0.0).hooks(gpt2))
    assert r["blocks.2.hook_resid_pre"][..., 7].abs().max() < 1e-6
    with pytest.raises(ValueError, match="unknown intervention op"):
        cc.Intervention("L0.H1", "multiply", 2.0)


def test_value_scaling_example_runs_on_any_model(gpt2, ioi_pairs):
    from circuitlab.cli.value_scaling import value_scaling

    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    before = count_hooks(gpt2.bridge)
    out = value_scaling(gpt2, task, scales=(0.0, 1.0, 4.0), new_tokens=2)
    rows = {r["scale"]: r for r in out["rows"]}
    assert rows[1.0]["metric"] == pytest.approx(cl.dla(gpt2, task).baseline, abs=1e-4)
    assert rows[0.0]["metric"] != pytest.approx(rows[4.0]["metric"])
    assert count_hooks(gpt2.bridge) == before


def test_cli_circuit_writes_all_outputs(tmp_path):
    from circuitlab.cli import main

    out = tmp_path / "run"
    assert main(["circuit", "--model", "planted:copy", "--task", "planted", "--method", "eap", "--n", "4",
                 "--bootstrap", "20", "--out", str(out)]) == 0
    for f in ("edges.safetensors", "edges.json", "edges.csv", "circuit.json", "faithfulness.json",
              "faithfulness.html", "circuit.html", "report.html", "summary.json"):
        assert (out / f).exists(), f
    assert cc.Circuit.load(out / "circuit").items == frozenset(["embed->L0.H0.v", "L0.H0->logits"])
    assert main(["circuit", "--task", "planted", "--model", "planted:nope", "--out", str(out)]) == 2
