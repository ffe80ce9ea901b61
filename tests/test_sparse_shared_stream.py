"""A shared activation stream: coders at different sites trained from one forward pass per batch
learn exactly what they learn from streams of their own."""

import warnings

import pytest
import torch

from circuitlab.sparse import config


def _file(tmp_path, shared: bool, out: str):
    return config.parse({
        "run": {"out": str(tmp_path / out), "model": "gpt2-zoo", "ctx_len": 24, "shard_tokens": 256,
                "docs_per_batch": 8, "evaluate": False, "density_html": False, "exclude_norm_factor": 0.0,
                "threads": 1, "shared_stream": shared},
        "train": {"total_tokens": 512, "batch_size": 64, "progress": False, "init_tokens": 256,
                  "checkpoint_every": 0},
        "coder": [{"name": "tc0", "kind": "transcoder", "arch": "topk", "layer": 0, "k": 4, "expansion": 2},
                  {"name": "sae2", "arch": "relu", "layer": 2, "expansion": 2},
                  {"name": "tc3", "kind": "transcoder", "arch": "topk", "layer": 3, "k": 4, "expansion": 2}]})


def test_shared_stream_trains_the_same_coders_with_one_forward_pass_per_batch(tmp_path, zoo_model, monkeypatch):
    from circuitlab.sparse import store
    from circuitlab.sparse.files import load_coder
    from circuitlab.sparse.run import train_file

    torch.set_num_threads(1)
    calls = []
    real = store.capture

    def counting(model, tokens, names, **kw):
        calls.append(tuple(names))
        return real(model, tokens, names, **kw)

    monkeypatch.setattr(store, "capture", counting)
    model = {"gpt2-zoo": zoo_model("gpt2-zoo")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_file(_file(tmp_path, False, "apart"), models=model)
        apart = len(calls)
        calls.clear()
        train_file(_file(tmp_path, True, "shared"), models=model)
    shared = len(calls)
    assert {len(c) for c in calls} == {5}  # resid_mid.0, mlp_out.0, resid_post.2, resid_mid.3, mlp_out.3
    assert apart == 3 * shared
    for name in ("tc0", "sae2", "tc3"):
        a, b = load_coder(tmp_path / "apart" / name), load_coder(tmp_path / "shared" / name)
        for (k, t), (_, u) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
            torch.testing.assert_close(t, u, rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")


def test_shared_stream_refuses_a_norm_cut_off():
    with pytest.raises(ValueError, match="exclude_norm_factor.*shared_stream"):
        config.parse({"run": {"shared_stream": True, "exclude_norm_factor": 10.0},
                      "coder": [{"arch": "topk", "layer": 0, "k": 4}]})


def test_state_folder_of_a_deep_stack_is_a_valid_file_name(tmp_path):
    from circuitlab.sparse.run import state_dir

    names = [f"smollm2-135m_transcoder_L{l}" for l in range(30)]
    short = state_dir(tmp_path, names[:2])
    assert short.name == "smollm2-135m_transcoder_L0+smollm2-135m_transcoder_L1"  # unchanged for short groups
    long_, other = state_dir(tmp_path, names), state_dir(tmp_path, names[::-1])
    assert len(long_.name.encode()) <= 160 and long_ != other and long_.name.startswith(names[0] + "+29-more-")
    (long_ / "checkpoints").mkdir(parents=True)  # the file system accepts it
