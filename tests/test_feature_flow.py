"""Feature flow: planted shared features between coders are matched, categorised and traced;
activation correlation agrees on them; flow steering adds the right vectors at the right sites."""

import copy
import json
import warnings

import pytest
import torch

from circuitlab.sparse import config_class, make_coder, transcoder_config
from circuitlab.sparse.flow import (FlowConfig, agreement, coder_activations, correlation_matches, cosine_matches,
                                    flow_graph, flow_steering, stage_of, steering_response)

D = 64  # the tiny test models' width, so the planted coders also run inside a model


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _coder(rows: torch.Tensor, layer: int, kind: str = "resid"):
    """A ReLU coder with decoder ``rows`` whose encoder is the decoder's left inverse, so its
    latents are exactly the coefficients of inputs built from those rows."""
    if kind == "resid":
        cfg = config_class("relu")(d_in=D, d_sae=len(rows), hooks_in=(f"blocks.{layer}.hook_resid_post",))
    else:
        cfg = transcoder_config("relu", layer, D, len(rows), skip=False)
    c = make_coder(cfg)
    with torch.no_grad():
        c.W_dec.copy_(rows)
        c.W_enc_t.copy_(torch.linalg.pinv(rows).T)
        c.b_enc.zero_()
        c.b_dec.zero_()
    return c


@pytest.fixture(scope="module")
def planted():
    """R0 and R1 residual coders and an M1 transcoder. 20 features persist from R0 to R1, 6 are in
    all three (processed by the MLP), 8 appear in M1 and R1 (created); every coder also has
    random latents of its own. Later coders hold slightly rotated copies, in shuffled order."""
    g = torch.Generator().manual_seed(0)
    feats = _unit(torch.randn(34, D, generator=g))
    S, P, C = feats[:20], feats[20:26], feats[26:34]
    k = torch.randn(D, D, generator=g) * 0.02
    rot = torch.linalg.matrix_exp(k - k.T)  # a small rotation: cosines of copies ~0.98
    rand = lambda n: _unit(torch.randn(n, D, generator=g))  # noqa: E731
    parts_a = [S, P, rand(22)]
    parts_b = [S @ rot, P @ rot, C @ rot, rand(10)]
    parts_m = [C @ rot, P @ rot, rand(20)]
    out = {}
    for name, parts, layer, kind in (("R0", parts_a, 0, "resid"), ("R1", parts_b, 1, "resid"),
                                     ("M1", parts_m, 1, "transcoder")):
        rows = torch.cat(parts)
        perm = torch.randperm(len(rows), generator=g)
        where = torch.empty_like(perm)
        where[perm] = torch.arange(len(perm))  # where[i]: new index of original row i
        out[name] = (_coder(rows[perm], layer, kind), where)
    return out, rot, (S, P, C)


def test_cosine_matches_recover_planted_pairs(planted):
    coders, _, _ = planted
    (a, wa), (b, wb) = coders["R0"], coders["R1"]
    m = cosine_matches(b, a, k=2)
    for i in range(26):  # S and P: latent wb[i] of R1 is the rotated copy of R0's latent wa[i]
        assert int(m.best[wb[i]]) == int(wa[i])
        assert float(m.score[wb[i], 0]) > 0.9
    random_b = wb[34:]
    assert float(m.score[random_b, 0].max()) < 0.6  # chance similarities stay below any sensible threshold


def test_categories_and_vanishing(planted):
    coders, _, _ = planted
    cs = {n: c for n, (c, _) in coders.items()}
    g = flow_graph(cs, threshold=0.7)
    assert g.chain == ["R0", "R1"] and [ln.source for ln in g.back] == ["R0", "M1"]
    wb, wa = coders["R1"][1], coders["R0"][1]
    cats = g.categories("R1")
    expect = ["persisting"] * 20 + ["processed"] * 6 + ["created"] * 8 + ["emerging"] * 10
    assert [cats[int(wb[i])] for i in range(44)] == expect
    van = g.vanishing("R0")
    assert not van[wa[:26]].any() and van[wa[26:]].all()
    assert g.counts()["R1"] == {"persisting": 20, "processed": 6, "created": 8, "emerging": 10, "vanishing": 0}
    assert g.categories("R0") == []
    d = json.loads(json.dumps(g.to_dict()))
    assert d["counts"]["R1"]["created"] == 8 and d["summary"][0]["same_index"] < 0.2


