"""MP-SAE: the encoder is matching pursuit (against a loop-by-loop reference), files round-trip,
it trains from Python and from ``circuitlab train``, and how it compares with TopK at equal k on
hierarchical features."""

import json

import pytest
import torch

from circuitlab.sparse.base import config_class, make_coder
from circuitlab.sparse.files import load_coder, save_coder
from circuitlab.sparse.architectures.mpsae import matching_pursuit
from circuitlab.sparse.recovery import recovery
from circuitlab.sparse.store import ShardLoader
from circuitlab.sparse.synthetic import ToyData
from circuitlab.sparse.toy_hierarchy import HierarchyToy
from circuitlab.sparse.trainer import TrainConfig, Trainer, fvu


def _mp(d=8, n=20, k=3, seed=0, **kw):
    c = make_coder(config_class("mpsae")(d_in=d, d_sae=n, k=k, seed=seed, **kw))
    with torch.no_grad():
        c.b_dec.copy_(torch.randn(d, generator=torch.Generator().manual_seed(seed + 1)) * 0.3)
    return c


def reference_pursuit(x, W, b, k):
    """Matching pursuit written out atom by atom, one token at a time (float64)."""
    x, W, b = x.double(), W.double(), b.double()
    out = torch.zeros(x.shape[0], W.shape[0], dtype=torch.float64)
    for i in range(x.shape[0]):
        r = x[i] - b
        for _ in range(k):
            scores = [float((r * W[j]).sum()) for j in range(W.shape[0])]
            best = max(range(W.shape[0]), key=lambda j: scores[j])
            a = max(scores[best], 0.0)
            out[i, best] += a
            r = r - a * W[best]
    return out


def test_encode_is_matching_pursuit():
    c = _mp(k=4)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(2)) + 0.5
    with torch.no_grad():
        f = c.encode(x)
    ref = reference_pursuit(x, c.W_dec.detach(), c.b_dec.detach(), 4)
    assert torch.allclose(f.double(), ref, atol=1e-5)
    assert ((f > 0).sum(-1) <= 4).all()
    y = c(x)
    assert torch.allclose(y.double(), ref @ c.W_dec.detach().double() + c.b_dec.detach().double(), atol=1e-5)
    with torch.no_grad():  # leading dimensions (batch, position) are kept
        assert torch.allclose(c.encode(x.view(4, 4, 8)), f.view(4, 4, -1))
        assert torch.allclose(c.loss(x).y_hat, y, atol=1e-5)  # training reconstructs as decode(encode(x))


def test_orthonormal_atoms_recover_a_sparse_code_exactly():
    d = 8
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))
    c = _mp(d=d, n=d, k=3)
    with torch.no_grad():
        c.W_dec.copy_(q.t())  # rows: an orthonormal basis
    code = torch.zeros(5, d)
    g = torch.Generator().manual_seed(1)
    for i in range(5):
        code[i, torch.randperm(d, generator=g)[:3]] = torch.rand(3, generator=g) + 0.5
    x = code @ c.W_dec.detach() + c.b_dec.detach()
    with torch.no_grad():
        assert torch.allclose(c.encode(x), code, atol=1e-5)
        assert torch.allclose(c(x), x, atol=1e-5)


def test_residual_never_grows_and_drops_by_the_squared_coefficient():
    g = torch.Generator().manual_seed(3)
    atoms = torch.randn(20, 8, generator=g)
    atoms /= atoms.norm(dim=-1, keepdim=True)
    r0 = torch.randn(32, 8, generator=g, dtype=torch.float64)
    atoms = atoms.double()
    prev = r0.pow(2).sum(-1)
    for t in range(1, 8):  # the first t steps of a longer pursuit are the pursuit with k = t
        _, coef, r = matching_pursuit(r0, atoms, t)
        now = r.pow(2).sum(-1)
        assert (now <= prev + 1e-12).all()
        assert torch.allclose(now, prev - coef[:, -1].pow(2), atol=1e-10)
        prev = now


