"""Patchscopes on the zoo models: self-patching is the identity, and known cases decode as expected."""

import types

import pytest
import torch

from circuitlab.engine.forward import final_logits, run_to_final
from circuitlab.engine.interventions import Intervention, generate, intervene
from circuitlab.engine.sites import Node
from circuitlab.methods.patchscope import (IDENTITY_PROMPT, attribute_extraction, identity_target,
                                           patchscope, patchscope_grid, placeholder_target, token_identity)

FACT = "<bos> The capital of Germany is"  # the model says Berlin
SOURCE = "<bos> People in France speak"  # France at position 3


def _own_probs(model, text):
    with torch.no_grad():
        return final_logits(model, run_to_final(model, model.to_tokens(text)[None])[0, -1]).softmax(-1)


@pytest.mark.parametrize("name", ["gpt2-zoo", "llama-zoo"])
def test_self_patch_reproduces_the_model(zoo_model, name):
    model = zoo_model(name)
    own = _own_probs(model, FACT)
    plain = generate(model, model.to_tokens(FACT), 2)[-2:]
    for layer in (0, 2, model.n_layers):  # first block's input, a middle one, the final residual
        for pos in (-1, 2):
            r = patchscope(model, FACT, FACT, layer, pos, pos, max_new_tokens=2, expected="Berlin")
            assert r.top_tokens[0] == "Berlin"
            assert torch.allclose(r.probs, own, atol=1e-6), (layer, pos)
            assert torch.equal(r.continuation_ids, plain)
            assert r.expected_prob == pytest.approx(float(own[model.token_id("Berlin")]), abs=1e-6)


def test_other_prompt_changes_the_answer(zoo_model):
    """France's residual (read in another sentence) written over Germany's: the capital moves
    to Paris in gpt2-zoo at any middle layer (measured: p(Paris) 0.91-0.99 for layers 1..3)."""
    model = zoo_model("gpt2-zoo")
    assert int(_own_probs(model, FACT).argmax()) == model.token_id("Berlin")
    for layer in (1, 2, 3):
        r = patchscope(model, SOURCE, FACT, layer, source_position=3, target_position=4,
                       max_new_tokens=1, expected="Paris")
        assert r.top_tokens[0] == "Paris" and r.expected_prob > 0.9, (layer, r.top_tokens[:3])
        assert r.continuation == "Paris"
    same = attribute_extraction(model, SOURCE, FACT, "Germany", (2, 2), 3, expected="Paris", max_new_tokens=0)
    assert same.target_position == 4 and same.top_tokens[0] == "Paris"
    # the residual after the last block no longer reads as France to layer 0
    r = patchscope(model, SOURCE, FACT, (4, 0), 3, 4, max_new_tokens=0, expected="Paris")
    assert r.expected_prob < 0.01


def test_continuation_matches_a_stepwise_rerun(zoo_model):
    """The greedy continuation equals one full patched forward pass per new token."""
    model = zoo_model("gpt2-zoo")
    r = patchscope(model, SOURCE, FACT, (2, 2), 3, 4, max_new_tokens=4)
    src = model.to_tokens(SOURCE)[None]
    from circuitlab.engine.cache import capture

    vec = capture(model, src, ["blocks.2.hook_resid_pre"])["blocks.2.hook_resid_pre"][0, 3]
    seq = model.to_tokens(FACT)[None]
    with intervene(model, [Intervention(Node(2, "resid_pre"), "set", vec, (4,))]), torch.no_grad():
        for _ in range(4):
            nxt = final_logits(model, run_to_final(model, seq)[:, -1]).argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(r.continuation_ids, seq[0, -4:])


