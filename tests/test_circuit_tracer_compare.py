"""circuit-tracer 0.5.0 side by side: the exported layout (fast) and the same graph built by both (slow).

The fast tests check the exported tensors against the coder itself, computed the way
circuit-tracer computes a transcoder (``act(x @ W_enc.T + b_enc)``, ``f @ W_dec + b_dec +
x @ W_skip.T``), and the model folder's rewritten config. The slow tests build one graph with
circuitlab and one with circuit-tracer in its own virtual environment
(``benchmarks/circuit_tracer_compare.py``; set CIRCUITLAB_CT_PYTHON to its python) and require
agreement within that script's ``TOLERANCE``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from circuitlab.graphs.export_circuit_tracer import export_model, export_transcoders, layer_tensors
from circuitlab.graphs.transcoders import TranscoderSet
from circuitlab.sparse.base import make_coder
from circuitlab.sparse.transcoder import transcoder_config

ROOT = Path(__file__).resolve().parents[1]
PEER = Path(os.environ.get("CIRCUITLAB_CT_PYTHON", ROOT / "runs" / "peers" / "circuit-tracer" / "bin" / "python"))
FIELDS = {"relu": {}, "jumprelu": {}, "topk": {"k": 5}}


def _coder(arch: str, layer: int = 0, skip: bool = True, hook_in: str = "resid_mid", b_dec_in: bool = False,
           d: int = 16, n: int = 40):
    cfg = transcoder_config(arch, layer, d, n, skip=skip, hook_in=hook_in, seed=layer, **FIELDS[arch])
    cfg.apply_b_dec_to_input = b_dec_in
    c = make_coder(cfg)
    g = torch.Generator().manual_seed(100 + layer)
    with torch.no_grad():
        for p in c.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if arch == "jumprelu":
            c.log_threshold.copy_((torch.rand(n, generator=g) * 0.3 + 0.01).log())
    return c


def _ct_forward(t: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """circuit-tracer's SingleLayerTranscoder encode / decode, written out."""
    h = x @ t["W_enc"].T + t["b_enc"]
    if "activation_function.k" in t:
        v, i = h.topk(int(t["activation_function.k"]), dim=-1)
        f = torch.zeros_like(h).scatter(-1, i, torch.relu(v))
    elif "activation_function.threshold" in t:
        f = h * (h > t["activation_function.threshold"])
    else:
        f = torch.relu(h)
    y = f @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        y = y + x @ t["W_skip"].T
    return f, y


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk"])
@pytest.mark.parametrize("skip,b_dec_in", [(True, False), (False, True)])
def test_exported_tensors_compute_the_coder(arch, skip, b_dec_in):
    c = _coder(arch, skip=skip, b_dec_in=b_dec_in)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    f, y = _ct_forward(layer_tensors(c), x)
    with torch.no_grad():
        f_cl = c.encode(x)
        y_cl = c.decode(f_cl, x)
    assert (f_cl > 0).sum() > 20  # enough active latents for the check to mean something
    torch.testing.assert_close(f, f_cl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, y_cl, atol=1e-5, rtol=1e-5)


def test_export_folder_layout(tmp_path):
    yaml = pytest.importorskip("yaml")
    from safetensors.torch import load_file

    tcs = TranscoderSet([_coder("topk", layer=l) for l in range(3)], name="toy")
    out = export_transcoders(tcs, tmp_path / "tc", model_folder=tmp_path)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model_kind"] == "transcoder_set"
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("hook_resid_mid", "hook_mlp_out")
    assert (cfg["activation"], cfg["k"], cfg["scan"], cfg["skip_connection"]) == ("topk", 5, "toy", True)
    assert cfg["model_name"] == str(tmp_path.resolve())
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"] + [f"layer_{l}.safetensors" for l in range(3)]
    t = load_file(str(out / "layer_2.safetensors"))
    assert t["W_enc"].shape == (40, 16) and t["W_dec"].shape == (40, 16) and t["W_skip"].shape == (16, 16)
    torch.testing.assert_close(t["W_skip"], tcs[2].W_skip.detach().t())
    assert int(t["activation_function.k"]) == 5
    # ln2.out readers map to the name both circuit-tracer backends know for Llama
    ln2 = export_transcoders([_coder("relu", layer=l, hook_in="ln2.out") for l in range(2)], tmp_path / "ln2")
    cfg = yaml.safe_load((ln2 / "config.yaml").read_text())
    assert cfg["feature_input_hook"] == "mlp.hook_in" and "k" not in cfg and "model_name" not in cfg


def test_export_refuses_what_circuit_tracer_cannot_hold(tmp_path):
    mixed = [_coder("relu", 0, hook_in="ln2.out"), _coder("relu", 1, hook_in="resid_mid")]
    with pytest.raises(ValueError, match="feature_input_hook"):
        export_transcoders(mixed, tmp_path / "a")
    with pytest.raises(ValueError, match="resid_pre"):
        export_transcoders([_coder("relu", 0, hook_in="resid_pre")], tmp_path / "b")
    with pytest.raises(ValueError, match="d_sae"):
        export_transcoders([_coder("relu", 0), _coder("relu", 1, n=24)], tmp_path / "c")
    with pytest.raises(ValueError, match="mix architectures"):
        export_transcoders([_coder("relu", 0), _coder("topk", 1)], tmp_path / "d")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("rope,expect", [({"rope_theta": 100000.0, "rope_type": "default"}, None),
                                         ({"rope_theta": 5e5, "rope_type": "linear", "factor": 4.0},
                                          {"rope_type": "linear", "factor": 4.0})])
