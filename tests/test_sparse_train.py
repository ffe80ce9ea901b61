"""Sparse-coder training: resumption, NaN handling, BatchTopK export, 2-process data parallel."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from circuitlab.sparse.base import config_class, make_coder
from circuitlab.sparse.store import ShardLoader
from circuitlab.sparse.synthetic import ToyData
from circuitlab.sparse.trainer import NonFiniteLoss, TrainConfig, Trainer, fvu

DATA = ToyData(d=16, n_features=48, shard_tokens=512)


def _coders():
    return {"topk": make_coder(config_class("topk")(d_in=16, d_sae=64, k=4, aux_k=8, seed=1)),
            "batchtopk": make_coder(config_class("batchtopk")(d_in=16, d_sae=64, k=4, seed=2)),
            "jumprelu": make_coder(config_class("jumprelu")(d_in=16, d_sae=64, l0_coeff=0.05, seed=3)),
            "relu": make_coder(config_class("relu")(d_in=16, d_sae=64, l1_coeff=0.5, seed=4))}


def _cfg(**kw):
    base = dict(total_tokens=128 * 40, batch_size=128, lr=3e-3, progress=False, checkpoint_every=10,
                dead_window_tokens=128 * 3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("untransposed_adam", [False, True])
def test_resume_after_interruption_gives_identical_weights(tmp_path, untransposed_adam):
    """``untransposed_adam``: the checkpoint is rewritten as written before the encoder was held
    transposed (W_enc's Adam moments under adam/W_enc/ in [d_in, d_sae] layout)."""
    from safetensors.torch import load_file, save_file

    full = Trainer(_coders(), ShardLoader(DATA.shard, 6, 128, seed=5, buffer_shards=2), _cfg(), tmp_path / "a")
    full.run(sample=DATA.shard(0))
    part = Trainer(_coders(), ShardLoader(DATA.shard, 6, 128, seed=5, buffer_shards=2), _cfg(), tmp_path / "b")
    part.run(sample=DATA.shard(0), stop_after=25)  # "killed" at step 25: last checkpoint is step 20
    info = json.loads((tmp_path / "b/checkpoints/latest.json").read_text())
    assert info["step"] == 20
    if untransposed_adam:
        f = tmp_path / "b/checkpoints" / info["file"]
        old = {k.replace("/adam/W_enc_t/", "/adam/W_enc/"): v.t().contiguous() if "/adam/W_enc_t/" in k and v.dim() == 2
               else v for k, v in load_file(str(f)).items()}
        assert sum("/adam/W_enc/" in k for k in old) >= 2
        save_file(old, str(f))
    resumed = Trainer(_coders(), ShardLoader(DATA.shard, 6, 128, seed=5, buffer_shards=2), _cfg(), tmp_path / "b")
    resumed.run()
    assert resumed.step == full.step == 40
    for n in full.coders:
        for (k, a), (_, b) in zip(full.coders[n].state_dict().items(), resumed.coders[n].state_dict().items()):
            assert torch.equal(a, b), f"{n}.{k} differs after resuming"
        assert torch.equal(full.fire_count[n], resumed.fire_count[n])


def test_dead_latents_tracked_in_tokens_and_auxk_revives(tmp_path):
    c = {"topk": make_coder(config_class("topk")(d_in=16, d_sae=64, k=2, aux_k=8, seed=1))}
    with torch.no_grad():  # nearly kill half the latents: they (almost) never win the top-k
        c["topk"].b_enc[:32] = -3.0
    t = Trainer(
        c, ShardLoader(DATA.shard, 6, 128), _cfg(total_tokens=128 * 60, checkpoint_every=0, log_every=5), tmp_path
    )
    t.run(sample=DATA.shard(0))
    assert t.dead_window == 128 * 3
    assert any(h["topk.dead"] > 0.2 for h in t.history)
    # AuxK pulled the dead latents' encoder biases up and revived some
    assert float(t.coders["topk"].b_enc[:32].detach().mean()) > -3.0 + 0.05
    assert t.history[-1]["topk.dead"] < max(h["topk.dead"] for h in t.history)


def test_nan_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    def bad(i):
        r = DATA.shard(i)
        if i == 3:
            r.x[5, 0] = float("nan")
        return r

    t = Trainer({"relu": _coders()["relu"]}, ShardLoader(bad, 6, 128, buffer_shards=1), _cfg(checkpoint_every=2),
                tmp_path)
    with pytest.raises(NonFiniteLoss, match="last good checkpoint is .*latest.json"):
        t.run(sample=DATA.shard(0))
    info = json.loads((tmp_path / "checkpoints/latest.json").read_text())
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "checkpoints" / info["file"]))
    assert all(torch.isfinite(v.float()).all() for v in w.values())


