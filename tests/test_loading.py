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


@pytest.mark.parametrize("dtype, match", [("float32", "blocks.1"), ("bfloat16", "blocks.1.*bfloat16")])
def test_decomposition_check_catches_wrong_mapping(tiny_dir, monkeypatch, dtype, match):
    """A bridge that maps hook_attn_out to a residual-added state must be refused, naming the hook
    (also at bfloat16's looser, dtype-scaled tolerance)."""
    from circuitlab.models import checks

    real = checks.capture

    def broken(model, toks, names, **kw):
        c = dict(real(model, toks, names, **kw))
        c["blocks.1.hook_attn_out"] = c["blocks.1.hook_attn_out"] + c["blocks.1.hook_resid_pre"]
        return c

    monkeypatch.setattr(checks, "capture", broken)
    with pytest.raises(ValueError, match=match):
        cl.load(str(tiny_dir("gpt2")), device="cpu", dtype=dtype)


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
    """An unknown bare name is not sent to the hub."""
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


# --- names, revisions and bad input -------------------------------------------------------

@pytest.mark.parametrize("name, hub", [
    ("gpt2", "gpt2"), ("gpt2-small", "gpt2"), ("GPT2-Small", "gpt2"), ("gpt2-medium", "gpt2-medium"),
    ("pythia-70m", "EleutherAI/pythia-70m"), ("gemma-2-2b", "google/gemma-2-2b"),
    ("EleutherAI/pythia-70m", "EleutherAI/pythia-70m"), ("someone/some-model", "someone/some-model"),
])
def test_transformerlens_short_names_resolve_to_hub_ids(name, hub):
    from circuitlab.models.load import resolve_name

    assert resolve_name(name) == hub


def test_short_names_follow_transformerlens_table():
    """Every alias in TransformerLens' own table resolves to its official name."""
    from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    from circuitlab.models.load import resolve_name

    checked = 0
    for official in OFFICIAL_MODEL_NAMES[:200]:
        for alias in MODEL_ALIASES.get(official, [])[:2]:
            if alias in ("gpt2-zoo", "llama-zoo", "smollm2-135m", "gemma3-270m"):
                continue
            assert resolve_name(alias) == official
            checked += 1
    assert checked > 50


def test_zoo_and_fetched_names_win_over_hub_names():
    from pathlib import Path

    from circuitlab.models.load import resolve_name

    assert isinstance(resolve_name("gpt2-zoo"), Path)


class _Booted(Exception):
    pass


def _capture_boot(monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    seen = {}

    def fake(model_name, **kw):
        seen.update(kw, model_name=model_name)
        raise _Booted

    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(fake))
    return seen


def test_revision_passed_through_for_checkpoints(monkeypatch):
    seen = _capture_boot(monkeypatch)
    with pytest.raises(_Booted):
        cl.load("pythia-70m", device="cpu", revision="step1000")
    assert seen["model_name"] == "EleutherAI/pythia-70m" and seen["revision"] == "step1000"
    with pytest.raises(_Booted):
        cl.load("gpt2-small", device="cpu", dtype="bf16")
    assert seen["model_name"] == "gpt2" and seen["revision"] is None and seen["dtype"] == torch.bfloat16


def test_revision_on_a_local_folder_refused(tiny_dir):
    with pytest.raises(ValueError, match="revision"):
        cl.load(str(tiny_dir("gpt2")), device="cpu", revision="step1000")


def test_hub_offline_error_names_hub_id_and_offline_options(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    try:
        import transformers.utils.hub as tfhub

        monkeypatch.setattr(tfhub, "HF_HUB_CACHE", str(tmp_path / "empty"), raising=False)
    except ImportError:
        pass
    with pytest.raises(OSError) as err:
        cl.load("pythia-70m", device="cpu", revision="step1000")
    msg = str(err.value)
    assert "'EleutherAI/pythia-70m'" in msg and "step1000" in msg
    assert "circuitlab models fetch" in msg and "smollm2-135m" in msg and "gpt2-zoo" in msg


@pytest.mark.parametrize("dtype", ["nn", "int8", torch.int64, "float8"])
def test_invalid_dtype_lists_valid_ones(dtype):
    with pytest.raises(ValueError, match="bfloat16.*float16"):
        cl.load("gpt2-zoo", device="cpu", dtype=dtype)


def test_dtype_names():
    from circuitlab.models.load import parse_dtype

    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("torch.float16") is torch.float16
    assert parse_dtype("half") is torch.float16 and parse_dtype(torch.float64) is torch.float64


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        cl.load("gpt2-zoo", device="cuda")


def test_unknown_device_string():
    with pytest.raises(ValueError, match="unknown device"):
        cl.load("gpt2-zoo", device="banana")


@pytest.mark.parametrize("name", ["./no_such_folder", "~/no/such/model", "a/b/c", "/no/such/dir"])
def test_missing_path_not_taken_for_hub_id(name, monkeypatch):
    seen = _capture_boot(monkeypatch)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        cl.load(name, device="cpu")
    assert not seen  # never reached the hub


def _save(folder, model):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import write_tokenizer

    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder)
    return folder


def test_encoder_decoder_refused_clearly(tmp_path):
    import transformers as tf

    cfg = tf.T5Config(vocab_size=127, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                      decoder_start_token_id=0)
    d = _save(tmp_path / "t5", tf.T5ForConditionalGeneration(cfg))
    with pytest.raises(ValueError, match="encoder-decoder.*T5ForConditionalGeneration.*decoder-only"):
        cl.load(str(d), device="cpu")


def test_masked_lm_encoder_refused_clearly(tmp_path):
    import transformers as tf

    cfg = tf.BertConfig(vocab_size=127, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64)
    d = _save(tmp_path / "bert", tf.BertForMaskedLM(cfg))
    with pytest.raises(ValueError, match="bidirectional encoder.*BertForMaskedLM"):
        cl.load(str(d), device="cpu")


def test_bridge_without_blocks_is_a_clear_error(tiny_dir, monkeypatch):
    """Whatever the config said, a bridge with no block stack stops with a clear message."""
    import importlib

    load_mod = importlib.import_module("circuitlab.models.load")  # the module, not the function
    real = load_mod._describe

    def no_blocks(bridge, name):
        class Shell:
            cfg = bridge.cfg
            original_model = bridge.original_model

        return real(Shell(), name)

    monkeypatch.setattr(load_mod, "_describe", no_blocks)
    with pytest.raises(ValueError, match="no single block stack"):
        cl.load(str(tiny_dir("gpt2")), device="cpu")


def test_shortcut_notes_in_repr(tiny_dir):
    m = cl.load(str(tiny_dir("gpt2")), device="cpu", check=False)
    assert not m.fast_restart and "restart shortcut off: not verified" in repr(m)
