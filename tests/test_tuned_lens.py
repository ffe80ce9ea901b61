"""Tuned lens: identity start equals the logit lens, training lowers held-out KL, files round-trip."""

import json

import pytest
import torch

from circuitlab.methods.logit_lens import logit_lens_topk
from circuitlab.methods.tuned_lens import (TunedLens, TunedLensConfig, lens_depth, prompt_depth, train_tuned_lens,
                                           tuned_lens_topk)

PROMPT = "<bos> The capital of France is"
SHORT = TunedLensConfig(tokens=1000, batch_docs=4, lr=3.0)  # ~7 small SGD steps on the zoo corpus


@pytest.fixture(scope="module")
def trained(zoo_model):
    model = zoo_model("gpt2-zoo")
    return model, train_tuned_lens(model, "zoo", SHORT)


@pytest.mark.parametrize("name", ["gpt2-zoo", "llama-zoo"])
def test_untrained_lens_is_the_logit_lens_exactly(zoo_model, name):
    model = zoo_model(name)
    lens = TunedLens.for_model(model)
    a, b = logit_lens_topk(model, PROMPT, k=5), tuned_lens_topk(model, lens, PROMPT, k=5)
    assert a.layers == b.layers and a.tokens == b.tokens
    assert torch.equal(a.top_ids, b.top_ids)
    assert torch.equal(a.top_probs, b.top_probs)
    assert torch.equal(a.kl, b.kl)
    assert b.top_tokens[-1][-1][0] == "Paris"


def test_training_lowers_heldout_kl_and_keeps_the_last_row(trained):
    model, lens = trained
    depth = lens_depth(model, lens, "zoo", n_docs=16)
    L = model.n_layers
    assert depth.positions > 300
    # the logit lens is far from the output early on; the tuned lens closes much of that gap
    assert depth.logit_kl[0] > 5
    assert depth.tuned_kl[0] < 0.6 * depth.logit_kl[0]
    assert (depth.tuned_kl[:L] < depth.logit_kl[:L]).all()
    # the last row reads the model's output: already optimal, training leaves it at the identity
    assert depth.logit_kl[L] == 0
    assert depth.tuned_kl[L] < 1e-5
    assert torch.allclose(lens.weight[L], torch.eye(model.d_model), atol=1e-4)
    assert lens.bias[L].abs().max() < 1e-4
    assert lens.stats["tokens_seen"] >= SHORT.tokens and lens.stats["data"] == "zoo"
    # the model itself is untouched (no gradient reached its weights)
    assert all(p.grad is None for p in model.bridge.parameters())


def test_topk_and_figures_after_training(trained):
    model, lens = trained
    logit, tuned = logit_lens_topk(model, PROMPT, k=3), tuned_lens_topk(model, lens, PROMPT, k=3)
    T = len(tuned.tokens)
    assert tuned.top_ids.shape == (model.n_layers + 1, T, 3) and tuned.kl.shape == (model.n_layers + 1, T)
    assert not torch.equal(tuned.kl, logit.kl)
    assert tuned.top_tokens[-1][-1][0] == "Paris"
    depth = prompt_depth(logit, tuned)
    assert torch.allclose(depth.logit_kl, logit.kl[:, 1:].mean(1))
    fig = depth.figure()
    assert [t.name for t in fig.data] == ["logit lens", "tuned lens"]
    assert "tuned lens" in tuned.figure().layout.title.text