def test_batchtopk_exports_as_jumprelu_with_same_l0_and_fvu(tmp_path):
    data = ToyData(d=16, n_features=48, shard_tokens=1024, seed=3)
    c = make_coder(config_class("batchtopk")(d_in=16, d_sae=64, k=4, seed=0))
    cfg = _cfg(total_tokens=256 * 150, batch_size=256, checkpoint_every=0)
    t = Trainer({"b": c}, ShardLoader(data.shard, 8, 256), cfg, tmp_path)
    t.run(sample=data.shard(0))
    held = data.shard(99)
    coder = t.coders["b"]
    s = coder.in_scale
    x = held.x * s
    with torch.no_grad():
        from circuitlab.sparse.base import LossContext

        f_train, _, _ = coder.train_forward(x, LossContext())
        y_train = coder.decode(f_train) / s
        j = t.export("b")
        assert j.cfg.arch == "jumprelu"
        f_inf = j.encode(held.x)
        y_inf = j(held.x)
    l0_train = (f_train > 0).sum(-1).float().mean()
    l0_inf = (f_inf > 0).sum(-1).float().mean()
    assert abs(l0_inf - l0_train) <= 0.1 * l0_train, (l0_train, l0_inf)
    assert abs(fvu(held.x, y_inf) - fvu(held.x, y_train)) <= 0.01


SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    torch.set_num_threads(1)
    from circuitlab.sparse.dist import init_comm
    from circuitlab.sparse.synthetic import ToyData
    from circuitlab.sparse.store import ShardLoader
    from circuitlab.sparse.trainer import Trainer, TrainConfig
    from circuitlab.sparse.base import make_coder, config_class
    out = sys.argv[1]
    comm = init_comm()
    data = ToyData(d=16, n_features=48, shard_tokens=512)
    seen = []
    def shard(i):
        seen.append(i)
        return data.shard(i)
    coders = {"topk": make_coder(config_class("topk")(d_in=16, d_sae=64, k=4, aux_k=8, seed=1)),
              "batchtopk": make_coder(config_class("batchtopk")(d_in=16, d_sae=64, k=4, seed=2))}
    loader = ShardLoader(shard, 8, 128, seed=5, parts=2, rank=comm.rank, world=comm.world, buffer_shards=2)
    cfg = TrainConfig(total_tokens=128 * 30, batch_size=128, lr=3e-3, progress=False, checkpoint_every=0,
                      dead_window_tokens=128 * 3)
    t = Trainer(coders, loader, cfg, out, comm)
    t.run(sample=data.shard(0))
    from safetensors.torch import save_file
    tensors = {f"{n}.{k}": v.contiguous() for n, c in coders.items() for k, v in c.state_dict().items()}
    tensors.update({f"{n}.fired": t.fire_count[n] for n in coders})
    save_file(tensors, os.path.join(out, f"final_rank{comm.rank}.safetensors"))
    json.dump(sorted(set(seen)), open(os.path.join(out, f"shards_rank{comm.rank}.json"), "w"))
    json.dump(loader.parts, open(os.path.join(out, f"parts_rank{comm.rank}.json"), "w"))
