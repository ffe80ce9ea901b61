"""A saved training state is resumed only by the run that wrote it; damaged checkpoints fall back.

The trainer records its full configuration with every checkpoint. Another configuration is
refused with the differences listed, unless told to continue (only safe changes) or restart.
"""

import json
import warnings
from pathlib import Path

import pytest
import torch

from circuitlab.sparse.base import config_class, make_coder
from circuitlab.sparse.store import ShardLoader
from circuitlab.sparse.synthetic import ToyData
from circuitlab.sparse.trainer import ConfigMismatch, TrainConfig, Trainer

DATA = ToyData(d=16, n_features=48, shard_tokens=512)


def _cfg(**kw):
    base = dict(total_tokens=128 * 30, batch_size=128, lr=3e-3, progress=False, checkpoint_every=10,
                dead_window_tokens=128 * 3)
    base.update(kw)
    return TrainConfig(**base)


def _trainer(path, k=4, d_sae=64, arch="topk", mode="auto", **kw):
    fields = {"k": k} if arch == "topk" else {"l1_coeff": 0.5}
    coder = make_coder(config_class(arch)(d_in=16, d_sae=d_sae, seed=1, **fields))
    return Trainer({"sae": coder}, ShardLoader(DATA.shard, 6, 128, seed=5, buffer_shards=2), _cfg(**kw), path,
                   data={"model": "toy"}, resume_mode=mode)


def _weights(t):
    return {k: v.clone() for k, v in t.coders["sae"].state_dict().items()}


def test_changed_k_and_lr_are_refused_with_the_differences(tmp_path):
    _trainer(tmp_path).run(sample=DATA.shard(0))
    t = _trainer(tmp_path, k=32, lr=1e-3)
    with pytest.raises(ConfigMismatch) as e:
        t.run(sample=DATA.shard(0))
    msg = str(e.value)
    assert "coders.sae.k: 4 -> 32" in msg and "train.lr: 0.003 -> 0.001" in msg
    assert "--restart" in msg and "--resume" in msg
    with pytest.raises(ConfigMismatch, match="coders.sae.k"):  # k is not a safe change: --resume refuses too
        _trainer(tmp_path, k=32, mode="resume").run(sample=DATA.shard(0))


@pytest.mark.parametrize("change", [{"d_sae": 128}, {"arch": "relu"}])
def test_changed_shape_or_architecture_is_refused_before_any_tensor_is_loaded(tmp_path, change):
    _trainer(tmp_path).run(sample=DATA.shard(0), stop_after=10)
    with pytest.raises(ConfigMismatch, match="coders.sae." + next(iter(change))):
        _trainer(tmp_path, **change).run(sample=DATA.shard(0))


def test_changed_data_is_refused(tmp_path):
    _trainer(tmp_path).run(sample=DATA.shard(0), stop_after=10)
    t = _trainer(tmp_path)
    t.data = {"model": "another"}
    with pytest.raises(ConfigMismatch, match="data.model: 'toy' -> 'another'"):
        t.run(sample=DATA.shard(0))


def test_restart_discards_the_state_and_equals_a_fresh_run(tmp_path):
    _trainer(tmp_path / "a").run(sample=DATA.shard(0))
    restarted = _trainer(tmp_path / "a", k=8, mode="restart")
    restarted.run(sample=DATA.shard(0))
    fresh = _trainer(tmp_path / "b", k=8)
    fresh.run(sample=DATA.shard(0))
    assert restarted.step == fresh.step == 30
    for k, v in _weights(fresh).items():
        assert torch.equal(v, restarted.coders["sae"].state_dict()[k]), k


def test_total_tokens_raised_continues_only_when_asked(tmp_path):
    _trainer(tmp_path).run(sample=DATA.shard(0))
    with pytest.raises(ConfigMismatch, match=r"(?s)train.total_tokens: 3840 -> 5120.*pass --resume"):
        _trainer(tmp_path, total_tokens=128 * 40).run()
    with pytest.warns(UserWarning, match="total_tokens: 3840 -> 5120"):
        t = _trainer(tmp_path, total_tokens=128 * 40, mode="resume")
        t.run()
    assert t.step == 40 and t.tokens_seen == 128 * 40
    with pytest.raises(ConfigMismatch, match="total_tokens"):  # lowered below what was trained: not safe
        _trainer(tmp_path, total_tokens=128 * 20, mode="resume").run()


def test_identical_configuration_resumes_silently(tmp_path):
    _trainer(tmp_path).run(sample=DATA.shard(0), stop_after=15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = _trainer(tmp_path, log_every=3, checkpoint_every=7)  # logging settings are not compared
        t.run()
    assert t.step == 30


# ---------------------------------------------------------------------------- damaged checkpoints
def test_corrupted_checkpoint_is_named_and_the_previous_one_is_used(tmp_path):
    full = _trainer(tmp_path / "full")
    full.run(sample=DATA.shard(0))
    part = _trainer(tmp_path / "part")
    part.run(sample=DATA.shard(0), stop_after=25)  # checkpoints at steps 10 and 20 are kept
    bad = tmp_path / "part/checkpoints/step_00000020.safetensors"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated
    resumed = _trainer(tmp_path / "part")
    with pytest.warns(UserWarning, match="step_00000020.safetensors could not be read.*previous checkpoint"):
        resumed.run()
    assert resumed.step == 30
    for k, v in _weights(full).items():  # resumed from step 10: still the uninterrupted run's weights
        assert torch.equal(v, resumed.coders["sae"].state_dict()[k]), k


def test_unreadable_pointer_falls_back_to_the_newest_checkpoint_file(tmp_path):
    _trainer(tmp_path).run(sample=DATA.shard(0), stop_after=25)
    (tmp_path / "checkpoints/latest.json").write_text('{"step": 2')
    t = _trainer(tmp_path)
    with pytest.warns(UserWarning, match="latest.json is unreadable"):
        assert t.resume()
    assert t.step == 20


def test_no_usable_checkpoint_names_every_file(tmp_path):
    _trainer(tmp_path).run(sample=DATA.shard(0), stop_after=25)
    for f in (tmp_path / "checkpoints").glob("step_*.safetensors"):
        f.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match=r"(?s)step_00000020.safetensors.*step_00000010.safetensors.*--restart"), \
            pytest.warns(UserWarning):
        _trainer(tmp_path).resume()