def test_save_load_round_trip_is_bitwise(trained, tmp_path):
    model, lens = trained
    lens.save(tmp_path / "lens")
    back = TunedLens.load(tmp_path / "lens", model)
    for a, b in zip([*lens.weight, *lens.bias], [*back.weight, *back.bias]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert back.config == lens.config and back.facts == lens.facts
    a, b = tuned_lens_topk(model, lens, PROMPT), tuned_lens_topk(model, back, PROMPT)
    assert torch.equal(a.top_probs, b.top_probs) and torch.equal(a.kl, b.kl)
    info = json.loads((tmp_path / "lens" / "lens.json").read_text())
    assert info["format"] == "circuitlab.tuned_lens/1" and info["model"]["n_layers"] == model.n_layers


def test_bad_input_is_refused_clearly(trained, zoo_model, tmp_path):
    model, lens = trained
    lens.save(tmp_path / "lens")
    with pytest.raises(ValueError, match="trained on .*gpt2-zoo.*llama-zoo"):
        TunedLens.load(tmp_path / "lens", zoo_model("llama-zoo"))
    info_path = tmp_path / "lens" / "lens.json"
    info = json.loads(info_path.read_text())
    info["model"]["unembed_norm"] *= 1.01  # same shapes, another checkpoint
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="unembedding differs"):
        TunedLens.load(tmp_path / "lens", model)
    h = torch.zeros(2, model.d_model)
    for row in (-1, model.n_layers + 1):
        with pytest.raises(ValueError, match=rf"out of range.*rows are 0\.\.{model.n_layers}"):
            lens.translate(h, row)
    with pytest.raises(ValueError, match="d_model"):
        lens.translate(torch.zeros(2, model.d_model + 1), 0)
    with pytest.raises(FileNotFoundError, match="lens.safetensors is missing"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "lens.json").write_text("{}")
        TunedLens.load(tmp_path / "empty")
    with pytest.raises(ValueError, match="lr must be a positive number"):
        train_tuned_lens(model, "zoo", TunedLensConfig(lr=0.0))
    with pytest.raises(ValueError, match="unknown optimizer"):
        train_tuned_lens(model, "zoo", TunedLensConfig(optimizer="rmsprop"))


def test_cli_train_and_show(tmp_path, capsys):
    from circuitlab.cli import main

    out = tmp_path / "lens"
    assert main(["lens", "train", "--model", "gpt2-zoo", "--tokens", "300", "--batch-docs", "8",
                 "--eval-docs", "8", "--device", "cpu", "--out", str(out)]) == 0
    assert (out / "lens.safetensors").exists() and "heldout" in json.loads((out / "lens.json").read_text())["stats"]
    assert main(["lens", "show", "--model", "gpt2-zoo", "--lens", str(out), "--prompt", PROMPT, "--k", "3",
                 "--device", "cpu"]) == 0
    page = (out / "show.html").read_text()
    assert "tuned lens" in page and (out / "plotly.min.js").exists()
    assert "Paris" in capsys.readouterr().out
    # bad input: exit 2 with one line naming the problem
    assert main(["lens", "show", "--model", "gpt2-zoo", "--lens", str(tmp_path), "--prompt", PROMPT]) == 2
    assert "not a tuned lens folder" in capsys.readouterr().err
    assert main(["lens", "train", "--model", "gpt2-zoo", "--data", "text:/no/such/file.txt", "--out", str(out)]) == 2


@pytest.mark.slow
def test_smollm2_tuned_lens_beats_the_logit_lens():
    """On SmolLM2-135M (after `circuitlab models fetch smollm2-135m` and `circuitlab data fetch english`)."""
    import circuitlab as cl

    model = cl.load("smollm2-135m")
    lens = TunedLens.for_model(model)
    prompt = "The capital of France is"
    a, b = logit_lens_topk(model, prompt, k=5), tuned_lens_topk(model, lens, prompt, k=5)
    assert torch.equal(a.kl, b.kl)
    lens = train_tuned_lens(model, "corpus:english", TunedLensConfig(tokens=200_000, ctx_len=128))
    depth = lens_depth(model, lens, "corpus:english", n_docs=64, ctx_len=128)
    L = model.n_layers
    assert depth.tuned_kl[:L].mean() < 0.5 * depth.logit_kl[:L].mean()
    assert depth.tuned_kl[L] < 1e-3


def test_batches_are_deterministic_and_continuing_reads_new_ones(zoo_model):
    from circuitlab.methods.tuned_lens import training_batches

    model = zoo_model("gpt2-zoo")
    cfg = TunedLensConfig(tokens=300, batch_docs=4)
    first = list(training_batches(model, "zoo", cfg))
    again = list(training_batches(model, "zoo", cfg))
    later = list(training_batches(model, "zoo", cfg, start=1))
    assert len(first) >= 2 and all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert torch.equal(later[0][0], first[1][0]) and torch.equal(later[0][1], first[1][1])
    toks, mask = first[0]
    assert not mask[:, 0].any() and mask.sum(1).min() > 0
    assert sum(int(m.sum()) for _, m in first) >= cfg.tokens
