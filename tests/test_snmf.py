"""SNMF of MLP activations: recovery of a planted factorisation, monotone objective, the
activation rows, concepts, difference of means, the steering test and the command."""

from __future__ import annotations

import json

import pytest
import torch

from circuitlab.sparse.snmf import (Activations, SNMFConfig, SteeringConfig, concept_share, concept_tokens,
                                    diff_means, match_factors, mlp_activations, snmf, steering_test, top_contexts)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small matrices: a second BLAS thread only spins (and this machine's cores are shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def planted(n=1000, d=32, k=6, p=0.25, noise=0.01, seed=0, sparse_dirs=None):
    """A = Z Y + N with Z >= 0 sparse (each entry active with probability p), Y random unit rows
    (with ``sparse_dirs`` nonzero entries each, if given), N Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    Y = torch.randn(k, d, generator=g, dtype=torch.float64)
    if sparse_dirs is not None:
        keep = torch.rand(k, d, generator=g).argsort(1)[:, :sparse_dirs]
        Y = torch.zeros_like(Y).scatter(1, keep, Y.gather(1, keep))
    Y /= Y.norm(dim=1, keepdim=True)
    Z = torch.rand(n, k, generator=g, dtype=torch.float64) * (torch.rand(n, k, generator=g) < p)
    N = noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return Z @ Y + N, Z, Y, float(N.pow(2).sum() / (Z @ Y + N).pow(2).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_sparse_factorisation_is_recovered(seed):
    A, _, Y, floor = planted(seed=seed)
    f = snmf(A, SNMFConfig(factors=6, iters=300, l1=0.01, seed=seed))
    cos = match_factors(f.Y, Y)
    assert float(cos.min()) > 0.95, cos
    assert f.error < 1.2 * floor, (f.error, floor)  # at the noise floor, not below a third of it
    assert f.error > 0.5 * floor
    assert bool((f.Z >= 0).all())
    assert torch.allclose(f.Y.norm(dim=1), torch.ones(6, dtype=f.Y.dtype))


def test_without_coefficient_sparsity_the_factors_are_mixtures():
    """Plain semi-NMF fits as well but is not identifiable (Z M, M^-1 Y for any M >= 0): the
    L1 option is what recovers the planted directions."""
    A, _, Y, floor = planted()
    f = snmf(A, SNMFConfig(factors=6, iters=300, l1=0.0))
    assert f.error < 1.2 * floor
    assert float(match_factors(f.Y, Y).min()) < 0.9


def test_objective_never_increases_without_sparsity():
    A, *_ = planted(n=600, seed=3)
    f = snmf(A, SNMFConfig(factors=6, iters=80, l1=0.0, tol=0.0))
    h = torch.tensor(f.objective, dtype=torch.float64)
    assert len(h) == 80
    assert float((h[1:] - h[:-1]).max()) <= 1e-12, (h[1:] - h[:-1]).max()
    assert float(h[0] - h[-1]) > 1e-3  # it did descend
    assert f.error == pytest.approx(float((A - f.Z @ f.Y).pow(2).sum() / A.pow(2).sum()), rel=1e-9)


def test_winner_take_all_keeps_sparse_directions_and_recovers_them():
    A, _, Y, floor = planted(d=40, sparse_dirs=8, seed=2)
    f = snmf(A, SNMFConfig(factors=6, iters=300, l1=0.01, keep=0.2, seed=2))
    assert int((f.Y != 0).sum(1).max()) <= 8
    assert float(match_factors(f.Y, Y).min()) > 0.95
    assert f.error < 1.5 * floor


def test_coefficients_of_new_rows():
    A, Z, Y, _ = planted(n=1600, seed=4)
    f = snmf(A[:1000], SNMFConfig(factors=6, iters=300, l1=0.01, seed=4))
    new = A[1000:]
    Zn = f.coefficients(new, iters=200)
    assert bool((Zn >= 0).all())
    err = float((new - Zn @ f.Y).pow(2).sum() / new.pow(2).sum())
    assert err < 1.5 * f.error


@pytest.mark.parametrize("bad, word", [(dict(factors=0), "factors"), (dict(keep=0.0), "keep"),
                                       (dict(l1=-1.0), "l1"), (dict(init="svd"), "init"), (dict(iters=0), "iters")])
def test_bad_config_is_refused_by_name(bad, word):
    with pytest.raises(ValueError, match=word):
        SNMFConfig(**bad)


def test_bad_matrix_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        snmf(torch.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        snmf(torch.tensor([[1.0, float("nan")], [1.0, 2.0]]), SNMFConfig(factors=1))
    with pytest.raises(ValueError, match="factors"):
        snmf(torch.rand(10, 3), SNMFConfig(factors=5))


def _acts(A, tokens):
    n = len(tokens)
    return Activations(A, torch.tensor(tokens), torch.zeros(n, dtype=torch.long), torch.arange(n),
                       torch.tensor([tokens]), torch.tensor([n]), 0, "neurons")


def test_concept_tokens_share_and_difference_of_means():
    tokens = [5, 7, 5, 9, 7, 5, 3]
    A = torch.tensor([[1.0, 0], [0, 1], [3, 0], [0, 2], [0, 3], [2, 0], [0, 0]])
    acts = _acts(A, tokens)
    z = torch.tensor([1.0, 0, 3, 0, 0.5, 2, 9])  # token 3 is seen once: below min_count
    assert concept_tokens(acts, z, n=2, rel=0.0) == [5, 7]  # means 2 and 0.25
    assert concept_tokens(acts, z, n=3) == [5]
    assert concept_tokens(acts, z, n=3, rel=0.1) == [5, 7]
    assert concept_share(acts, z, [5]) == pytest.approx(6 / 15.5)
    dm = diff_means(acts, [5])
    assert torch.allclose(dm, torch.tensor([2.0, 0]) - torch.tensor([0.0, 6 / 4]))
    with pytest.raises(ValueError, match="rows with and rows without"):
        diff_means(acts, [1])


@pytest.fixture(scope="module")
def zoo_models():
    import circuitlab as cl

    cache = {}

    def get(name: str = "gpt2-zoo"):
        if name not in cache:
            cache[name] = cl.load(name, device="cpu")
        return cache[name]

    return get


@pytest.fixture(scope="module")
def zoo(zoo_models):
    return zoo_models("gpt2-zoo")


@pytest.fixture(scope="module")
def zoo_acts(zoo):
    return mlp_activations(zoo, 2, "neurons", n_docs=12, ctx_len=24)


def test_activation_rows_are_the_site_without_bos(zoo, zoo_acts):
    from circuitlab.engine.cache import capture

    acts = zoo_acts
    assert acts.A.shape[1] == zoo.d_mlp
    assert len(acts) == int((acts.lengths - 1).sum())  # every real token but BOS
    assert int(acts.pos.min()) == 1
    d = 3
    ref = capture(zoo, acts.grid[d:d + 1, :int(acts.lengths[d])], [acts.hook])[acts.hook][0]
    rows = acts.doc == d
    assert torch.allclose(acts.A[rows], ref[acts.pos[rows]], atol=1e-5)
    assert torch.equal(acts.tokens[rows], acts.grid[d, acts.pos[rows]])


def test_top_contexts_mark_the_activating_token(zoo, zoo_acts):
    z = zoo_acts.A[:, 7].clamp_min(0)
    ctx = top_contexts(zoo_acts, z, zoo.tokenizer, n=3)
    best = int(z.argmax())
    assert ctx[0].activation == pytest.approx(float(z[best]))
    assert ctx[0].tokens[ctx[0].index] == zoo.tokenizer.convert_ids_to_tokens(int(zoo_acts.tokens[best]))
    assert [c.activation for c in ctx] == sorted((c.activation for c in ctx), reverse=True)


def test_steering_strength_zero_changes_nothing(zoo, zoo_acts):
    u = torch.randn(zoo.d_mlp, generator=torch.Generator().manual_seed(0))
    cfg = SteeringConfig(strengths=(0.0, 1.0), n_docs=3, ctx_len=16, n_random=1)
    t = steering_test(zoo, 2, "neurons", {"u": u, "dm": diff_means(zoo_acts, [int(zoo_acts.tokens[0])])},
                      [5, 6], scale=10.0, cfg=cfg)
    for name in ("u", "dm"):
        assert t.delta_logp[name][0] == 0.0 and t.kl[name][0] == 0.0
        assert t.kl[name][1] > 1e-4  # a real push does move the model


@pytest.mark.parametrize("name", ["gpt2-zoo", "llama-zoo"])
def test_steering_hidden_direction_equals_its_image_at_the_mlp_output(zoo_models, name):
    """Adding u to the MLP's hidden activations (after the gate, for Llama) is adding
    u @ W_out to its output."""
    from circuitlab.models.weights import W_out

    zoo = zoo_models(name)
    u = torch.randn(zoo.d_mlp, generator=torch.Generator().manual_seed(1))
    u /= u.norm()
    v = u @ W_out(zoo)[2].detach()
    cfg = SteeringConfig(strengths=(0.0, 2.0), n_docs=3, ctx_len=16, n_random=1)
    a = steering_test(zoo, 2, "neurons", {"x": u}, [5], scale=3.0, cfg=cfg)
    b = steering_test(zoo, 2, "mlp_out", {"x": v}, [5], scale=3.0 * float(v.norm()), cfg=cfg)
    assert a.delta_logp["x"][1] == pytest.approx(b.delta_logp["x"][1], abs=1e-4)
    assert a.kl["x"][1] == pytest.approx(b.kl["x"][1], abs=1e-4)


def test_comparison_at_equal_kl_interpolates():
    from circuitlab.sparse.snmf import SteeringTest

    t = SteeringTest([0.0, 1.0, 2.0], 1.0, [1], ["a"], delta_logp={"x": [0.0, 1.0, 3.0], "y": [0.0, 0.1, 0.2]},
                     kl={"x": [0.0, 0.2, 0.4], "y": [0.0, 0.01, 0.02]})
    at = t.at_kl(0.3)
    assert at["x"] == pytest.approx(2.0) and at["y"] is None
    assert t.at_kl(0.1)["x"] == pytest.approx(0.5)


def test_steering_refuses_bad_input(zoo):
    cfg = SteeringConfig(strengths=(1.0,), n_docs=2, ctx_len=8, n_random=1)
    with pytest.raises(ValueError, match="entries of site"):
        steering_test(zoo, 2, "neurons", {"x": torch.ones(zoo.d_model)}, [5], 1.0, cfg)
    with pytest.raises(ValueError, match="not an MLP site"):
        steering_test(zoo, 2, "resid_pre", {"x": torch.ones(zoo.d_model)}, [5], 1.0, cfg)
    with pytest.raises(ValueError, match="concept"):
        steering_test(zoo, 2, "neurons", {"x": torch.ones(zoo.d_mlp)}, [], 1.0, cfg)
    with pytest.raises(ValueError, match="strengths"):
        SteeringConfig(strengths=())


def test_report_saves_loads_and_pages(zoo, tmp_path):
    from circuitlab.sparse.snmf.report import analyse, load_factors

    r = analyse(zoo, 1, "mlp_out", SNMFConfig(factors=4, iters=30), n_docs=12, ctx_len=24, steer=1,
                steer_cfg=SteeringConfig(strengths=(0.0, 1.0), n_docs=2, ctx_len=12, n_random=1))
    r.save(tmp_path / "out")
    fact, info = load_factors(tmp_path / "out")
    assert torch.allclose(fact.Y, r.fact.Y.float()) and fact.Y.shape == (4, zoo.d_model)
    assert info["hook"] == "blocks.1.hook_mlp_out" and len(info["factors"]) == 4
    assert len(info["steering"]) == 1 and info["steering"][0]["delta_logp"]
    page = (tmp_path / "out" / "snmf.html").read_text()
    assert "factor 3" in page and (tmp_path / "out" / "plotly.min.js").exists()
    card = r.cards[0]
    assert card.contexts and card.contexts[0].activation == pytest.approx(float(r.fact.Z[:, 0].max()), rel=1e-5)


def test_cli_writes_factors_and_page(tmp_path, capsys):
    from circuitlab.cli import main

    out = tmp_path / "snmf"
    rc = main(["snmf", "--model", "gpt2-zoo", "--layer", "2", "--factors", "6", "--data", "zoo", "--docs", "12",
               "--ctx-len", "24", "--iters", "20", "--steer", "1", "--steer-docs", "2", "--strengths", "0,1",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    info = json.loads((out / "snmf.json").read_text())
    assert info["format"] == "circuitlab.snmf/1" and info["config"]["factors"] == 6
    assert (out / "factors.safetensors").exists() and (out / "snmf.html").exists()
    assert "relative error" in capsys.readouterr().out


@pytest.mark.parametrize("args, word", [(["--layer", "9"], "layer"), (["--factors", "0"], "factors"),
                                        (["--strengths", "a,b"], "strengths"), (["--docs", "0"], "docs")])
def test_cli_bad_input_exits_2(tmp_path, capsys, args, word):
    from circuitlab.cli import main

    base = {"--layer": "2", "--factors": "4", "--docs": "4"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = ["snmf", "--model", "gpt2-zoo", "--out", str(tmp_path / "o"), "--steer", "0"]
    for k, v in base.items():
        argv += [k, v]
    assert main(argv) == 2
    assert word in capsys.readouterr().err


@pytest.mark.slow
def test_cli_on_smollm2(tmp_path):
    """SNMF of a SmolLM2-135M MLP (needs `circuitlab models fetch smollm2-135m`)."""
    from circuitlab.cli import main
    from circuitlab.models import fetch

    if not fetch.is_fetched("smollm2-135m"):
        pytest.skip("smollm2-135m is not fetched (circuitlab models fetch smollm2-135m)")
    out = tmp_path / "smollm2"
    assert main(["snmf", "--model", "smollm2-135m", "--layer", "10", "--factors", "64", "--docs", "256",
                 "--ctx-len", "64", "--out", str(out)]) == 0
    info = json.loads((out / "snmf.json").read_text())
    assert info["error"] < 0.9 and len(info["steering"]) == 4
