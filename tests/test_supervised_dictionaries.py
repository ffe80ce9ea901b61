"""Supervised IOI dictionaries and the three scores of a coder against them, checked on known
answers: a planted activation set that is exactly a mean plus attribute vectors, a planted coder
whose greedy edit must reach its target, hand-counted F1, the zoo model's answer switching
under the supervised edit, and the dictionary itself used as a coder scoring perfect control."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from circuitlab.sparse import supervised as S

LAST = "blocks.3.hook_resid_post"


# ------------------------------------------------------------------------- planted, no model
def _planted(seed: int = 0, d: int = 48):
    """Every combination of 5 IO names x 4 subjects x 2 orders (twice): x = m + u_io + u_s + u_order,
    each attribute's vectors centred, so the conditional means recover them exactly."""
    g = torch.Generator().manual_seed(seed)
    values = {"io": [f"n{i}" for i in range(5)], "s": [f"m{i}" for i in range(4)], "order": ["ABBA", "BABA"]}
    u = {}
    for a, vs in values.items():
        w = torch.randn(len(vs), d, generator=g, dtype=torch.float64)
        u[a] = w - w.mean(0)
    m = torch.randn(d, generator=g, dtype=torch.float64) * 3
    rows = list(itertools.product(range(5), range(4), range(2))) * 2
    labels = {a: [values[a][r[i]] for r in rows] for i, a in enumerate(values)}
    x = torch.stack([m + u["io"][i] + u["s"][j] + u["order"][k] for i, j, k in rows])
    return x, labels, m, u, values


def test_planted_dictionary_recovers_vectors_and_reconstructs_exactly():
    x, labels, m, u, values = _planted()
    d = S.fit_dictionary(x, labels, hook="h", role="END")
    assert torch.allclose(d.mean.double(), m, atol=1e-5)
    for a, vs in values.items():
        for i, v in enumerate(vs):
            assert torch.allclose(d.vectors[d.index(a, [v])[0]].double(), u[a][i], atol=1e-5)
    assert torch.allclose(d.reconstruct(labels).double(), x, atol=1e-4)
    edited = d.edit(x.float(), "io", labels["io"], ["n0"] * len(x))
    want = x - torch.stack([u["io"][values["io"].index(v)] for v in labels["io"]]) + u["io"][0]
    assert torch.allclose(edited.double(), want, atol=1e-4)


def test_dictionary_as_coder_encodes_the_labels_and_decodes_exactly():
    x, labels, _, _, _ = _planted(seed=1)
    d = S.fit_dictionary(x, labels)
    coder = d.as_coder()
    f = coder.encode(x.float())
    assert f.sum(-1).eq(3).all()  # one latent per attribute
    for i, key in enumerate(d.keys):
        a, v = key
        assert f[:, i].bool().tolist() == [lab == v for lab in labels[a]], key
    assert torch.allclose(coder.decode(f).double(), x, atol=1e-4)


def test_greedy_edit_reaches_a_planted_target_largest_change_first():
    g = torch.Generator().manual_seed(0)
    dec = torch.linalg.qr(torch.randn(32, 16, generator=g))[0].T  # 16 orthonormal rows
    f_s = torch.zeros(2, 16)
    f_t = torch.zeros(2, 16)
    f_s[:, [1, 4, 9]] = torch.tensor([3.0, 1.0, 2.0])
    f_t[:, [1, 4, 9]] = torch.tensor([3.0, 1.0, 2.0])
    f_s[0, 5], f_t[0, 7], f_t[0, 4] = 4.0, 2.5, 0.5   # row 0: off 5 (4), on 7 (2.5), rescale 4 (0.5)
    f_t[1, 2] = 1.5                                    # row 1: one latent on
    x_s, x_t = f_s @ dec, f_t @ dec
    steps, chosen = S.greedy_edit(x_s, f_s, f_t, dec, x_t, max_latents=5)
    assert chosen[0].tolist() == [5, 7, 4, -1, -1]
    assert chosen[1].tolist() == [2, -1, -1, -1, -1]
    assert torch.allclose(steps[2][0], x_t[0], atol=1e-5) and torch.allclose(steps[0][1], x_t[1], atol=1e-5)
    assert torch.allclose(steps[0][0], x_s[0] - 4.0 * dec[5], atol=1e-5)
    assert torch.allclose(steps[4], x_t, atol=1e-5)