def test_token_identity_reads_word_embeddings(zoo_model):
    """llama-zoo copies a repeated random-word sequence, so a word's layer-0 residual (its
    embedding: RoPE adds no position vector) patched at the placeholder is read back."""
    model = zoo_model("llama-zoo")
    t = identity_target(model)
    assert t.text.startswith("<bos> cat dog tree lamp") and t.position == 4
    for word in ("rope", "fish", "castle", "moon"):
        r = token_identity(model, f"<bos> apple milk {word}", 0, max_new_tokens=1)
        assert r.top_tokens[0] == word and r.top_probs[0] > 0.9, (word, r.top_tokens[:3])
    plain = patchscope(model, t.text, t.text, 0, t.position, t.position, max_new_tokens=0)
    assert plain.top_tokens[0] == "lamp"


def test_paper_identity_prompt_with_a_bpe_tokenizer():
    """Where the tokenizer knows '->' the paper's prompt is used, the vector going at '?'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from circuitlab.tasks.tokenize import encode

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator([IDENTITY_PROMPT] * 10, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>")
    stub = types.SimpleNamespace(tokenizer=tok, device=torch.device("cpu"),
                                 to_tokens=lambda text: torch.tensor(encode(tok, text)))
    t = identity_target(stub)
    ids = encode(tok, IDENTITY_PROMPT)
    assert t.text == IDENTITY_PROMPT
    assert tok.decode(ids[t.position:]) == " ? ->"  # '?' then the arrow, nothing else
    assert tok.decode([ids[t.position]]) in ("?", " ?")


def test_grid_shape_values_and_figure(zoo_model):
    model = zoo_model("gpt2-zoo")
    L = model.n_layers
    g = patchscope_grid(model, SOURCE, FACT, source_position=3, target_position=4, k=3,
                        expected="Paris", max_new_tokens=2)
    assert g.top_ids.shape == g.top_probs.shape == (L + 1, L + 1, 3)
    assert g.expected_prob.shape == (L + 1, L + 1)
    assert len(g.continuations) == L + 1 and all(len(row) == L + 1 for row in g.continuations)
    assert g.layer_labels[0] == "L0.resid_pre" and g.layer_labels[L] == f"L{L - 1}.resid_post"
    # each cell equals the single patchscope (the grid batches source layers)
    for s, t in ((2, 2), (1, 3), (4, 0), (0, 4)):
        one = patchscope(model, SOURCE, FACT, (s, t), 3, 4, k=3, expected="Paris", max_new_tokens=2)
        assert torch.equal(g.top_ids[s, t], one.top_ids)
        assert float(g.expected_prob[s, t]) == pytest.approx(one.expected_prob, abs=1e-6)
        assert g.continuations[s][t] == one.continuation
    assert g.top_tokens[2][2][0] == "Paris"
    # target = final residual: the target's own prediction never sees the patch at position 4
    assert all(row[L][0] == "Berlin" for row in g.top_tokens)
    heat = g.figure().data[0]
    assert heat.z.shape == (L + 1, L + 1)
    assert heat.text[2][2] == g.continuations[2][2]
    assert list(heat.y) == [g.layer_labels[l] for l in range(L + 1)]
    sub = patchscope_grid(model, SOURCE, FACT, [1, 2], [3], 3, 4, k=2)
    assert sub.top_ids.shape == (2, 1, 2) and sub.expected_prob is None and sub.continuations is None
    assert torch.equal(sub.top_ids[1, 0], g.top_ids[2, 3, :2])
    sub.figure()


def test_bad_input(zoo_model):
    model = zoo_model("gpt2-zoo")
    with pytest.raises(ValueError, match="out of range: use 0..4"):
        patchscope(model, SOURCE, FACT, 5)
    with pytest.raises(ValueError, match="source_position 9 is outside the 5-token prompt"):
        patchscope(model, SOURCE, FACT, 1, source_position=9)
    with pytest.raises(ValueError, match="layer_map must be"):
        patchscope(model, SOURCE, FACT, (1, 2, 3))
    with pytest.raises(ValueError, match="does not occur"):
        placeholder_target(model, FACT, "France")
    with pytest.raises(ValueError, match="max_new_tokens"):
        patchscope(model, SOURCE, FACT, 1, max_new_tokens=-1)
    with pytest.raises(ValueError, match="at least one layer"):
        patchscope_grid(model, SOURCE, FACT, source_layers=[])
