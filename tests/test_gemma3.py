"""Gemma-3 on a tiny random model: sliding-window and global layers, QK-norm, sandwich norms,
scaled embeddings and query_pre_attn_scalar. Ground truth is the model itself (hooked reruns),
not circuitlab's own formulas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import circuitlab as cl
from circuitlab.engine.cache import capture
from circuitlab.engine.forward import final_logits, run_to_final
from circuitlab.engine.gradients import forward_for_grads
from circuitlab.methods import qk_fix
from tiny import IOI_PAIRS, VOCAB, write_tokenizer

WINDOW = 4  # the IOI prompts are 13 tokens: sliding layers cut them, global layers do not
LAYER_TYPES = ["sliding_attention", "full_attention", "full_attention", "sliding_attention"]


def save_tiny_gemma3(folder: Path, seed: int = 0) -> Path:
    """A 4-layer Gemma-3 whose layer types are not periodic in 2, so a restart that lost track
    of which layer is sliding would use the wrong mask and rotary table."""
    import transformers as tf

    cfg = tf.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        sliding_window=WINDOW, layer_types=LAYER_TYPES, query_pre_attn_scalar=24,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = tf.Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # larger weights; norm gains away from their zero init
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
            elif "norm" in name:
                p.normal_(0.0, 0.3)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    return cl.load(str(save_tiny_gemma3(tmp_path_factory.mktemp("gemma3"))), device="cpu")


@pytest.fixture(scope="module")
def task(gemma3):
    with pytest.warns(UserWarning):  # 'and' is not in the tiny vocabulary
        return cl.tasks.from_pairs(gemma3, IOI_PAIRS)


def test_loads_with_sandwich_norms_and_verified_shortcuts(gemma3):
    m = gemma3
    assert m.post_attn_norm and m.norm == "RMS" and m.n_kv_heads == 2
    assert m.fast_restart and m.fast_positions, repr(m)
    assert "shortcut off" not in repr(m)
    assert qk_fix.score_rule(m, 0) == qk_fix.ScoreRule(24 ** -0.5, None, WINDOW)
    assert qk_fix.score_rule(m, 1) == qk_fix.ScoreRule(24 ** -0.5, None, None)


def test_sliding_and_global_layers_differ(gemma3, task):
    toks = task.clean_tokens
    T = toks.shape[1]
    c = capture(gemma3, toks, ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"])
    far = ~qk_fix.visible(T, "cpu", WINDOW) & qk_fix.visible(T, "cpu")  # causal but out of window
    assert far.any()
    assert c["blocks.0.attn.hook_pattern"][..., far].abs().max() == 0
    assert c["blocks.1.attn.hook_pattern"][..., far].abs().min() > 0


def test_shortcuts_give_the_same_patching_results(gemma3, task):
    """Exact patching with layer/position restarts equals patching with full forward passes."""
    fast = cl.patch(gemma3, task, "heads").values
    saved = gemma3.fast_restart, gemma3.fast_positions
    try:
        gemma3.fast_restart = gemma3.fast_positions = False
        slow = cl.patch(gemma3, task, "heads").values
    finally:
        gemma3.fast_restart, gemma3.fast_positions = saved
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-4)
    assert slow.abs().max() > 1e-3


def test_dla_sums_to_the_logit_difference(gemma3, task):
    m = gemma3
    results = {by: cl.dla(m, task, by=by) for by in ("layer", "head", "neuron", "source")}
    for by, r in results.items():
        assert abs(r.meta["total"] - r.baseline) < 1e-4 * max(1.0, abs(r.baseline)), by
    head, src, layer = results["head"], results["source"], results["layer"]
    assert torch.allclose(src.values.sum(-1), head.values, atol=1e-5)
    # per-layer attention = its heads + the output bias term, through the same frozen post-norm
    assert torch.allclose(layer.values[:, 0], head.values.sum(1) + head.extras["attn_bias"], atol=1e-5)
    # neurons of a layer add up to its (post-normed) MLP output
    neuron = results["neuron"]
    assert torch.allclose(neuron.values.sum(1) + neuron.extras["mlp_bias"], layer.values[:, 1], atol=1e-4)
    # the target is the model's own logit difference, computed independently
    logits = final_logits(m, run_to_final(m, task.clean_tokens))
    b = torch.arange(len(task))
    ld = (logits[b, task.answer_pos, task.answer_ids] - logits[b, task.answer_pos, task.wrong_ids]).mean()
    assert abs(float(ld.detach()) - head.baseline) < 1e-5


def _brute_force(model, toks, layer, name, pos, head, value, A, G):
    """Rerun the model with one head's query or key at one position replaced; the change of
    the layer's pattern (as the model computes it, masks and all) read through G."""
    def put(x):
        x = x.clone()
        x[:, pos, head] = value
        return x

    pat = f"blocks.{layer}.attn.hook_pattern"
    with torch.no_grad():
        new = capture(model, toks, [pat], hooks=[(name, put)])[pat].float()
    return ((new - A) * G).sum((-1, -2))  # [B, H]