def test_orphan_temporary_of_a_killed_write_is_removed_at_start(tmp_path):
    _trainer(tmp_path).run(sample=DATA.shard(0), stop_after=15)
    orphan = tmp_path / "checkpoints/.step_00000020.safetensors.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    t = _trainer(tmp_path)
    t.run()
    assert not orphan.exists() and t.step == 30
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import safetensors.torch as st
from test_run_identity import DATA, _trainer
real = st.save_file
def save_then_die(tensors, path, metadata=None):
    real(tensors, path, metadata=metadata)
    if "step_00000020" in os.path.basename(str(path)):
        os.kill(os.getpid(), signal.SIGKILL)  # killed after writing the temporary, before the rename
st.save_file = save_then_die
_trainer(sys.argv[2]).run(sample=DATA.shard(0))
"""


def test_sigkill_during_a_checkpoint_write_resumes_cleanly(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, str(script), str(Path(__file__).parent), str(tmp_path / "run")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    ckpt = tmp_path / "run/checkpoints"
    assert list(ckpt.glob(".step_00000020.safetensors.*.tmp"))  # the orphan a killed write leaves
    assert json.loads((ckpt / "latest.json").read_text())["step"] == 10
    resumed = _trainer(tmp_path / "run")
    resumed.run()
    assert not list(ckpt.glob("*.tmp")) and resumed.step == 30
    full = _trainer(tmp_path / "full")
    full.run(sample=DATA.shard(0))
    for k, v in _weights(full).items():
        assert torch.equal(v, resumed.coders["sae"].state_dict()[k]), k


# ---------------------------------------------------------------------------- the train command
def _toml(path, out, model, k, lr, expansion=2):
    path.write_text(f"""
[run]
out = "{out}"
model = "{model}"
ctx_len = 24
shard_tokens = 256
docs_per_batch = 16
exclude_special_tokens = false
evaluate = false

[train]
total_tokens = 1024
batch_size = 128
lr = {lr}
progress = false
log_every = 2

[[coder]]
name = "sae"
arch = "topk"
layer = 1
k = {k}
expansion = {expansion}
""")
    return str(path)


def test_train_command_refuses_another_config_and_restarts_on_request(tiny_dir, tmp_path, capsys):
    from circuitlab.cli import main
    from safetensors.torch import load_file

    model, out = str(tiny_dir("gpt2")), tmp_path / "run"
    assert main(["train", _toml(tmp_path / "a.toml", out, model, 4, 0.003)]) == 0
    old = load_file(str(out / "sae/sae_weights.safetensors"))
    capsys.readouterr()
    # another k and learning rate into the same folder and name: refused, the old coder untouched
    assert main(["train", _toml(tmp_path / "b.toml", out, model, 32, 0.001)]) == 2
    err = capsys.readouterr().err
    assert "k: 4 -> 32" in err and "lr: 0.003 -> 0.001" in err and "--restart" in err
    assert all(torch.equal(v, load_file(str(out / "sae/sae_weights.safetensors"))[k]) for k, v in old.items())
    assert main(["train", _toml(tmp_path / "c.toml", out, model, 4, 0.003, expansion=4)]) == 2
    assert "d_sae: 128 -> 256" in capsys.readouterr().err  # not a torch shape error

    assert main(["train", str(tmp_path / "b.toml"), "--restart"]) == 0
    new = load_file(str(out / "sae/sae_weights.safetensors"))
    assert json.loads((out / "sae/cfg.json").read_text())["k"] == 32
    assert not torch.equal(old["W_dec"], new["W_dec"])
    # the run folder holds the history, the loss curve and where the resumable state lives
    hist = json.loads((out / "sae/history.json").read_text())
    assert [h["step"] for h in hist] == [2, 4, 6, 8] and all({"loss", "fvu", "l0"} <= set(h) for h in hist)
    assert all(h["l0"] <= 32 + 1e-6 for h in hist)
    html = (out / "loss_curve.html").read_text()
    assert "plotly.min.js" in html and 'src="https://' not in html and "Plotly.newPlot" in html
    assert (out / "plotly.min.js").stat().st_size > 1_000_000  # plotly.js bundled: the page opens offline
    pointer = json.loads((out / "train_state.json").read_text())
    state = pointer["groups"]["sae"]["state_dir"]
    saved = json.loads((Path(state) / "checkpoints/latest.json").read_text())
    assert saved["identity"]["coders"]["sae"]["k"] == 32 and saved["identity"]["train"]["lr"] == 0.001
    assert saved["code_version"]["circuitlab"]