def test_latent_f1_by_hand():
    values = ["A", "A", "B", "B", "C", "C"]
    active = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    out = S.latent_f1(active, values)
    assert out["A"] == {"latent": 0, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    # B: latent 1 fires on A, A, B (precision 1/3, recall 1/2, F1 0.4); latent 2 on B, C (1/2, 1/2, 0.5)
    assert out["B"]["latent"] == 2 and out["B"]["f1"] == pytest.approx(0.5)
    assert out["C"]["latent"] == 2 and out["C"]["precision"] == pytest.approx(0.5)
    assert out["C"]["recall"] == pytest.approx(0.5)


def test_bad_input_names_the_problem():
    x, labels, _, _, _ = _planted()
    with pytest.raises(ValueError, match="labels\\['io'\\] has 3 values"):
        S.fit_dictionary(x, {"io": ["a", "b", "c"]})
    d = S.fit_dictionary(x, labels)
    with pytest.raises(ValueError, match="no vector for io=\\['zz'\\]"):
        d.reconstruct({"io": ["zz"] * len(x), "s": labels["s"], "order": labels["order"]})
    with pytest.raises(ValueError, match="unknown attribute 'name'"):
        S.SupervisedOptions(attributes=("name",)).check()
    with pytest.raises(ValueError, match="unknown role 'END2'"):
        S.SupervisedOptions(role="END2").check()
    with pytest.raises(ValueError, match="edit attribute 'order' is not among attributes"):
        S.SupervisedOptions(attributes=("io", "s"), edit=("order",)).check()
    with pytest.raises(ValueError, match="max_latents must be a whole number"):
        S.SupervisedOptions(max_latents=0).check()


# ----------------------------------------------------------------------------- on a zoo model
@pytest.fixture(scope="module")
def gpt2zoo(zoo_model):
    return zoo_model("gpt2-zoo")


OPTS = S.SupervisedOptions(n_fit=256, n_eval=48, max_latents=4, edit=("io", "s"))


@pytest.fixture(scope="module")
def reference(gpt2zoo):
    """The dictionary scored as a coder, at the last block's residual stream (END position)."""
    from dataclasses import replace

    return S.evaluate_supervised(gpt2zoo, None, replace(OPTS, site="resid_post", layer=3))


def test_counterfactual_prompts_change_one_attribute_token_for_token(gpt2zoo):
    p = S.ioi_prompts(gpt2zoo, 16, seed=3)
    names = sorted(p.name_ids)
    rows = torch.arange(len(p))
    io = S.counterfactual(p, "io", names, seed=0)
    assert ((io.tokens != p.tokens).sum(1) == 1).all()
    assert (io.tokens[rows, p.roles["IO"]] == io.answer).all() and (io.wrong == p.wrong).all()
    assert all(n not in (a, b) for n, a, b in zip(io.labels["io"], p.labels["io"], p.labels["s"]))
    s = S.counterfactual(p, "s", names, seed=0)
    assert ((s.tokens != p.tokens).sum(1) == 2).all() and (s.answer == p.answer).all()
    order = S.counterfactual(p, "order", names)
    assert (order.tokens[rows, p.roles["S1"]] == p.answer).all()
    assert (order.tokens[rows, p.roles["IO"]] == p.wrong).all()
    assert torch.equal(order.roles["IO"], p.roles["S1"]) and ((order.tokens != p.tokens).sum(1) == 2).all()
    assert all(a != b for a, b in zip(order.labels["order"], p.labels["order"]))
    back = S.counterfactual(order, "order", names)
    assert torch.equal(back.tokens, p.tokens) and back.labels["order"] == p.labels["order"]


def test_supervised_edit_switches_the_zoo_models_answer(reference):
    c = reference.control["io"]
    assert reference.logit_diff_clean > 5  # the model solves the task before any edit
    assert c.patch_success >= 0.95  # the counterfactual's own activation switches it ...
    assert c.supervised_success >= 0.95  # ... and so does x - u[io, old] + u[io, new]
    assert c.supervised_effect > 0.8
    assert reference.supervised.sufficiency > 0.8 and reference.supervised.necessity > 0.8


def test_the_dictionary_as_a_coder_scores_perfect_control(reference):
    """Its two-latent edit (IO=old off, IO=new on) is exactly the supervised edit."""
    c = reference.control["io"]
    assert c.success[S.EDIT_BUDGET - 1] == c.supervised_success
    assert c.effect[S.EDIT_BUDGET - 1] == pytest.approx(c.supervised_effect, abs=1e-4)
    assert c.latents_to_switch <= S.EDIT_BUDGET and c.switched == 1.0
    assert reference.interpretability["io"].mean_f1 == 1.0  # one latent per IO name, exactly


def test_dictionary_coder_edit_equals_supervised_edit_tensor_for_tensor(gpt2zoo):
    fit = S.ioi_prompts(gpt2zoo, 256, seed=0)
    (x_fit,) = S._site_acts(gpt2zoo, fit, [LAST], "END", 64)
    d = S.fit_dictionary(x_fit, fit.labels, LAST, "END")
    ev = S.ioi_prompts(gpt2zoo, 24, seed=1)
    cf = S.counterfactual(ev, "io", d.values("io"), seed=2)
    (x,) = S._site_acts(gpt2zoo, ev, [LAST], "END", 64)
    (t,) = S._site_acts(gpt2zoo, cf, [LAST], "END", 64)
    coder = d.as_coder()
    steps, chosen = S.greedy_edit(x, coder.encode(x), coder.encode(t), coder.W_dec, t, 4)
    assert torch.allclose(steps[1], d.edit(x, "io", ev.labels["io"], cf.labels["io"]), atol=1e-4)
    old, new = d.index("io", ev.labels["io"]), d.index("io", cf.labels["io"])
    pairs = [sorted(p) for p in zip(old.tolist(), new.tolist())]
    assert [sorted(r) for r in chosen[:, :2].tolist()] == pairs  # IO=old off and IO=new on, per prompt


def test_shipped_coder_scores_and_reconstruction_patch_matches_splice(gpt2zoo):
    """The coder's reconstruction written at END equals splicing the coder in at END only."""
    from circuitlab.engine.forward import final_logits, run_to_final
    from circuitlab.sparse.bundled import PRETRAINED
    from circuitlab.sparse.files import load_coder
    from circuitlab.sparse.splice import splice

    coder = load_coder(PRETRAINED / "gpt2-zoo" / "gpt2-zoo_resid_L3")
    scores = S.evaluate_supervised(gpt2zoo, coder, OPTS, name="resid_L3")
    assert scores.hook == LAST and scores.coder == "resid_L3"
    ev = S.ioi_prompts(gpt2zoo, OPTS.n_eval, OPTS.seed + 1)
    end = ev.roles["END"]

    def elsewhere(x):
        keep = torch.ones(x.shape[:2], dtype=torch.bool)
        keep[torch.arange(x.shape[0]), end] = False
        return keep

    rows = torch.arange(len(ev))
    with torch.no_grad(), splice(gpt2zoo, [coder], passthrough=elsewhere):
        logits = final_logits(gpt2zoo, run_to_final(gpt2zoo, ev.tokens)[rows, end])
    spliced = (logits[rows, ev.answer] - logits[rows, ev.wrong]).mean()
    assert scores.n_eval == len(ev)
    assert scores.approximation.logit_diff_reconstructed == pytest.approx(float(spliced), abs=1e-3)
    c = scores.control["io"]
    assert len(c.success) == OPTS.max_latents and all(0 <= v <= 1 for v in c.success)
    assert c.success[-1] <= c.supervised_success + 1e-9  # an unsupervised coder does not beat it here
    assert 0 < scores.interpretability["io"].mean_f1 < 1
    summary = scores.summary()
    assert set(summary) >= {"sup_suff", "sup_nec", "suff", "nec", "io_sup", "io@2", "io@4", "io_latents",
                            "s_sup", "s@2", "f1_io", "f1_s", "f1_order"}


def test_coder_site_mismatch_and_crosscoder_refused(gpt2zoo):
    from circuitlab.sparse.bundled import PRETRAINED
    from circuitlab.sparse.files import load_coder

    coder = load_coder(PRETRAINED / "gpt2-zoo" / "gpt2-zoo_resid_L3")
    with pytest.raises(ValueError, match="the coder writes blocks.3.hook_resid_post"):
        S.evaluate_supervised(gpt2zoo, coder, S.SupervisedOptions(layer=1))
    cross = load_coder(PRETRAINED / "gpt2-zoo" / "gpt2-zoo_crosscoder_checkpoints_L2")
    with pytest.raises(ValueError, match="crosscoder"):
        S.evaluate_supervised(gpt2zoo, cross)
    with pytest.raises(ValueError, match="layer 7 is outside"):
        S.evaluate_supervised(gpt2zoo, None, S.SupervisedOptions(layer=7))


def test_cli_writes_scores_json(tmp_path):
    from circuitlab.cli import main
    from circuitlab.sparse.bundled import PRETRAINED

    out = tmp_path / "sup.json"
    rc = main(["supervised", str(PRETRAINED / "gpt2-zoo" / "gpt2-zoo_resid_L3"), "--model", "gpt2-zoo",
               "--n-fit", "128", "--n-eval", "24", "--max-latents", "2", "--edit", "io", "--out", str(out)])
    assert rc == 0
    info = json.loads(out.read_text())
    assert info["format"] == "circuitlab.supervised/1" and info["model"] == "gpt2-zoo"
    (row,) = info["results"]
    assert row["coder"] == "gpt2-zoo_resid_L3" and row["hook"] == LAST
    assert set(row["summary"]) >= {"sup_suff", "suff", "io_sup", "io@2", "f1_io"}
    assert out.with_suffix(".html").exists()
    assert main(["supervised", "--model", "gpt2-zoo", "--edit", "name", "--out", str(out)]) == 2


@pytest.mark.slow
def test_smollm2_supervised_dictionary():
    """Real language: `circuitlab supervised --model smollm2-135m --all` scores its trained coders."""
    from circuitlab.models import fetch

    if not fetch.is_fetched("smollm2-135m"):
        pytest.skip("smollm2-135m is not fetched (circuitlab models fetch smollm2-135m)")
    import circuitlab as cl

    model = cl.load("smollm2-135m", device="cpu")
    scores = S.evaluate_supervised(model, None, S.SupervisedOptions(n_fit=256, n_eval=64, max_latents=2))
    c = scores.control["io"]
    assert scores.logit_diff_clean > 0
    assert c.supervised_success >= 0.5
    assert c.success[S.EDIT_BUDGET - 1] >= c.supervised_success - 0.1  # the dictionary as a coder