@pytest.mark.parametrize("layer", [0, 1])  # sliding, global
def test_qk_fix_equals_rerunning_the_model(gemma3, task, layer):
    _check_qk_fix(gemma3, task, layer)


def test_qk_fix_with_attention_soft_capping(tmp_path):
    """Gemma-2 caps attention logits (c tanh(s / c)); a small cap makes it matter."""
    import transformers as tf

    cfg = tf.Gemma2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          max_position_embeddings=64, sliding_window=WINDOW, attn_logit_softcapping=1.5,
                          query_pre_attn_scalar=1,
                          bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(1)
    hf = tf.Gemma2ForCausalLM(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    write_tokenizer(tmp_path)
    m = cl.load(str(tmp_path), device="cpu")
    rule = qk_fix.score_rule(m, 0)
    assert rule.softcap == 1.5 and rule.window == WINDOW
    with pytest.warns(UserWarning):
        task = cl.tasks.from_pairs(m, IOI_PAIRS)
    _check_qk_fix(m, task, 0)
    assert abs(cl.dla(m, task, "head").meta["total"] - cl.dla(m, task, "head").baseline) < 1e-4


def _check_qk_fix(m, task, layer):
    qn, kn = qk_fix.rotated_names(m, layer)
    assert qn.endswith("hook_rot_q")  # after QK-norm and rotary embeddings: what attention uses
    pat = f"blocks.{layer}.attn.hook_pattern"
    src = capture(m, task.clean_tokens, [qn, kn])
    run = forward_for_grads(m, task.corrupt_tokens, task.metric, [qn, kn, pat])
    G = run.grads()[pat].float()
    A = run.acts[pat].detach().float()
    qb, kb = run.acts[qn].detach(), run.acts[kn].detach()
    rule = qk_fix.score_rule(m, layer)
    fast_q = qk_fix.query_effects(qb, src[qn], kb, A, G, rule)
    fast_k = qk_fix.key_effects(qb, kb, src[kn], A, G, rule)
    toks = task.corrupt_tokens
    group = qb.shape[2] // kb.shape[2]
    checked = 0

    def changed(src_x, base_x):  # positions where clean and corrupt differ (others: no effect)
        return ((src_x - base_x).abs().amax((0, 2, 3)) > 0).nonzero().flatten().tolist()[-3:]

    assert changed(src[qn], qb) and changed(src[kn], kb)
    for h in range(qb.shape[2]):
        for t in changed(src[qn], qb) + [1]:
            brute = _brute_force(m, toks, layer, qn, t, h, src[qn][:, t, h], A, G)[:, h]
            assert torch.allclose(brute, fast_q[:, t, h], atol=1e-5, rtol=1e-4), (h, t)
            checked += int(brute.abs().max() > 1e-6)
    for hk in range(kb.shape[2]):
        for j in changed(src[kn], kb) + [1]:
            brute = _brute_force(m, toks, layer, kn, j, hk, src[kn][:, j, hk], A, G)
            brute = brute[:, hk * group:(hk + 1) * group].sum(-1)
            assert torch.allclose(brute, fast_k[:, j, hk], atol=1e-5, rtol=1e-4), (hk, j)
            checked += int(brute.abs().max() > 1e-6)
    assert checked >= 5  # the comparisons are not all between zeros


def test_plain_causal_rule_would_be_wrong_on_sliding_layers(gemma3, task):
    """The window and the scale matter: d_head**-0.5 with a causal-only mask gives other values."""
    m, layer = gemma3, 0
    qn, kn = qk_fix.rotated_names(m, layer)
    pat = f"blocks.{layer}.attn.hook_pattern"
    src = capture(m, task.clean_tokens, [qn])
    run = forward_for_grads(m, task.corrupt_tokens, task.metric, [qn, kn, pat])
    G, A = run.grads()[pat].float(), run.acts[pat].detach().float()
    qb, kb = run.acts[qn].detach(), run.acts[kn].detach()
    right = qk_fix.query_effects(qb, src[qn], kb, A, G, qk_fix.score_rule(m, layer))
    naive = qk_fix.query_effects(qb, src[qn], kb, A, G, m.d_head ** -0.5)
    assert (right - naive).abs().max() > 1e-3


def test_atp_star_runs_on_queries_and_keys(gemma3, task):
    for sites in ("q", "k"):
        r = cl.patch(gemma3, task, sites, method="atp*")
        assert torch.isfinite(r.values).all() and r.values.abs().max() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_real_model(name):
    from circuitlab.models import fetch

    if not fetch.is_fetched(name):
        pytest.skip(f"{name} is not fetched (circuitlab models fetch {name})")
    m = cl.load(name, device="cpu")
    assert m.fast_restart and m.fast_positions, repr(m)
    pairs = [{"clean": "The capital of France is the city of", "corrupt": "The capital of Spain is the city of",
              "answer": " Paris", "wrong": " Madrid"}]
    task = cl.tasks.from_pairs(m, pairs)
    for by in ("head", "neuron"):
        r = cl.dla(m, task, by=by)
        assert abs(r.meta["total"] - r.baseline) < 1e-3 * max(1.0, abs(r.baseline)), by
    layer = m.n_layers // 3
    qn, kn = qk_fix.rotated_names(m, layer)
    pat = f"blocks.{layer}.attn.hook_pattern"
    src = capture(m, task.clean_tokens, [qn, kn])
    run = forward_for_grads(m, task.corrupt_tokens, task.metric, [qn, kn, pat])
    G, A = run.grads()[pat].float(), run.acts[pat].detach().float()
    qb, kb = run.acts[qn].detach(), run.acts[kn].detach()
    rule = qk_fix.score_rule(m, layer)
    fast_q = qk_fix.query_effects(qb, src[qn], kb, A, G, rule)
    fast_k = qk_fix.key_effects(qb, kb, src[kn], A, G, rule)
    T = A.shape[-1]
    group = qb.shape[2] // kb.shape[2]
    scale = G.abs().max()
    for t in (T - 5, T - 4):  # the country name and its neighbour
        brute = _brute_force(m, task.corrupt_tokens, layer, qn, t, 0, src[qn][:, t, 0], A, G)[:, 0]
        assert torch.allclose(brute, fast_q[:, t, 0], atol=1e-4 * float(scale))
        brute = _brute_force(m, task.corrupt_tokens, layer, kn, t, 0, src[kn][:, t, 0], A, G)[:, :group].sum(-1)
        assert torch.allclose(brute, fast_k[:, t, 0], atol=1e-4 * float(scale))
