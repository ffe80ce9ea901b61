"""Logit lens at every layer and position, checked against the Hugging Face model itself."""

import pytest
import torch

from circuitlab.methods.logit_lens import logit_lens_topk

PROMPT = "<bos> The capital of France is"


def _hf_lens(model, tokens):
    """log-probs [n_layers + 1, pos, vocab] computed from the HF model alone: its hidden states
    (block inputs) through its own final norm and lm_head, then its own output logits."""
    hf = model.bridge.original_model
    body = hf.transformer if hasattr(hf, "transformer") else hf.model
    norm = body.ln_f if hasattr(body, "ln_f") else body.norm
    with torch.no_grad():
        out = hf(tokens[None], output_hidden_states=True)
        rows = [hf.lm_head(norm(h[0])) for h in out.hidden_states[: model.n_layers]] + [out.logits[0]]
    return torch.log_softmax(torch.stack(rows).float(), -1)


@pytest.mark.parametrize("name", ["gpt2-zoo", "llama-zoo"])
def test_every_layer_matches_the_hf_model(zoo_model, name):
    model = zoo_model(name)
    tokens = model.to_tokens(PROMPT)
    lens = logit_lens_topk(model, PROMPT, k=5)
    L, T = model.n_layers, tokens.shape[0]
    assert lens.top_ids.shape == lens.top_probs.shape == (L + 1, T, 5)
    assert lens.kl.shape == (L + 1, T)
    assert lens.layers == [f"L{l}.resid_pre" for l in range(L)] + [f"L{L - 1}.resid_post"]
    assert lens.tokens[0] == "<bos>" and lens.tokens[-1] == "is"

    ref = _hf_lens(model, tokens)
    p, ids = ref.exp().topk(5, -1)
    # the last row is the model's own output distribution: same top-k, same probabilities
    assert torch.equal(lens.top_ids[-1], ids[-1])
    assert torch.allclose(lens.top_probs[-1], p[-1], atol=1e-5)
    assert lens.top_tokens[-1][-1][0] == "Paris"
    assert torch.equal(lens.kl[-1], torch.zeros(T))
    # earlier rows: same probabilities of the tokens we report, and the same KL to the output
    got = ref.exp().gather(-1, lens.top_ids)
    assert torch.allclose(lens.top_probs, got, atol=1e-5)
    assert torch.allclose(lens.top_probs[..., 0], p[..., 0], atol=1e-5)
    kl = (ref[-1].exp() * (ref[-1] - ref)).sum(-1)
    assert torch.allclose(lens.kl, kl, atol=1e-4)
    assert (lens.kl[:-1] > 1e-3).any()  # the early layers do differ from the output
    assert lens.top_tokens[0][3][0] == model.tokenizer.decode(lens.top_ids[0, 3, :1].tolist())


def test_token_ids_and_figure(zoo_model):
    model = zoo_model("gpt2-zoo")
    tokens = model.to_tokens(PROMPT)
    by_ids = logit_lens_topk(model, tokens[None], k=3)
    by_text = logit_lens_topk(model, PROMPT, k=3)
    assert torch.equal(by_ids.top_ids, by_text.top_ids)
    fig = by_text.figure()
    heat = fig.data[0]
    assert heat.z.shape == (model.n_layers + 1, tokens.shape[0])
    assert heat.text[-1][-1] == "Paris"
    assert heat.hovertext[-1][-1].count("<br>") == 3 + 1  # header, 3 tokens, KL
    assert list(heat.y) == by_text.layers


def test_bad_input(zoo_model):
    model = zoo_model("gpt2-zoo")
    with pytest.raises(ValueError, match="k must be"):
        logit_lens_topk(model, PROMPT, k=0)
    two = model.to_tokens(PROMPT)[None].repeat(2, 1)
    with pytest.raises(ValueError, match="one at a time"):
        logit_lens_topk(model, two)
    with pytest.raises(TypeError, match="string or a tensor"):
        logit_lens_topk(model, [1, 2, 3])
