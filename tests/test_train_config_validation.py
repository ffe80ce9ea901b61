"""Training settings out of range are refused when the file is read, naming field, value and range."""

import pytest

from circuitlab.sparse import config
from circuitlab.sparse.trainer import TrainConfig


def _parse(run=None, train=None, coder=None):
    return config.parse({"run": run or {}, "train": train or {}, "coder": [coder or {}]})


@pytest.mark.parametrize("train, pattern", [
    ({"lr": 0}, r"lr = 0 is invalid; lr must be a number > 0"),
    ({"lr": -1e-3}, r"lr = -0.001 .*> 0"),
    ({"batch_size": -1}, r"batch_size = -1 .*integer >= 1"),
    ({"batch_size": 0}, r"batch_size = 0 .*integer >= 1"),
    ({"total_tokens": 0}, r"total_tokens = 0 .*integer >= 1"),
    ({"total_tokens": -5}, r"total_tokens = -5"),
    ({"warmup_fraction": 2.0}, r"warmup_fraction = 2.0 .*\[0, 1\]"),
    ({"decay_fraction": -0.1}, r"decay_fraction = -0.1"),
    ({"checkpoint_every": -1}, r"checkpoint_every = -1 .*integer >= 0"),
    ({"log_every": 0}, r"log_every = 0"),
    ({"beta1": 1.0}, r"beta1 = 1.0 .*\[0, 1\)"),
    ({"b_dec_init": "median"}, r"unknown b_dec_init 'median'"),
    ({"total_tokens": 1.5e6}, r"total_tokens = 1500000.0 .*integer"),
])
def test_bad_train_values_are_refused(train, pattern):
    with pytest.raises(ValueError, match=r"\[train\]: " + pattern):
        _parse(train=train)
    with pytest.raises(ValueError, match=pattern):  # the dataclass itself checks, not just the file
        TrainConfig(**train)


@pytest.mark.parametrize("run, pattern", [
    ({"ctx_len": 0}, r"ctx_len = 0 .*integer >= 2"),
    ({"ctx_len": 1}, r"ctx_len = 1"),  # with exclude_bos nothing would be left
    ({"shard_tokens": 0}, r"shard_tokens = 0"),
    ({"docs_per_batch": 0}, r"docs_per_batch = 0"),
    ({"buffer_shards": 0}, r"buffer_shards = 0"),
    ({"exclude_norm_factor": -1.0}, r"exclude_norm_factor = -1.0"),
    ({"exclude_norm_factor": 0.01}, r"exclude_norm_factor = 0.01 .*> 1"),
    ({"threads": 0}, r"threads = 0"),
])
def test_bad_run_values_are_refused(run, pattern):
    with pytest.raises(ValueError, match=r"\[run\]: " + pattern):
        _parse(run=run)


@pytest.mark.parametrize("coder, pattern", [
    ({"k": 0}, r"k = 0 is invalid; k must be an integer >= 1"),
    ({"k": 65, "d_sae": 64}, r"k = 65 .*\[1, 64\]"),
    ({"expansion": 0}, r"expansion = 0 .*integer >= 1"),
    ({"d_sae": -3}, r"d_sae = -3"),
    ({"arch": "relu", "l1_coeff": -0.5}, r"l1_coeff = -0.5 .*>= 0"),
    ({"arch": "jumprelu", "l0_coeff": -1.0}, r"l0_coeff = -1.0"),
    ({"arch": "jumprelu", "bandwidth": 0.0}, r"bandwidth = 0.0 .*> 0"),
    ({"arch": "batchtopk", "threshold_ema": 1.0}, r"threshold_ema = 1.0"),
    ({"name": "../../x"}, r"name = '../../x' .*plain folder name"),
    ({"name": "/tmp/elsewhere"}, r"name = '/tmp/elsewhere' .*plain folder name"),
    ({"name": ".."}, r"name = '..'"),
    ({"layer": -1}, r"layer = -1"),
    ({"kind": "autoencoder"}, r"unknown kind 'autoencoder'"),
])
def test_bad_coder_values_are_refused(coder, pattern):
    with pytest.raises(ValueError, match=r"\[\[coder\]\].*" + pattern):
        _parse(coder=coder)


def test_k_above_d_sae_from_expansion_is_refused_before_training():
    sec, fields = _parse(coder={"k": 40, "expansion": 2}).coders[0]
    with pytest.raises(ValueError, match=r"k = 40 .*\[1, 32\]"):
        config.coder_config(sec, fields, d_model=16, default_model="gpt2-zoo")
    assert config.coder_config(sec, dict(fields, k=32), d_model=16, default_model="gpt2-zoo").k == 32


def test_duplicate_coder_names_are_refused():
    with pytest.raises(ValueError, match="share the name 'a'"):
        config.parse({"coder": [{"name": "a"}, {"name": "a", "k": 8}]})


def test_defaults_and_the_template_are_valid():
    import tomllib

    tf = config.parse(tomllib.loads(config.example_toml()))
    assert tf.train.total_tokens > 0 and tf.run.ctx_len > 1
    TrainConfig(lr=1e-3, dead_window_tokens=100)