def test_trace_and_path(planted):
    coders, _, _ = planted
    cs = {n: c for n, (c, _) in coders.items()}
    g = flow_graph(cs, threshold=0.7)
    wa, wb, wm = coders["R0"][1], coders["R1"][1], coders["M1"][1]
    f = g.trace("R1", int(wb[21]))  # a processed feature: R0 and M1 both write it
    assert set(f.nodes) == {("R0", int(wa[21])), ("M1", int(wm[9])), ("R1", int(wb[21]))}
    assert f.path() == [("R0", int(wa[21])), ("R1", int(wb[21]))]
    fwd = g.trace("R0", int(wa[3]))
    assert fwd.path() == [("R0", int(wa[3])), ("R1", int(wb[3]))]
    assert g.trace("R1", int(wb[40])).nodes == [("R1", int(wb[40]))]  # emerging: nothing before it
    fig = f.figure()
    assert len(fig.data[0].node.label) == 3
    assert g.sankey().data and g.counts_figure().data


def test_activation_matching_agrees_on_planted(planted):
    """Tokens built from the true features: layer 1 holds the rotated shared features of layer 0
    (its own random ones vanish) plus the features created in between. Correlation finds the
    same partners as the cosine."""
    coders, rot, (S, P, C) = planted
    (a, wa), (b, wb) = coders["R0"], coders["R1"]
    g = torch.Generator().manual_seed(1)
    n = 4000
    coef = (torch.rand(n, 48, generator=g) < 0.1) * torch.rand(n, 48, generator=g)  # R0's own features
    x0 = coef @ torch.cat([S, P, a.W_dec.detach()[wa[26:]]])
    new = (torch.rand(n, 18, generator=g) < 0.1) * torch.rand(n, 18, generator=g)
    x1 = coef[:, :26] @ torch.cat([S, P]) @ rot + new @ torch.cat([C @ rot, b.W_dec.detach()[wb[34:]]])
    fa, fb = a.encode(x0).detach(), b.encode(x1).detach()
    act = correlation_matches(fb, fa, k=1)
    cos = cosine_matches(b, a, k=3)
    planted_b = torch.zeros(b.d_sae, dtype=torch.bool)
    planted_b[wb[:26]] = True
    res = agreement(cos, act, planted_b, threshold=0.7)
    assert res["latents"] == 26 and res["top1"] == 1.0 and res["confident"] == 26
    assert float(act.score[planted_b, 0].min()) > 0.99
    assert float(act.score[wb[26:], 0].max()) < 0.3  # features new in R1 correlate with nothing in R0


