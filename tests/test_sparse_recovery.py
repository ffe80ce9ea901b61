"""Ground-truth feature recovery: MMCS and recovered fraction against known directions."""

import pytest
import torch

from circuitlab.sparse.base import config_class, make_coder
from circuitlab.sparse.recovery import coder_recovery, recovery
from circuitlab.sparse.store import ShardLoader
from circuitlab.sparse.synthetic import ToyData, power_law_probs
from circuitlab.sparse.trainer import TrainConfig, Trainer


def _dirs(n=40, d=24, seed=0):
    return ToyData(d=d, n_features=n, seed=seed).dirs


def test_true_directions_recover_themselves():
    t = _dirs()
    r = recovery(t, t)
    assert r["mmcs"] == pytest.approx(1.0, abs=1e-12)
    assert r["recovered"] == 1.0 and r["threshold"] == 0.9
    assert len(r["per_feature"]) == 40


def test_permuted_rescaled_decoder_with_extra_latents_still_recovers_everything():
    t = _dirs()
    g = torch.Generator().manual_seed(1)
    scale = torch.rand(40, 1, generator=g) * 10 + 0.01
    extra = torch.randn(20, 24, generator=g)
    dec = torch.cat([t * scale, extra])[torch.randperm(60, generator=g)]
    r = recovery(dec, t)
    assert r["mmcs"] == pytest.approx(1.0, abs=1e-9) and r["recovered"] == 1.0
    # signed cosines: a latent pointing against a feature (non-negative codes) does not count
    neg = recovery(-t, t)
    assert neg["recovered"] == 0.0 and neg["mmcs"] < 0.5


def test_random_decoder_has_low_mmcs_and_recovers_nothing():
    t = _dirs(n=200, d=64)
    dec = torch.randn(256, 64, generator=torch.Generator().manual_seed(2))
    r = recovery(dec, t)
    assert 0.2 < r["mmcs"] < 0.6, r["mmcs"]
    assert r["recovered"] == 0.0


def test_threshold_is_inclusive_and_per_feature_is_the_max_cosine():
    true = torch.eye(3, 4)
    # row 0: cosine exactly 3/5 with feature 0; row 1: 0.95 with feature 1; row 2: 1 with feature 2
    dec = torch.tensor(
        [[3.0, 0, 0, 4], [0, 0.95, 0, (1 - 0.95**2) ** 0.5], [0, 0, 2, 0], [0, 0, 0, 0]], dtype=torch.float64
    )
    r = recovery(dec, true, threshold=0.6)
    assert r["per_feature"] == pytest.approx([0.6, 0.95, 1.0], abs=1e-12)
    assert r["recovered"] == 1.0 and r["threshold"] == 0.6  # 0.6 >= 0.6
    assert recovery(dec, true, threshold=0.9)["recovered"] == pytest.approx(2 / 3)
    assert recovery(dec, true, threshold=0.96)["recovered"] == pytest.approx(1 / 3)
    assert recovery(dec, true, threshold=1.0)["recovered"] == pytest.approx(1 / 3)
    assert recovery(dec, true)["mmcs"] == pytest.approx((0.6 + 0.95 + 1.0) / 3, abs=1e-12)
    # the all-zero latent has cosine 0 with everything, not NaN
    assert recovery(dec[3:], true)["per_feature"] == [0.0, 0.0, 0.0]


def test_shape_and_value_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"\(8, 16\).*\(4, 12\)"):
        recovery(torch.randn(8, 16), torch.randn(4, 12))
    with pytest.raises(ValueError, match=r"2-D.*\(16,\)"):
        recovery(torch.randn(16), torch.randn(4, 16))
    with pytest.raises(ValueError, match="threshold"):
        recovery(torch.randn(8, 16), torch.randn(4, 16), threshold=1.5)
    tc = make_coder(config_class("topk")(d_in=16, d_out=8, d_sae=32, k=4))
    with pytest.raises(ValueError, match=r"width 8.*\(32, 8\).*ToyData\.out"):
        coder_recovery(tc, torch.randn(4, 16))


def test_coder_recovery_reads_decoder_rows_in_raw_units():
    """Two targets trained at different scales: rows are compared after dividing the scale out."""
    cc = make_coder(config_class("topk")(d_in=4, d_sae=8, n_sources=2, k=2, seed=3))
    true = torch.randn(3, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cc.out_scale.copy_(torch.tensor([1.0, 4.0]))
        cc.W_dec[:3] = true * cc.out_scale.repeat_interleave(4)
    assert coder_recovery(cc, true)["mmcs"] == pytest.approx(1.0, abs=1e-6)
    assert recovery(cc.W_dec, true)["mmcs"] < 0.99  # the scaled rows point elsewhere


def test_power_law_frequencies_have_the_requested_shape_and_mean():
    p = power_law_probs(200, 1.2, mean_active=6.0)
    assert float(p.sum()) == pytest.approx(6.0, rel=1e-5)
    assert float(p[0]) == 1.0 and float(p[4] / p[49]) == pytest.approx(10**1.2, rel=1e-4)  # p[0] capped
    capped = power_law_probs(10, 3.0, mean_active=3.0)  # the commonest features saturate at 1
    assert float(capped[0]) == 1.0 and float(capped.sum()) == pytest.approx(3.0, rel=1e-5)
    # more dims than features and no noise: the codes are recoverable exactly by least squares
    data = ToyData(d=32, n_features=16, freq_exponent=1.0, mean_active=3.0, noise=0.0, shard_tokens=8192)
    x = data.shard(0).x - data.offset
    codes = torch.linalg.lstsq(data.dirs.t().double(), x.t().double()).solution.t()
    on = codes > 0.25  # magnitudes are drawn from [0.5, 2.5]
    assert float(on.sum(-1).double().mean()) == pytest.approx(3.0, rel=0.03)
    assert torch.allclose(on.double().mean(0), data.probs.double(), atol=0.02)
    assert float(data.probs[0] / data.probs[3]) == pytest.approx(4.0, rel=1e-4)
    with pytest.raises(ValueError, match="freq_exponent"):
        ToyData(mean_active=3.0)


def test_trained_topk_recovers_most_features_and_untrained_does_not(tmp_path):
    # coder and data seeds differ: both draw their first rows from torch.randn at their seed, so
    # equal seeds would make an untrained coder's decoder start *on* the true directions
    data = ToyData(d=16, n_features=32, p_active=3 / 32, shard_tokens=1024, seed=0)
    coder = make_coder(config_class("topk")(d_in=16, d_sae=64, k=3, seed=1000))
    before = coder_recovery(coder, data.dirs)
    assert before["recovered"] <= 0.1 and before["mmcs"] < 0.7, before["mmcs"]
    cfg = TrainConfig(total_tokens=256 * 200, batch_size=256, lr=1e-2, progress=False, checkpoint_every=0)
    t = Trainer({"c": coder}, ShardLoader(data.shard, 8, 256, seed=0), cfg, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 16 x 64 matmuls: a second thread only waits on the first
    try:
        t.run(sample=data.shard(0))
    finally:
        torch.set_num_threads(threads)
    after = coder_recovery(t.export("c"), data.dirs)
    assert after["recovered"] >= 0.8 and after["mmcs"] >= 0.95, (after["recovered"], after["mmcs"])