def test_loss_gradients_match_autograd_through_the_reference():
    """The batched pursuit's gradients equal those of the token-by-token pursuit (float64)."""
    c = _mp(k=3).double()
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.3
    c.loss(x).loss.backward()
    W, b = c.W_dec.detach().clone().requires_grad_(), c.b_dec.detach().clone().requires_grad_()
    total = 0.0
    for i in range(x.shape[0]):
        r = x[i] - b
        for _ in range(3):
            j = int(torch.stack([(r.detach() * W[m].detach()).sum() for m in range(W.shape[0])]).argmax())
            a = (r * W[j]).sum().clamp_min(0)
            r = r - a * W[j]
        total = total + r.pow(2).sum()
    (total / x.shape[0]).backward()
    assert torch.allclose(c.W_dec.grad, W.grad, atol=1e-10)
    assert torch.allclose(c.b_dec.grad, b.grad, atol=1e-10)


def test_bad_options_are_named():
    cls = config_class("mpsae")
    with pytest.raises(ValueError, match="k = 0 is invalid"):
        cls(d_in=8, d_sae=16, k=0)
    with pytest.raises(ValueError, match=r"k = 17 is invalid; k must be an integer in \[1, 16\]"):
        cls(d_in=8, d_sae=16, k=17)
    with pytest.raises(ValueError, match="init_decoder_norm"):
        cls(d_in=8, d_sae=16, k=2, init_decoder_norm=0.1)
    with pytest.raises(ValueError, match="SAE only"):  # a transcoder
        cls(d_in=8, d_sae=16, k=2, d_out=8, skip=True, hooks_in=("blocks.0.hook_resid_mid",),
            hooks_out=("blocks.0.hook_mlp_out",))
    with pytest.raises(ValueError, match="SAE only"):  # a crosscoder
        cls(d_in=8, d_sae=16, k=2, n_sources=2)
    with pytest.raises(ValueError, match="apply_b_dec_to_input"):
        cls(d_in=8, d_sae=16, k=2, apply_b_dec_to_input=False)
    with pytest.raises(NotImplementedError, match="use encode"):
        _mp().activate(torch.zeros(2, 20))
    from circuitlab.sparse import config

    with pytest.raises(ValueError, match="k = 0 is invalid"):
        config.parse({"coder": [{"arch": "mpsae", "k": 0}]})
    with pytest.raises(ValueError, match="did you mean 'k'"):
        config.parse({"coder": [{"arch": "mpsae", "kk": 4}]})
    sec, fields = config.parse({"coder": [{"arch": "mpsae", "kind": "transcoder", "k": 4}]}).coders[0]
    with pytest.raises(ValueError, match="SAE only"):
        config.coder_config(sec, fields, 16, "m")


def test_fold_scaling_keeps_unit_atoms_and_matches_the_scaled_coder():
    c = _mp(k=3)
    c.in_scale.fill_(2.5)
    c.out_scale.fill_(2.5)
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        f_scaled, y_scaled = c.encode(x * 2.5), c(x * 2.5)
        c.fold_scaling()
        assert torch.allclose(c.W_dec.norm(dim=-1), torch.ones(20))
        assert torch.allclose(c.encode(x), f_scaled / 2.5, atol=1e-5)  # latents in raw units
        assert torch.allclose(c(x), y_scaled / 2.5, atol=1e-5)


