import os

import pytest
import torch

import circuitlab as cl
from circuitlab.engine.cache import capture

ARCHS = ["gpt2", "llama", "qwen2", "gemma2", "neox"]


@pytest.mark.parametrize("arch", ARCHS)
def test_architectures_load_and_pass_checks(tiny_model, arch):
    m = tiny_model(arch)  # load() runs the residual-decomposition check
    assert m.n_layers == 3 and m.d_model == 64 and m.n_heads == 4
    if arch in ("llama", "qwen2", "gemma2"):
        assert m.norm == "RMS" and m.n_kv_heads == 2 and m.gqa
    else:
        assert m.norm == "LN" and not m.gqa
    assert m.fast_restart and m.fast_positions


def test_facts_and_sites(gpt2):
    assert gpt2.d_head == 16 and gpt2.d_mlp == 256
    assert {"resid_pre", "heads", "q", "neurons"} <= set(gpt2.sites)
    assert gpt2.device.type == "cpu" and gpt2.dtype == torch.float32


def test_decomposition_check_catches_wrong_mapping(tiny_dir, monkeypatch):
    """A bridge that maps hook_attn_out to a residual-added state must be refused, naming the hook."""
    from circuitlab.models import checks

    real = checks.capture

    def broken(model, toks, names, **kw):
        c = dict(real(model, toks, names, **kw))
        c["blocks.1.hook_attn_out"] = c["blocks.1.hook_attn_out"] + c["blocks.1.hook_resid_pre"]
        return c

    monkeypatch.setattr(checks, "capture", broken)
    with pytest.raises(ValueError, match="blocks.1"):
        cl.load(str(tiny_dir("gpt2")), device="cpu")


def test_corrupted_weights_file(tmp_path, tiny_dir):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_dir("gpt2"), d)
    (d / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="corrupted or not safetensors"):
        cl.load(str(d), device="cpu")


def test_pickle_only_weights_refused(tmp_path, tiny_dir):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_dir("gpt2"), d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="never unpickles"):
        cl.load(str(d), device="cpu")


def test_missing_folder_or_name():
    with pytest.raises(Exception, match="(?i)unknown model|could not load|no config"):
        cl.load("no_such_model_anywhere", device="cpu")


def test_hub_path_offline(tmp_path, tiny_dir, monkeypatch):
    """A hub id resolves through a Hugging Face cache filled here, with HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    src = tiny_dir("llama")
    repo = "circuitlab-test/tiny-llama"
    commit = "0" * 40
    root = tmp_path / "hub" / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    try:
        import transformers.utils.hub as tfhub

        monkeypatch.setattr(tfhub, "HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
        monkeypatch.setattr(tfhub, "TRANSFORMERS_CACHE", str(tmp_path / "hub"), raising=False)
    except ImportError:
        pass
    m = cl.load(repo, device="cpu")
    assert m.n_kv_heads == 2
    local = cl.load(str(src), device="cpu")
    toks = torch.tensor([[0, 3, 4, 5]])
    a = capture(m, toks, ["blocks.2.hook_resid_post"])["blocks.2.hook_resid_post"]
    b = capture(local, toks, ["blocks.2.hook_resid_post"])["blocks.2.hook_resid_post"]
    assert torch.allclose(a, b)
