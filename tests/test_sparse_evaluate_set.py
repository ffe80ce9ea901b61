"""Evaluating a set of coders together gives each coder exactly the numbers it gets alone."""

import pytest
import torch


@pytest.fixture(scope="module")
def setup():
    import circuitlab as cl
    from circuitlab.sparse.base import config_class, make_coder
    from circuitlab.sparse.evaluate import heldout_documents

    torch.set_num_threads(1)
    model = cl.load("gpt2-zoo")
    d = model.d_model
    coders = {}
    for layer in (0, 2):
        cfg = config_class("topk")(d_in=d, d_sae=64, d_out=d, k=8, seed=layer, skip=True,
                                   hooks_in=(f"blocks.{layer}.hook_resid_mid",),
                                   hooks_out=(f"blocks.{layer}.hook_mlp_out",))
        coders[f"tc{layer}"] = make_coder(cfg)
    cfg = config_class("relu")(d_in=d, d_sae=64, seed=5, hooks_in=("blocks.1.hook_resid_post",))
    coders["sae1"] = make_coder(cfg)
    with torch.no_grad():  # a coder that reconstructs something: decoder = encoder transposed, scaled
        for c in coders.values():
            c.W_enc.normal_(0, 0.3)
            c.W_dec.copy_(c.W_enc.T * 0.5)
    return model, coders, heldout_documents(12, ctx_len=32)


def test_set_metrics_equal_each_coder_evaluated_alone(setup):
    from circuitlab.sparse.evaluate import evaluate
    from circuitlab.sparse.evaluate_set import reconstruction_set, splice_set

    model, coders, docs = setup
    rec = reconstruction_set(model, coders, docs, ctx_len=32, batch_docs=5)
    ce = splice_set(model, coders, docs, ctx_len=32, batch_docs=5)
    for n, c in coders.items():
        alone = evaluate(model, c, docs=docs, ctx_len=32)
        for k in ("l0", "fvu", "cosine", "dead_fraction", "tokens"):
            assert rec[n][k] == pytest.approx(alone[k], rel=1e-5, abs=1e-7), (n, k)
        for k in ("ce_clean", "ce_coder", "ce_zero_ablation", "ce_recovered", "kl_coder"):
            assert ce["coders"][n][k] == pytest.approx(alone[k], rel=1e-6, abs=1e-9), (n, k)
    assert ce["replacement"]["coders"] == ["tc0", "tc2"]


def test_replacement_splices_every_transcoder_at_once(setup):
    from circuitlab.engine.forward import final_logits, run_to_final
    from circuitlab.sparse.evaluate_set import splice_set
    from circuitlab.sparse.splice import splice
    from circuitlab.sparse.store import tokenize_documents

    model, coders, docs = setup
    ce = splice_set(model, coders, docs[:1], ctx_len=32)
    tokens, lengths = tokenize_documents(model.tokenizer, docs[:1], 32)
    def first_kept_token_out(x):  # keep BOS only, as the set does
        m = torch.zeros(x.shape[:2], dtype=torch.bool)
        m[:, 0] = True
        return m

    with torch.no_grad(), splice(model, [coders["tc0"], coders["tc2"]], passthrough=first_kept_token_out):
        lp = torch.log_softmax(final_logits(model, run_to_final(model, tokens)).double(), -1)[:, :-1]
    n = int(lengths[0]) - 1
    nll = -lp[0, 1:n].gather(-1, tokens[0, 2:n + 1, None])[..., 0]  # positions 1..n-1 (BOS excluded)
    assert ce["replacement"]["ce_coder"] == pytest.approx(float(nll.mean()), rel=1e-9)


def test_eval_cli_scores_a_folder_of_coders_as_a_set(setup, tmp_path, capsys):
    import json

    from circuitlab.cli import main
    from circuitlab.sparse.files import save_coder

    model, coders, _ = setup
    for n, c in coders.items():
        c.cfg.models = ("gpt2-zoo",)
        save_coder(c, tmp_path / "set" / f"gpt2-zoo_{'transcoder' if n.startswith('tc') else 'resid'}_L{n[-1]}")
    assert main(["eval", str(tmp_path / "set"), "--docs", "6", "--ce-docs", "3", "--ctx-len", "24",
                 "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "set_metrics.json").read_text())
    assert sorted(m["coders"]) == ["gpt2-zoo_resid_L1", "gpt2-zoo_transcoder_L0", "gpt2-zoo_transcoder_L2"]
    assert m["replacement"]["coders"] == ["gpt2-zoo_transcoder_L0", "gpt2-zoo_transcoder_L2"]
    assert (tmp_path / "ev" / "set_metrics.html").exists()
    assert "replacement (2 transcoders at once)" in capsys.readouterr().out