def test_save_load_round_trip_in_the_sae_lens_layout(tmp_path):
    from safetensors.torch import load_file

    c = _mp(d=8, n=20, k=3, hooks_in=("blocks.1.hook_resid_post",), models=("m",))
    save_coder(c, tmp_path / "mp")
    lens = json.loads((tmp_path / "mp/cfg.json").read_text())
    assert lens["architecture"] == "matching_pursuit"
    assert (lens["max_iterations"], lens["residual_threshold"], lens["stop_on_duplicate_support"]) == (3, 0.0, False)
    assert set(load_file(str(tmp_path / "mp/sae_weights.safetensors"))) == {"W_dec", "b_dec"}
    back = load_coder(tmp_path / "mp")
    assert back.cfg == c.cfg
    assert back.state_dict().keys() == c.state_dict().keys()
    for k, v in c.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(back.encode(x), c.encode(x))
    # a folder as SAE Lens writes it (no circuitlab config) opens as the same coder
    del lens["circuitlab"]
    (tmp_path / "mp/cfg.json").write_text(json.dumps(lens))
    foreign = load_coder(tmp_path / "mp")
    assert foreign.cfg.arch == "mpsae" and foreign.cfg.k == 3
    with torch.no_grad():
        assert torch.equal(foreign.encode(x), c.encode(x))
    lens["residual_threshold"] = 0.01  # stops early: not a fixed-k pursuit
    (tmp_path / "mp/cfg.json").write_text(json.dumps(lens))
    with pytest.raises(ValueError, match="fixed-step matching_pursuit"):
        load_coder(tmp_path / "mp")