def test_export_model_folder_for_transformers_4(tmp_path, rope, expect):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "rope_parameters": rope}))
    (src / "tokenizer_config.json").write_text(json.dumps({"backend": "tokenizers", "bos_token": "<s>",
                                                          "tokenizer_class": "TokenizersBackend"}))
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "tokenizer.json").write_text("{}")
    (src / "loss_curve.html").write_text("<html>")
    out = export_model(src, tmp_path / "out")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_theta"] == rope["rope_theta"] and cfg.get("rope_scaling") == expect
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert tok == {"bos_token": "<s>", "tokenizer_class": "PreTrainedTokenizerFast"}
    assert (out / "model.safetensors").read_bytes() == b"weights" and (out / "tokenizer.json").exists()
    assert not (out / "loss_curve.html").exists()
    with pytest.raises(FileNotFoundError, match="local model folder"):
        export_model(tmp_path / "nowhere", tmp_path / "x")


# --------------------------------------------------------------------------- against circuit-tracer itself
def _peer_or_skip() -> Path:
    if not PEER.exists():
        pytest.skip(f"no circuit-tracer environment at {PEER} (see benchmarks/circuit_tracer_compare.py for the "
                    "setup, or set CIRCUITLAB_CT_PYTHON)")
    return PEER


def _compare(argv: list[str]) -> tuple[dict, dict]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import circuit_tracer_compare as C

    return C.run(C.parse_args(argv)), C.TOLERANCE


def _check(res: dict, tol: dict) -> None:
    assert res["nodes"]["same_set"] and res["nodes"]["common"] > 20, res["nodes"]
    assert res["edges"]["all"]["nonzero"] > 1000
    assert res["edges"]["all"]["max_rel"] <= tol["edge_max_rel"], res["edges"]["all"]
    assert res["edges"]["all"]["corr"] >= tol["edge_corr"]
    assert res["nodes"]["activations"]["max_rel"] <= tol["activation_max_rel"]
    assert res["pruning"]["nodes_kept_by_one_only"] == 0 and res["pruning"]["edges_kept_by_one_only"] == 0
    assert max(res["scores"]["abs_diff"].values()) <= tol["score_abs"], res["scores"]
    assert res["agree"], res["checks"]


@pytest.mark.slow
def test_llama_zoo_graph_matches_circuit_tracer(tmp_path):
    """The bundled Llama and its TopK skip transcoders (resid_mid -> mlp_out), like SmolLM2's."""
    peer = _peer_or_skip()
    res, tol = _compare(["--model", "llama-zoo", "--quick", "--threads", "1", "--work", str(tmp_path),
                         "--peer-python", str(peer)])
    _check(res, tol)
    # the one definition that differs: circuitlab attributes the MLP output at BOS to error nodes
    assert res["edges"]["bos_error_columns"]["share_of_abs_edge_mass_in_circuitlab"] > 0
    assert res["scores"]["circuitlab_own"] != res["scores"]["circuitlab_aligned"]


@pytest.mark.slow
def test_tiny_llama_jumprelu_through_circuit_tracers_loader(tmp_path):
    """A random Llama with rope_theta 1e5 (wrong if the exported config lost it) and JumpReLU
    transcoders without skip reading ln2.out, opened by circuit-tracer's own file loader."""
    peer = _peer_or_skip()
    import transformers as tf

    import circuitlab as cl
    from circuitlab.graphs.fit import FitConfig, fit_transcoders
    from circuitlab.graphs.transcoders import save_transcoders
    from tiny import VOCAB, write_tokenizer

    folder = tmp_path / "llama"
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, vocab_size=VOCAB, bos_token_id=0,
                         eos_token_id=0, pad_token_id=0, rope_parameters={"rope_theta": 1e5, "rope_type": "default"})
    hf = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    hf.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder)
    model = cl.load(str(folder), device="cpu")
    prompts = ["when Mary , John went to the store , John gave a drink to",
               "then Tom , Anna went to the park , Anna gave a book to"]
    tcs = fit_transcoders(model, prompts, FitConfig(n_features=64, arch="jumprelu", fields={"init_threshold": 0.05},
                                                    steps=60, read="ln2.out"))
    save_transcoders(tcs, tmp_path / "tcs")
    res, tol = _compare(["--model", str(folder), "--transcoders", str(tmp_path / "tcs"), "--quick", "--threads", "1",
                         "--prompt", "when Mary , John went to the store , John gave", "--target", "",
                         "--work", str(tmp_path / "work"), "--peer-python", str(peer)])
    assert res["setup"]["transcoder_config"]["feature_input_hook"] == "mlp.hook_in"
    _check(res, tol)
