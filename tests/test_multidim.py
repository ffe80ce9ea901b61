"""Multi-dimensional features: a planted circle written by a group of latents is found as one
irreducible 2-D cluster, a group of independent features is found but judged reducible, and a
model whose word embeddings lie on a circle shows the circle in the words' given order."""

import json
import math
import shutil

import pytest
import torch

from circuitlab.sparse import config_class, make_coder
from circuitlab.sparse.multidim import (ClusterConfig, IrreducibilityConfig, circle_score, cluster_decoder,
                                        components, kmeans, mixture_index, multidim_features, project_cluster,
                                        separability_index, spectral_clusters, word_circle)

D = 64
N_CIRCLE, N_INDEP, N_RANDOM = 12, 3, 45


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def planted():
    """A coder whose 12 circle latents point at 2w + cos(t) u + sin(t) v (a ring in the u-v plane,
    sharing the offset w, as days of the week share being days), 3 latents of independent
    features with mutually similar directions, and 45 random latents, shuffled. Returns the
    coder, the circle latents in ring order, and the independent ones."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
    t = torch.arange(N_CIRCLE) * (2 * math.pi / N_CIRCLE)
    circle = _unit(2 * q[:, 4] + t.cos()[:, None] * q[:, 0] + t.sin()[:, None] * q[:, 1])
    indep = _unit(torch.stack([0.75 * q[:, 2] + 0.66 * q[:, 5 + i] for i in range(N_INDEP)]))
    rows = torch.cat([circle, indep, _unit(torch.randn(N_RANDOM, D, generator=g))])
    perm = torch.randperm(len(rows), generator=g)
    where = torch.empty_like(perm)
    where[perm] = torch.arange(len(perm))
    coder = make_coder(config_class("relu")(d_in=D, d_sae=len(rows), hooks_in=("blocks.0.hook_resid_post",)))
    with torch.no_grad():
        coder.W_dec.copy_(rows[perm])
    return coder, where[:N_CIRCLE].tolist(), where[N_CIRCLE:N_CIRCLE + N_INDEP].sort().values.tolist()


def _activations(coder, circle, indep, n=3000, seed=1):
    """Latent activations of n tokens: half carry a point of the circle (the two latents around its
    angle share it, as a dictionary tiles a circle), the others the independent features, each
    on 30% of tokens, plus sparse random latents."""
    g = torch.Generator().manual_seed(seed)
    f = (torch.rand(n, coder.d_sae, generator=g) < 0.01) * torch.rand(n, coder.d_sae, generator=g)
    f[:, circle + indep] = 0
    on = torch.rand(n, generator=g) < 0.5
    angle = torch.rand(n, generator=g) * N_CIRCLE
    lo = angle.floor().long() % N_CIRCLE
    frac = angle - angle.floor()
    ids = torch.tensor(circle)
    rows = on.nonzero().flatten()
    f[rows, ids[lo[rows]]] = 1 - frac[rows]
    f[rows, ids[(lo[rows] + 1) % N_CIRCLE]] = frac[rows]
    for i in indep:
        fire = ~on & (torch.rand(n, generator=g) < 0.3)
        f[fire, i] = 0.5 + torch.rand(int(fire.sum()), generator=g)
    return f


def test_clusters_find_the_circle_and_the_independent_group(planted):
    coder, circle, indep = planted
    for size in (15, 25, 60):  # the ring stays whole whatever the cluster size allowed
        groups = cluster_decoder(coder, config=ClusterConfig(max_size=size))
        assert sorted(circle) in groups and indep in groups
    assert sorted(i for g in groups for i in g) == list(range(coder.d_sae))
    sub = cluster_decoder(coder, latents=circle + indep[:2])
    assert sorted(circle) in sub and indep[:2] in sub


def test_circle_is_irreducible_and_two_dimensional(planted):
    coder, circle, indep = planted
    f = _activations(coder, circle, indep)
    view = project_cluster(coder, f, circle)
    assert len(view.rows) == int((f[:, circle] > 0).any(1).sum())
    assert view.irreducible and view.separability > 0.5 and view.mixture < 0.3
    assert sum(view.explained[:2]) > 0.99  # the ring's plane holds all the variance
    assert view.decoder_rank == 3  # the latents span the plane plus their shared offset
    radius = view.points.norm(dim=1)
    assert float(radius.std() / radius.mean()) < 0.1  # a ring (a 12-gon), not a filled disc
    other = project_cluster(coder, f, indep)
    assert not other.irreducible and other.mixture > 0.4  # each feature alone lies on its own line


def test_measures_on_known_shapes():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(2000, generator=g) * 2 * math.pi
    ring = torch.stack([t.cos(), t.sin()], 1)
    blob = torch.randn(2000, 2, generator=g)
    a = (torch.rand(2000, generator=g) < 0.2) * torch.rand(2000, generator=g)
    b = (torch.rand(2000, generator=g) < 0.2) * torch.rand(2000, generator=g)
    lines = torch.stack([a, b], 1)[(a > 0) | (b > 0)]
    assert separability_index(ring) > 1.0 and separability_index(blob) < 0.05
    assert mixture_index(ring) < 0.3 and mixture_index(lines) > 0.4 and mixture_index(blob) < 0.2
    cfg = IrreducibilityConfig()
    assert cfg.min_separability > separability_index(blob) and cfg.max_mixture < mixture_index(lines)
    c = (torch.rand(2000, 3, generator=g) < 0.3) * torch.rand(2000, 3, generator=g)
    cube = c[(c > 0).any(1)] @ torch.linalg.qr(torch.randn(3, 3, generator=g))[0]  # 3 independent, rotated
    assert mixture_index(cube) > 0.45  # the plane of two of them holds every point where the third is off
    assert mixture_index(torch.randn(2000, 3, generator=g)) < 0.2


def test_spectral_pieces():
    a = torch.zeros(10, 10)
    a[:5, :5] = 1.0
    a[5:, 5:] = 0.9
    a.fill_diagonal_(0)
    a[4, 5] = a[5, 4] = 0.05  # one weak bridge
    labels = spectral_clusters(a.double(), 2)
    assert len(set(labels[:5].tolist())) == 1 and len(set(labels[5:].tolist())) == 1 and labels[0] != labels[9]
    a[4, 5] = a[5, 4] = 0
    assert components(a).tolist() == [0] * 5 + [5] * 5
    pts = torch.cat([torch.randn(30, 2) * 0.1, torch.randn(30, 2) * 0.1 + 5])
    lab = kmeans(pts, 2)
    assert len(set(lab[:30].tolist())) == 1 and lab[0] != lab[30]


def test_circle_score():
    t = torch.arange(7) * (2 * math.pi / 7)
    pts = torch.stack([t.cos(), t.sin()], 1) * 3 + 1
    s = circle_score(pts)
    assert s.is_circle and s.cyclic_adjacency == 1.0 and s.radius_cv < 1e-6 and abs(s.largest_gap - 1 / 7) < 1e-6
    assert circle_score(pts.flip(0)).cyclic_adjacency == 1.0  # either direction around
    shuffled = circle_score(pts[torch.tensor([0, 3, 6, 2, 5, 1, 4])])
    assert not shuffled.is_circle and shuffled.cyclic_adjacency < 0.5
    line = torch.stack([torch.arange(7.0), torch.zeros(7)], 1)
    assert not circle_score(line).is_circle


@pytest.fixture(scope="module")
def circle_model(tiny_dir, tmp_path_factory):
    """The tiny GPT-2 with the embeddings of w0..w6 moved onto a circle (offset from the origin)
    in a plane, and a residual SAE at blocks.0.hook_resid_pre with 7 latents around that circle
    plus 30 random ones."""
    from transformers import AutoModelForCausalLM

    import circuitlab as cl

    folder = tmp_path_factory.mktemp("circle") / "gpt2"
    shutil.copytree(tiny_dir("gpt2"), folder)
    hf = AutoModelForCausalLM.from_pretrained(folder)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
    t = torch.arange(7) * (2 * math.pi / 7)
    ring = 2 * q[:, 2] + t.cos()[:, None] * q[:, 0] + t.sin()[:, None] * q[:, 1]
    with torch.no_grad():
        for i in range(7):
            hf.transformer.wte.weight[vocab[f"w{i}"]] = 1.5 * ring[i]
    hf.save_pretrained(folder, safe_serialization=True)
    model = cl.load(str(folder), device="cpu")
    rows = torch.cat([_unit(ring), _unit(torch.randn(30, D, generator=g))])
    coder = make_coder(config_class("relu")(d_in=D, d_sae=len(rows), hooks_in=("blocks.0.hook_resid_pre",)))
    with torch.no_grad():
        coder.W_dec.copy_(rows)
        coder.W_enc_t.copy_(rows)
        coder.b_enc.fill_(-1.5)
        coder.b_dec.zero_()
    return model, coder


TEMPLATES = ("{word}", "then {word}", "Mary went to {word}")


def test_word_circle_finds_the_planted_circle(circle_model):
    model, coder = circle_model
    words = [f"w{i}" for i in range(7)]
    wc = word_circle(model, coder, words, TEMPLATES)
    assert set(wc.latents) == set(range(7))  # the ring's latents, not the random ones
    assert wc.score.is_circle and wc.score.cyclic_adjacency == 1.0
    assert wc.raw_score.is_circle  # the embeddings themselves are on the circle
    assert wc.prompt_points.shape == (21, 2) and len(wc.figure().data) == 3
    json.dumps(wc.to_dict())
    mixed = word_circle(model, coder, [words[i] for i in (0, 3, 6, 2, 5, 1, 4)], TEMPLATES)
    assert not mixed.score.is_circle and mixed.score.cyclic_adjacency < 0.5


def test_word_circle_bad_input(circle_model):
    model, coder = circle_model
    with pytest.raises(ValueError, match="at least 3 words"):
        word_circle(model, coder, ["w0", "w1"], TEMPLATES)
    with pytest.raises(ValueError, match="repeat"):
        word_circle(model, coder, ["w0", "w1", "w0"], TEMPLATES)
    with pytest.raises(ValueError, match="end with"):
        word_circle(model, coder, ["w0", "w1", "w2"], ("{word} went",))
    with pytest.raises(ValueError, match="max_size"):
        ClusterConfig(max_size=1)
    with pytest.raises(ValueError, match="min_cosine"):
        ClusterConfig(min_cosine=1.5)
    with pytest.raises(ValueError, match="latents must lie"):
        cluster_decoder(coder, latents=[0, 999])


def test_multidim_on_a_bundled_coder(zoo_model):
    from circuitlab.sparse.bundled import find_coder
    from circuitlab.sparse.evaluate import heldout_documents
    from circuitlab.sparse.flow import coder_activations

    model = zoo_model("gpt2-zoo")
    coder = find_coder("gpt2-zoo", "resid", 2)
    docs = heldout_documents(16)
    groups = [[0, 1, 2], [10, 11], [20]]
    views = multidim_features(model, coder, docs, clusters=groups, min_tokens=1)
    acts, _ = coder_activations(model, {"c": coder}, docs)
    for v in views:
        assert len(v.rows) == int((acts["c"][:, v.latents] > 0).any(1).sum())
        assert v.labels and len(v.labels) == len(v.rows)
        assert v.to_dict()["irreducible"] in (True, False)
    assert [20] not in [v.latents for v in views]  # one latent is not a multi-dimensional feature


def test_cli_multidim(tmp_path):
    from circuitlab.cli import main

    out = tmp_path / "md"
    assert main(["features", "multidim", "--model", "gpt2-zoo", "--layer", "2", "--docs", "16", "--max-size", "300",
                 "--out", str(out)]) == 0
    d = json.loads((out / "multidim.json").read_text())
    assert sum(d["cluster_sizes"]) == 1024 and (out / "multidim.html").is_file()
    assert main(["features", "multidim", "--model", "gpt2-zoo", "--layer", "2", "--words", "Mary,John,Anna,Tom",
                 "--templates", "{word}|then {word}", "--out", str(out)]) == 0
    d = json.loads((out / "multidim.json").read_text())
    assert d["words"] == ["Mary", "John", "Anna", "Tom"] and "is_circle" in d["score"]
    assert main(["features", "multidim", "--model", "gpt2-zoo", "--words", "Mary,,John", "--out", str(out)]) == 2


DAYS = "Monday,Tuesday,Wednesday,Thursday,Friday,Saturday,Sunday"
MONTHS = "January,February,March,April,May,June,July,August,September,October,November,December"


@pytest.mark.slow
@pytest.mark.parametrize("layer", [8, 16, 24])
@pytest.mark.parametrize("words", [DAYS, MONTHS], ids=["days", "months"])
def test_smollm2_words_on_a_circle(tmp_path, layer, words):
    """Days and months through SmolLM2-135M's residual SAEs: whether they lie on a circle in the
    plane of the latents they use, and in the raw activations' top two components. Prints what
    was found (run with -s); the outcome is a measurement, not a known answer."""
    from circuitlab.cli import main
    from circuitlab.models import fetch
    from circuitlab.sparse.bundled import trained_folder

    if not fetch.is_fetched("smollm2-135m"):
        pytest.skip("smollm2-135m is not fetched (circuitlab models fetch smollm2-135m)")
    if not any(trained_folder("smollm2-135m").glob(f"*_resid_L{layer}")):
        pytest.skip("no SmolLM2 residual SAEs (circuitlab train saes/configs/smollm2-135m.toml)")
    out = tmp_path / "md"
    assert main(["features", "multidim", "--model", "smollm2-135m", "--layer", str(layer), "--words", words,
                 "--out", str(out)]) == 0
    d = json.loads((out / "multidim.json").read_text())
    print(layer, words.split(",")[0], "latents", d["latents"], "sae", d["score"], "raw", d["raw_score"])
    assert 0 <= d["score"]["cyclic_adjacency"] <= 1 and (out / "multidim.html").is_file()


@pytest.mark.slow
def test_smollm2_multidim_clusters(tmp_path):
    """Every cluster of SmolLM2's layer-16 residual SAE measured on held-out English (prints the
    irreducible ones)."""
    from circuitlab.cli import main
    from circuitlab.models import fetch
    from circuitlab.sparse.bundled import trained_folder

    if not fetch.is_fetched("smollm2-135m"):
        pytest.skip("smollm2-135m is not fetched (circuitlab models fetch smollm2-135m)")
    if not any(trained_folder("smollm2-135m").glob("*_resid_L16")):
        pytest.skip("no SmolLM2 residual SAEs (circuitlab train saes/configs/smollm2-135m.toml)")
    out = tmp_path / "md"
    assert main(["features", "multidim", "--model", "smollm2-135m", "--layer", "16", "--data", "corpus:english",
                 "--docs", "128", "--out", str(out)]) == 0
    d = json.loads((out / "multidim.json").read_text())
    print(d["clusters"], "clusters;", [m for m in d["measured"] if m["irreducible"]][:10])
    assert sum(d["cluster_sizes"]) > 0