@pytest.fixture
def one_thread():
    """Training on toy sizes: a second thread only adds synchronisation (and under load, waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _trainer(coders, data, steps, tmp_path, batch=256, **kw):
    cfg = TrainConfig(total_tokens=batch * steps, batch_size=batch, progress=False, checkpoint_every=0, **kw)
    return Trainer(coders, ShardLoader(data.shard, 8, batch, seed=1), cfg, tmp_path)


def _held_fvu(coder, x):
    with torch.no_grad():
        return float(fvu(x, coder(x)))


def test_trains_on_a_toy_and_lowers_fvu(tmp_path, one_thread):
    data = ToyData(d=16, n_features=48, shard_tokens=1024, seed=2)
    held = data.shard(99).x
    t = _trainer({"mp": make_coder(config_class("mpsae")(d_in=16, d_sae=64, k=4, seed=0))}, data, 150, tmp_path)
    t.initialise(data.shard(0))  # what training starts from (run() repeats it)
    before = _held_fvu(t.export("mp"), held)
    t.run(sample=data.shard(0))
    after = _held_fvu(t.export("mp"), held)
    assert after < 0.4 * before, (before, after)  # measured: 0.31 -> 0.07
    assert torch.allclose(t.coders["mp"].W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)
    assert all(h["mp.l0"] <= 4 for h in t.history)


def test_resume_gives_identical_weights(tmp_path, one_thread):
    data = ToyData(d=16, n_features=48, shard_tokens=512)

    def trainer(where):
        cfg = TrainConfig(total_tokens=128 * 20, batch_size=128, lr=3e-3, progress=False, checkpoint_every=5)
        return Trainer({"mp": _mp(d=16, n=32, k=3)}, ShardLoader(data.shard, 6, 128, seed=5), cfg, where)

    full = trainer(tmp_path / "a")
    full.run(sample=data.shard(0))
    part = trainer(tmp_path / "b")
    part.run(sample=data.shard(0), stop_after=12)
    resumed = trainer(tmp_path / "b")
    resumed.run()
    for k, v in full.coders["mp"].state_dict().items():
        assert torch.equal(v, resumed.coders["mp"].state_dict()[k]), k


def test_hierarchy_toy_children_fire_only_with_their_parent():
    toy = HierarchyToy(d=32, n_parents=6, children=3, p_parent=0.3, child_cos=0.6, shard_tokens=4096)
    codes = toy.codes(0) > 0
    kids = codes[:, toy.n_parents:]
    assert kids.any()
    assert not (kids & ~codes[:, toy.parent[toy.n_parents:]]).any()
    assert (kids.view(-1, 6, 3).sum(-1) <= 1).all()  # at most one child per parent
    cos = (toy.child_dirs * toy.dirs[toy.parent[toy.n_parents:]]).sum(-1)
    assert torch.allclose(cos, torch.full_like(cos, 0.6), atol=1e-5)
    assert torch.allclose(toy.dirs.norm(dim=-1), torch.ones(len(toy.dirs)), atol=1e-5)
    assert torch.equal(toy.shard(3).x, toy.shard(3).x)


def test_mpsae_against_topk_at_equal_k_on_hierarchical_features(tmp_path, one_thread):
    """Same toy, same k, same trainer. Measured over seeds 0-5 (toy and coders), 400 steps:

    k = 4 (this test; the toy averages 4.3 active features): FVU 0.074-0.081 (MP) vs 0.105-0.118
    (TopK); child-direction MMCS 0.81-0.82 vs 0.77-0.80, children recovered at cosine 0.9: 6-13%
    vs 2-8%; parents found by both (MMCS > 0.94). Seeds 0-2 at k = 2: MP still has the lower FVU
    (0.20 vs 0.31) but TopK recovers more children (22-30% vs 9-23%); at k = 8: FVU 0.026-0.030
    vs 0.033-0.036, child MMCS 0.75-0.76 vs 0.77-0.78. So MP's FVU advantage holds at every k
    tried; the child-recovery ordering asserted here is specific to this k.

    Why neither finds most children: a child always fires with its parent, so parent + the
    child's part orthogonal to the parent explains the data as well as parent + child. TopK
    learns those orthogonal parts (their MMCS 0.89-0.92 at k = 4, vs 0.68-0.71 for MP); MP's
    atoms lean towards parent + child combinations."""
    data = HierarchyToy(d=32, n_parents=16, children=4, seed=0, shard_tokens=2048)
    coders = {arch: make_coder(config_class(arch)(d_in=32, d_sae=96, k=4, seed=0)) for arch in ("mpsae", "topk")}
    t = _trainer(coders, data, 400, tmp_path, dead_window_tokens=256 * 20)
    t.run(sample=data.shard(0))
    held = data.shard(999).x
    res = {}
    for arch in coders:
        c = t.export(arch)
        with torch.no_grad():
            l0 = float((c.encode(held) > 0).sum(-1).float().mean())
        res[arch] = dict(fvu=_held_fvu(c, held), l0=l0, child=recovery(c.W_dec, data.child_dirs)["mmcs"],
                         parent=recovery(c.W_dec, data.parent_dirs)["mmcs"])
    mp, tk = res["mpsae"], res["topk"]
    assert 3.5 < mp["l0"] <= 4 and 3.5 < tk["l0"] <= 4, res
    assert mp["fvu"] < 0.85 * tk["fvu"], res  # measured 0.081 vs 0.118
    assert mp["child"] > tk["child"], res  # measured 0.818 vs 0.778
    assert mp["parent"] > 0.9 and tk["parent"] > 0.9, res


def test_train_from_the_command_line(tiny_dir, tmp_path):
    from circuitlab.cli import main

    out = tmp_path / "run"
    (tmp_path / "c.toml").write_text(f"""
[run]
out = "{out}"
model = "{tiny_dir('gpt2')}"
ctx_len = 24
shard_tokens = 256
docs_per_batch = 16
exclude_special_tokens = false
eval_docs = 8
density_html = false

[train]
total_tokens = 1024
batch_size = 128
lr = 0.003
progress = false

[[coder]]
name = "mp"
arch = "mpsae"
layer = 1
k = 4
expansion = 2
""")
    assert main(["train", str(tmp_path / "c.toml")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["mp"]["l0"] <= 4 and summary["mp"]["fvu"] < 1
    coder = load_coder(out / "mp")
    assert coder.cfg.arch == "mpsae" and coder.cfg.k == 4
    assert json.loads((out / "mp/cfg.json").read_text())["architecture"] == "matching_pursuit"