""")


def test_two_process_training_matches_single_process(tmp_path):
    script = tmp_path / "dp.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for mode, cmd in (("dp", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "--master_port", "29531", str(script), str(tmp_path / "dp")]),
                      ("single", [sys.executable, str(script), str(tmp_path / "single")])):
        (tmp_path / mode).mkdir()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    from safetensors.torch import load_file

    single = load_file(str(tmp_path / "single/final_rank0.safetensors"))
    for rank in (0, 1):
        dp = load_file(str(tmp_path / f"dp/final_rank{rank}.safetensors"))
        for k, v in single.items():
            assert torch.allclose(v.double(), dp[k].double(), atol=2e-5, rtol=1e-4), k
    parts = [json.loads((tmp_path / f"dp/parts_rank{r}.json").read_text()) for r in (0, 1)]
    assert parts == [[0], [1]]
    shards = [set(json.loads((tmp_path / f"dp/shards_rank{r}.json").read_text())) for r in (0, 1)]
    assert shards[0] and shards[1] and not (shards[0] & shards[1]), shards
    assert all(i % 2 == 0 for i in shards[0]) and all(i % 2 == 1 for i in shards[1])


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_token_weighted_reconstruction_equals_brute_force(arch):
    from circuitlab.sparse.base import LossContext

    coder = _coders()[arch]
    x = DATA.shard(0).x[:64].float()
    w = torch.rand(64) + 0.1
    w = w / w.mean()
    out = coder.loss(x, None, LossContext(token_weight=w))
    brute = (w * (out.y_hat - x).pow(2).sum(-1)).mean()
    assert torch.allclose(out.recon, brute, rtol=1e-5)
    plain = coder.loss(x, None, LossContext())
    assert not torch.allclose(out.recon, plain.recon)  # the weights are used


def test_resid_norm_weighting_of_a_transcoder_uses_input_plus_output(tmp_path):
    from circuitlab.sparse.store import Rows

    tc = make_coder(config_class("topk")(d_in=16, d_sae=64, k=4, skip=True, hooks_in=("blocks.0.hook_resid_mid",),
                                         hooks_out=("blocks.0.hook_mlp_out",)))
    x, y = torch.randn(32, 16), torch.randn(32, 16) * 3
    z = torch.zeros(32, dtype=torch.int32)
    t = Trainer({"tc": tc}, ShardLoader(DATA.shard, 6, 128), _cfg(token_weighting="resid_norm"), tmp_path)
    w = t._token_weight(tc, Rows(x, y, z, z, z))
    expect = 1 / (x + y).pow(2).sum(-1)
    assert torch.allclose(w, expect / expect.mean())
    cc = make_coder(config_class("topk")(d_in=16, d_sae=64, k=4, n_sources=2))
    with pytest.raises(ValueError, match="token_weighting='none'"):
        Trainer({"cc": cc}, ShardLoader(DATA.shard, 6, 128), _cfg(token_weighting="resid_norm"), tmp_path)
    with pytest.raises(ValueError, match="unknown token_weighting"):
        Trainer({"tc": tc}, ShardLoader(DATA.shard, 6, 128), _cfg(token_weighting="norm"), tmp_path)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_fitted_encoder_scale_minimises_initial_reconstruction_error(arch, tmp_path):
    """The initial encoder is the decoder's transpose times the least-squares scale: checked
    against a brute-force scan of scales on the init sample; other coders are left alone."""
    sample = DATA.shard(0)

    def fresh():
        return {arch: make_coder(config_class(arch)(d_in=16, d_sae=64, k=4, seed=1)),
                "relu": make_coder(config_class("relu")(d_in=16, d_sae=64, l1_coeff=0.5, seed=4))}

    off = Trainer(fresh(), ShardLoader(DATA.shard, 6, 128), _cfg(fit_encoder_scale=False), tmp_path / "off")
    off.initialise(sample)
    on = Trainer(fresh(), ShardLoader(DATA.shard, 6, 128), _cfg(), tmp_path / "on")
    on.initialise(sample)
    c0, c1 = off.coders[arch], on.coders[arch]
    assert torch.equal(c0.W_enc, c0.W_dec.t())
    s = float((c1.W_enc / c0.W_enc).mean())
    assert torch.allclose(c1.W_enc, s * c0.W_enc, rtol=1e-5, atol=1e-7) and s != pytest.approx(1.0, abs=0.05)
    assert torch.equal(on.coders["relu"].W_enc, off.coders["relu"].W_enc)

    x = sample.x.float() * c0.in_scale
    def sse(scale):
        c = make_coder(c0.cfg)
        c.load_state_dict(c0.state_dict())
        with torch.no_grad():
            c.W_enc.mul_(scale)
            return float((c.loss(x, None).y_hat - x).pow(2).sum())
    grid = [s * f for f in (0.5, 0.8, 0.9, 0.97, 1.0, 1.03, 1.1, 1.25, 2.0)]
    errs = [sse(g) for g in grid]
    assert min(errs) == pytest.approx(sse(s), rel=1e-6) and sse(s) < sse(1.0)


def test_logged_fvu_is_the_fvu_of_the_batch_before_the_step(tmp_path):
    """The logged FVU comes from the loss's reconstruction term; it must equal the FVU computed
    from scratch on the same batch with the weights the step started from."""
    import copy

    coders = {"topk": make_coder(config_class("topk")(d_in=16, d_sae=64, k=4, seed=1))}
    t = Trainer(coders, ShardLoader(DATA.shard, 6, 128, seed=5), _cfg(), tmp_path)
    t.initialise(DATA.shard(0))
    before = copy.deepcopy(coders["topk"])
    batch = ShardLoader(DATA.shard, 6, 128, seed=5).next()
    logged = t.train_step()["topk"]["fvu"]
    x = batch.x.float() * before.in_scale
    with torch.no_grad():
        assert logged == pytest.approx(float(fvu(x, before.loss(x, None).y_hat)), rel=1e-5)