def test_model_path_recovers_a_permuted_copy(zoo_model):
    """A bundled SAE against a copy of itself with shuffled latents: the cosine and the activation
    matches on held-out text both recover the shuffle, and the copy is not flagged as sharing an
    initialisation, while an unshuffled copy at another layer is."""
    from circuitlab.sparse.bundled import find_coder
    from circuitlab.sparse.evaluate import heldout_documents

    model = zoo_model("gpt2-zoo")
    a = find_coder("gpt2-zoo", "resid", 1)
    b = copy.deepcopy(a)
    perm = torch.randperm(a.d_sae, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        b.W_dec.copy_(a.W_dec[perm])
        b.W_enc_t.copy_(a.W_enc_t[perm])
        b.b_enc.copy_(a.b_enc[perm])
    acts, toks = coder_activations(model, {"a": a, "b": b}, heldout_documents(24))
    assert acts["a"].shape == (len(toks), a.d_sae)
    inv = torch.argsort(perm)
    cos = cosine_matches(a, b, 1)
    assert torch.equal(cos.best, inv)
    live = (acts["a"] > 0).sum(0) >= 3
    res = agreement(cos, correlation_matches(acts["a"], acts["b"]), live)
    assert res["latents"] > 500 and res["top1"] == 1.0
    later = copy.deepcopy(a)
    later.cfg.hooks_in = ("blocks.2.hook_resid_post",)
    with pytest.warns(UserWarning, match="initialised alike"):
        flow_graph({"a": a, "later": later})


def test_flow_steering_adds_each_direction_at_its_site(planted, tiny_model):
    from circuitlab.engine.cache import capture
    from circuitlab.engine.interventions import intervention_hooks

    model = tiny_model("gpt2")
    coders, _, _ = planted
    cs = {n: c for n, (c, _) in coders.items()}
    g = flow_graph(cs, threshold=0.7)
    wa, wb = coders["R0"][1], coders["R1"][1]
    f = g.trace("R1", int(wb[5]))
    ivs = flow_steering(f, cs, strength=4.0, split=True)
    assert [iv.target.hook for iv in ivs] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    u0 = _unit(cs["R0"].W_dec.detach()[wa[5]])
    u1 = _unit(cs["R1"].W_dec.detach()[wb[5]])
    assert torch.allclose(ivs[0].value, 2.0 * u0) and torch.allclose(ivs[1].value, 2.0 * u1)
    whole = flow_steering(f, cs, strength=4.0, split=False, stages=["R1"])
    assert len(whole) == 1 and torch.allclose(whole[0].value, 4.0 * u1)
    toks = torch.tensor([[0, 5, 6, 7, 8]])
    hook = "blocks.0.hook_resid_post"
    clean = capture(model, toks, [hook])[hook]
    steered = capture(model, toks, [hook], hooks=intervention_hooks(model, ivs))[hook]
    assert torch.allclose(steered - clean, (2.0 * u0).expand_as(clean), atol=1e-5)
    rise = steering_response(model, cs, [("R0", int(wa[5]))], ["Mary went to the store"], ivs)
    assert 0 < rise[0] <= 2.0 + 1e-5  # a unit left-inverse encoder: +2 on the pre-activation at most


def test_bad_input(planted):
    coders, _, _ = planted
    a, b = coders["R0"][0], coders["R1"][0]
    with pytest.raises(ValueError, match="threshold"):
        FlowConfig(threshold=0)
    with pytest.raises(ValueError, match="space"):
        FlowConfig(space="both")
    with pytest.raises(ValueError, match="at least two coders"):
        flow_graph([a])
    with pytest.raises(ValueError, match="either config"):
        flow_graph([a, b], FlowConfig(), threshold=0.3)
    cross = make_coder(config_class("relu")(d_in=D, d_sae=8, n_sources=2,
                                            hooks_in=("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")))
    with pytest.raises(ValueError, match="crosscoder"):
        flow_graph({"a": a, "x": cross})
    heads = make_coder(config_class("relu")(d_in=D, d_sae=8, hooks_in=("blocks.0.attn.hook_z",)))
    with pytest.raises(ValueError, match="writes 'blocks.0.attn.hook_z'"):
        stage_of("heads", heads)
    wide = make_coder(config_class("relu")(d_in=2 * D, d_sae=8, hooks_in=("blocks.2.hook_resid_post",)))
    with pytest.raises(ValueError, match="widths"):
        flow_graph({"a": a, "w": wide})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = flow_graph({"a": a, "b": b}, threshold=0.7)
    with pytest.raises(ValueError, match="outside"):
        g.trace("b", 10_000)
    with pytest.raises(ValueError, match="no stage"):
        g.trace("c", 0)


def test_cli_flow(tmp_path):
    from circuitlab.cli import main

    out = tmp_path / "flow"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bundled coders share their initialisation (flagged in the output)
        rc = main(["features", "flow", "--model", "gpt2-zoo", "--kinds", "resid", "--docs", "8", "--trace", "R2:5",
                   "--steer", "4", "--out", str(out)])
    assert rc == 0
    d = json.loads((out / "flow.json").read_text())
    assert d["chain"] == [f"gpt2-zoo_resid_L{i}" for i in range(4)]
    assert d["flows"][0]["start"] == "R2:5" and len(d["activation_agreement"]) == 3
    assert all(0 <= r["top1"] <= 1 for r in d["activation_agreement"])
    assert "steering" in d and (out / "flow.html").is_file() and (out / "plotly.min.js").is_file()
    assert "initialised alike" in (out / "flow.html").read_text()  # the bundled coders all start from seed 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["features", "flow", "--model", "gpt2-zoo", "--kinds", "resid", "--trace", "R9:1",
                     "--skip-activations", "--out", str(out)]) == 2
    assert main(["features", "flow", "--model", "gpt2-zoo", "--kinds", "sae", "--out", str(out)]) == 2


@pytest.mark.slow
def test_smollm2_flow(tmp_path):
    """The trained SmolLM2-135M coders (residual SAEs at 8, 16, 24; transcoders at every layer):
    the flow page, and the cosine matches against activation correlation on held-out English.
    Prints the numbers (run with -s)."""
    from circuitlab.cli import main
    from circuitlab.models import fetch
    from circuitlab.sparse.bundled import trained_folder

    if not fetch.is_fetched("smollm2-135m"):
        pytest.skip("smollm2-135m is not fetched (circuitlab models fetch smollm2-135m)")
    if not any(trained_folder("smollm2-135m").glob("*_resid_L*")):
        pytest.skip("no SmolLM2 residual SAEs (circuitlab train saes/configs/smollm2-135m.toml)")
    out = tmp_path / "flow"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["features", "flow", "--model", "smollm2-135m", "--data", "corpus:english", "--docs", "64",
                     "--steer", "8", "--out", str(out)]) == 0
    d = json.loads((out / "flow.json").read_text())
    print(json.dumps({"counts": d["counts"], "summary": d["summary"], "agreement": d["activation_agreement"],
                      "steering": d["steering"]}, indent=1))
    assert len(d["chain"]) >= 2
    resid = [r for r in d["activation_agreement"] if r["source"] in d["chain"]]
    assert resid and all(r["confident_top1"] is None or r["confident_top1"] > 10 / 4608 for r in resid)
