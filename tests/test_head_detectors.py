from pathlib import Path

import pytest
import torch

from circuitlab.methods.head_detectors import head_scores, repeated_tokens, sequence_pool, special_ids, word_tokens
from circuitlab.viz.attention import attention_figure, head_scores_figure

SMOLLM2 = Path("/root/.cache/circuitlab/models/smollm2-135m")


def test_detector_scores_are_attention_means(gpt2):
    toks = repeated_tokens(gpt2, n=4, length=6)
    assert toks.shape == (4, 13) and torch.equal(toks[:, 1:7], toks[:, 7:])
    r = head_scores(gpt2, toks)
    assert r.values.shape == (4, 3, 4)
    assert (r.values[:3] >= 0).all() and (r.values[:3] <= 1).all()
    assert (r.values[3].abs() <= 1 + 1e-5).all()
    # brute force the previous-token score of L1.H2
    from circuitlab.engine.cache import capture

    A = capture(gpt2, toks, ["blocks.1.attn.hook_pattern"])["blocks.1.attn.hook_pattern"][:, 2]
    expect = torch.stack([A[:, t, t - 1] for t in range(7, 13)], 1).mean()
    assert torch.allclose(r.values[0, 1, 2], expect, atol=1e-6)
    assert len(head_scores_figure(r).data) == 4


def test_attention_figure(gpt2):
    fig = attention_figure(gpt2, "when Mary and John went to the store", [(0, 1), (2, 3)])
    assert len(fig.data) == 2 and fig.data[0].z.shape == (9, 9)


# ---- zoo models: grouped-query (llama-zoo) and multi-head (gpt2-zoo), checked from raw weights


def _copying_from_scratch(model, layer: int, head: int, ids: list[int]) -> float:
    """Sum of eigenvalues over sum of their magnitudes of the full [n, n] matrix
    W_E g1 W_V W_O g W_U, every factor sliced out of the Hugging Face module's weights."""
    hf = model.bridge.original_model
    d, dh, H = model.d_model, model.d_head, model.n_heads
    if model.n_kv_heads != H:  # Llama: v_proj [kv * dh, d], o_proj [d, H * dh]
        base = hf.model
        blk = base.layers[layer]
        kv = head // (H // model.n_kv_heads)
        W_V = blk.self_attn.v_proj.weight[kv * dh:(kv + 1) * dh].T
        W_O = blk.self_attn.o_proj.weight[:, head * dh:(head + 1) * dh].T
        g1, g = blk.input_layernorm.weight, base.norm.weight
        W_E = base.embed_tokens.weight
    else:  # GPT-2: Conv1D c_attn [d, 3d] (q | k | v), c_proj [d, d], both x @ W
        base = hf.transformer
        blk = base.h[layer]
        W_V = blk.attn.c_attn.weight[:, 2 * d + head * dh:2 * d + (head + 1) * dh]
        W_O = blk.attn.c_proj.weight[head * dh:(head + 1) * dh]
        g1, g = blk.ln_1.weight, base.ln_f.weight
        W_E = base.wte.weight
    W_U = hf.lm_head.weight.T
    with torch.no_grad():
        M = (W_E[ids] * g1) @ W_V @ W_O @ (g[:, None] * W_U[:, ids])
        ev = torch.linalg.eigvals(M.double())
    return float(ev.real.sum() / ev.abs().sum())


@pytest.mark.parametrize("name", ["llama-zoo", "gpt2-zoo"])
def test_zoo_head_scores_match_weights(zoo_model, name):
    model = zoo_model(name)
    assert (model.n_kv_heads < model.n_heads) == (name == "llama-zoo")
    toks = repeated_tokens(model, n=4, length=8)
    r = head_scores(model, toks, n_tokens=120)
    assert r.values.shape == (4, model.n_layers, model.n_heads)
    ids = word_tokens(model.tokenizer, 120, model.d_vocab)
    # the last head of the last layer: under GQA it reads the last value head, not value head H - 1
    L, h = model.n_layers - 1, model.n_heads - 1
    assert r.values[3, L, h] == pytest.approx(_copying_from_scratch(model, L, h, ids), abs=2e-4)
    assert r.values[3, 1, 1] == pytest.approx(_copying_from_scratch(model, 1, 1, ids), abs=2e-4)


def test_llama_zoo_patterns_match_plain_attention(zoo_model):
    """Layer-0 attention of every query head recomputed from the weights (RMSNorm, RoPE from the
    transformers implementation, shared key heads), against the pattern the detector scores read."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from circuitlab.engine.cache import capture

    model = zoo_model("llama-zoo")
    hf = model.bridge.original_model.model
    toks = repeated_tokens(model, n=2, length=6)
    blk, dh, H, KV = hf.layers[0], model.d_head, model.n_heads, model.n_kv_heads
    with torch.no_grad():
        x = hf.embed_tokens.weight[toks]
        eps = blk.input_layernorm.variance_epsilon
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * blk.input_layernorm.weight
        B, T, _ = x.shape
        q = (x @ blk.self_attn.q_proj.weight.T).view(B, T, H, dh).transpose(1, 2)
        k = (x @ blk.self_attn.k_proj.weight.T).view(B, T, KV, dh).transpose(1, 2)
        cos, sin = hf.rotary_emb(x, torch.arange(T)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(H // KV, dim=1)  # query head h reads key head h // (H / KV)
        s = (q @ k.transpose(-1, -2)) / dh ** 0.5
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        expect = s.softmax(-1)
    got = capture(model, toks, ["blocks.0.attn.hook_pattern"])["blocks.0.attn.hook_pattern"]
    assert torch.allclose(got.float(), expect, atol=1e-5)
    r = head_scores(model, toks)
    L = 6
    second = torch.arange(1 + L, 1 + 2 * L)
    assert r.values[2, 0, 3] == pytest.approx(float(expect[:, 3, second[:-1], second[:-1] - L + 1].mean()), abs=1e-5)


# ---- the copying score's token pool


def _tiny_bpe():
    """A byte-level BPE tokenizer trained here: 256 byte tokens first, then merges, plus special
    tokens, one of them (like SmolLM2's repository markers) absent from ``all_special_ids``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["when Mary and John went to the store , John gave a drink to Mary .",
            "the capital of France is Paris and the capital of Spain is Madrid .",
            "then Tom and Anna went to the park ; 12 + 30 = 42 ! <tag> x_y"] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text, trainer)
    tok.add_special_tokens(["<repo_name>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def _check_word_pool(tok, n):
    pool = word_tokens(tok, n)
    assert len(pool) == n == len(set(pool))
    special = special_ids(tok)
    for i in pool:
        raw, text = tok.convert_ids_to_tokens(i), tok.decode([i])
        assert i not in special and not raw.startswith("<"), raw
        assert text.startswith(" ") and text.strip().isalpha() and len(text.strip()) >= 2, raw
    first = set(range(n))
    assert first & special and any(len(tok.decode([i]).strip()) <= 1 for i in first)  # what the pool avoids
    return pool


def test_word_pool_on_byte_level_bpe():
    tok = _tiny_bpe()
    repo = tok.convert_tokens_to_ids("<repo_name>")
    assert repo not in tok.all_special_ids and repo in special_ids(tok)
    pool = _check_word_pool(tok, 8)
    corpus = ("when Mary and John went to the store gave a drink capital of France is Paris Spain Madrid "
              "then Tom Anna park")
    for i in pool:  # word starts (" Jo" of " John" included), never pieces from inside a word
        assert any(w.startswith(tok.decode([i]).strip()) for w in corpus.split()), tok.decode([i])


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2.exists(), reason="SmolLM2 folder not converted on this machine")
def test_word_pool_on_smollm2_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(SMOLLM2))
    pool = _check_word_pool(tok, 300)
    assert {" the", " and", " of"} <= {tok.decode([i]) for i in pool}


def test_zoo_pool_is_its_frequent_words(zoo_model):
    tok = zoo_model("gpt2-zoo").tokenizer
    pool = word_tokens(tok, 300)
    assert tok.convert_ids_to_tokens(pool[:3]) == ["the", "The", "an"]  # "<bos>", "<unk>", ".", ",", "a" skipped
    assert all(tok.decode([i]).isalpha() for i in pool) and pool == sorted(pool)


# ---- the random sequences' token pool


def test_random_sequences_come_from_a_data_source(tmp_path, gpt2):
    words = ["Mary", "John", "Anna", "Tom", "store", "park", "drink", "book"]
    p = tmp_path / "words.txt"  # every word in every line, plus numbered tokens that are no words
    p.write_text("\n".join(" ".join(words[k % 8:] + words[: k % 8] + [f"w{k}"]) for k in range(40)) + "\n")
    pool = sequence_pool(gpt2, f"text:{p}")
    assert sorted(gpt2.tokenizer.convert_ids_to_tokens(pool)) == sorted(words)
    r = head_scores(gpt2, length=5, data=f"text:{p}")
    assert torch.equal(r.values, head_scores(gpt2, repeated_tokens(gpt2, length=5, vocab=pool)).values)
    # the default pool is unchanged: the model's first word tokens (no zoo vocabulary here)
    assert sequence_pool(gpt2) is None
    default = head_scores(gpt2, length=5)
    assert torch.equal(default.values, head_scores(gpt2, repeated_tokens(gpt2, length=5)).values)
    assert not torch.equal(default.values[:3], r.values[:3])
    with pytest.raises(ValueError, match="unknown source kind 'nosuch'"):
        head_scores(gpt2, data="nosuch:x")


def test_zoo_models_draw_from_the_zoo_random_words(zoo_model):
    from circuitlab.zoo.world import RANDOM_WORDS

    tok = zoo_model("gpt2-zoo").tokenizer
    assert tok.convert_ids_to_tokens(sequence_pool(zoo_model("gpt2-zoo"))) == list(RANDOM_WORDS)
