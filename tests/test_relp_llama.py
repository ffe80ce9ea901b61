"""RelP's LRP rules on a Llama-family model (RMSNorm, SwiGLU, RoPE, grouped-query attention),
each checked against its definition written out here in plain torch from the raw weights.

Rules (see circuitlab/methods/relp_rules.py): LN-rule (the norm's scale is a constant), identity
rule on the activation (act(z) = z * [act(z)/z] with the bracket constant), half rule on the gate
product (each factor gets half the gradient), attention-pattern rule (the softmax pattern is a
constant, so queries, keys and RoPE carry no relevance; shared key/value heads collect the
relevance of every query head that reads them), plain gradients through linear maps and residual
adds. On a bias-free Llama these make every block degree-1 homogeneous in its input, so
input x modified gradient sums to the output exactly at every cut (the epsilon inside the norm is
part of the constant scale, so it absorbs nothing).
"""

import pytest
import torch

import circuitlab as cl
from circuitlab.engine.forward import final_logits, run_to_final
from circuitlab.engine.gradients import forward_for_grads
from circuitlab.methods.relp_rules import final_norm_rule, relp_hooks


@pytest.fixture(scope="module")
def llama64(tiny_dir):
    model = cl.load(str(tiny_dir("llama")), device="cpu", dtype="float64")
    assert model.n_kv_heads < model.n_heads  # grouped-query attention
    model.bridge.original_model.requires_grad_(False)  # gradients here are taken at activations
    return model


@pytest.fixture(scope="module")
def task(llama64, ioi_pairs):
    with pytest.warns(UserWarning):  # "and" is not in the tiny vocabulary
        return cl.tasks.from_pairs(llama64, ioi_pairs)


def _hf(model):
    return model.bridge.original_model.model


def _rule_vjp(model, tokens, hook_in, hook_out, upstream, attention="pattern"):
    """(x, y, vector-Jacobian product upstream -> x) of the ruled map from ``hook_in`` to
    ``hook_out``: x is cut from everything before it, so the product sees this map alone."""
    box = {}

    def leaf(x):
        box["x"] = x.detach().requires_grad_(True)
        return box["x"]

    def read(y):
        box["y"] = y

    hooks = [(hook_in, leaf)] + relp_hooks(model, attention) + [(hook_out, read)]
    with torch.enable_grad(), final_norm_rule(model):
        run_to_final(model, tokens, hooks)
        u = upstream(box["y"].shape)
        (g,) = torch.autograd.grad(box["y"], box["x"], u)
    return box["x"].detach(), box["y"].detach(), u, g


def _upstream(seed=0):
    return lambda shape: torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rms_scale(x, norm):
    return (x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()


# ---- (1) forward values


@pytest.mark.parametrize("attention", ["pattern", "attnlrp"])
def test_forward_bit_identical(tiny_model, ioi_pairs, attention):
    model = tiny_model("llama")  # float32, as users load it
    with pytest.warns(UserWarning):
        t = cl.tasks.from_pairs(model, ioi_pairs)
    with torch.no_grad():
        plain = model.bridge(t.clean_tokens, return_type="logits")
    with torch.enable_grad(), final_norm_rule(model):
        resid = run_to_final(model, t.clean_tokens, relp_hooks(model, attention))
        ruled = final_logits(model, resid)
    assert ruled.requires_grad and torch.equal(plain, ruled.detach())


# ---- (2) each rule against its definition


def test_rmsnorm_ln_rule(llama64, task):
    norm = _hf(llama64).layers[1].post_attention_layernorm
    x, y, u, g = _rule_vjp(llama64, task.clean_tokens, "blocks.1.ln2.hook_in", "blocks.1.ln2.hook_out", _upstream())
    s = _rms_scale(x, norm)
    assert torch.allclose(y, x / s * norm.weight, atol=1e-12)
    assert torch.allclose(g, u * norm.weight / s, atol=1e-10)  # the scale is a constant
    # the plain gradient differs: it removes the component along x
    xg = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(xg / _rms_scale(xg, norm) * norm.weight, xg, u)
    assert (plain - g).abs().max() > 1e-3 * g.abs().max()


def test_final_norm_ln_rule(llama64, task):
    norm = _hf(llama64).norm
    with torch.no_grad():
        resid = run_to_final(llama64, task.clean_tokens)
    x = resid.detach().requires_grad_(True)
    u = _upstream(1)(x.shape)
    with torch.enable_grad(), final_norm_rule(llama64):
        (g,) = torch.autograd.grad(llama64.bridge.ln_final(x), x, u)
    assert torch.allclose(g, u * norm.weight / _rms_scale(x.detach(), norm), atol=1e-10)


def test_swiglu_identity_and_half_rules(llama64, task):
    mlp = _hf(llama64).layers[1].mlp
    x, y, c, g = _rule_vjp(llama64, task.clean_tokens, "blocks.1.mlp.hook_in", "blocks.1.mlp.hook_out", _upstream(2))
    Wg, Wu, Wd = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
    gate, up = x @ Wg.T, x @ Wu.T
    act = gate * torch.sigmoid(gate)  # SiLU, written out
    assert torch.allclose(y, (act * up) @ Wd.T, atol=1e-10)
    dh = c @ Wd  # gradient at act * up
    # half rule: each factor gets half; identity rule: the SiLU passes act/gate (-> 1/2 at 0)
    assert (gate[:, 1:] != 0).all()  # zeros only at BOS, the tiny model's padding token (embedded as 0)
    ratio = torch.where(gate == 0, torch.full_like(gate, 0.5), act / gate)
    expect = (0.5 * dh * up * ratio) @ Wg + (0.5 * dh * act) @ Wu
    assert torch.allclose(g, expect.detach(), atol=1e-9 * float(expect.abs().max()))
    assert float((x * g).sum()) == pytest.approx(float((y * c).sum()), rel=1e-9)  # conserved


def _rope(T, dh, theta):
    inv = 1.0 / theta ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    ang = torch.cat([ang, ang], -1)  # [T, dh]: the half-split layout of Llama's rotate_half
    return ang.cos(), ang.sin()


def _rotate_half(x):
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)


def _rotate_half_T(v):
    a, b = v.chunk(2, -1)
    return torch.cat([b, -a], -1)


@pytest.mark.parametrize("layer", [0, 2])
def test_gqa_attention_pattern_rule(llama64, task, layer):
    """Pattern constant, so relevance reaches the input only through values; the value head
    shared by query heads h = G kv .. G kv + G - 1 collects all their gradients."""
    attn = _hf(llama64).layers[layer].self_attn
    H, KV, dh = llama64.n_heads, llama64.n_kv_heads, llama64.d_head
    G = H // KV
    x, y, c, g = _rule_vjp(llama64, task.clean_tokens, f"blocks.{layer}.attn.hook_in",
                           f"blocks.{layer}.attn.hook_out", _upstream(3))
    B, T, _ = x.shape
    # the pattern, from scratch: RoPE on queries and keys, query head h reads key head h // G
    q = (x @ attn.q_proj.weight.T).view(B, T, H, dh).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T).view(B, T, KV, dh).transpose(1, 2)
    v = (x @ attn.v_proj.weight.T).view(B, T, KV, dh).transpose(1, 2)
    cos, sin = _rope(T, dh, llama64.bridge.original_model.config.rope_parameters["rope_theta"])
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    s = (q @ k[:, [h // G for h in range(H)]].transpose(-1, -2)) / dh ** 0.5
    A = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    Wo = attn.o_proj.weight.view(-1, H, dh)  # [d, H, dh]
    z = torch.stack([A[:, h] @ v[:, h // G] for h in range(H)], 1)  # [B, H, T, dh]
    # (tolerances: transformers computes RoPE's cos and sin in float32)
    assert torch.allclose(y, torch.einsum("bhtk,dhk->btd", z, Wo), atol=1e-6 * float(y.abs().max()))
    dz = torch.einsum("btd,dhk->bhtk", c, Wo)
    dv = [sum(A[:, h].transpose(-1, -2) @ dz[:, h] for h in range(G * j, G * j + G)) for j in range(KV)]
    Wv = attn.v_proj.weight.view(KV, dh, -1)
    expect = sum(dv[j] @ Wv[j] for j in range(KV))
    assert torch.allclose(g, expect.detach(), atol=1e-6 * float(expect.abs().max()))
    assert float((x * g).sum()) == pytest.approx(float((y * c).sum()), rel=1e-9)  # conserved


@pytest.mark.parametrize("attention,factor", [("pattern", 1.0), ("attnlrp", 0.5)])
def test_rope_passes_gradients_unchanged(llama64, task, attention, factor):
    """RoPE is a rotation: its backward is the transposed rotation (times the AttnLRP query
    factor 1/2 applied at hook_q; no rule at all under the pattern rule)."""
    dh = llama64.d_head
    x, y, c, g = _rule_vjp(llama64, task.clean_tokens, "blocks.1.attn.hook_q", "blocks.1.attn.hook_rot_q",
                           _upstream(4), attention)
    T = x.shape[1]
    cos, sin = _rope(T, dh, llama64.bridge.original_model.config.rope_parameters["rope_theta"])
    cos, sin = cos[:, None], sin[:, None]  # [T, 1, dh] against [B, T, H, dh]
    assert torch.allclose(y, x * cos + _rotate_half(x) * sin, atol=1e-6 * float(y.abs().max()))  # float32 RoPE
    assert torch.allclose(g, factor * (c * cos + _rotate_half_T(c * sin)), atol=1e-6 * float(g.abs().max()))


# ---- (3) conservation over full cuts


def _relevance_at(model, task, names, final_rule=True):
    """Per-prompt sum of input x gradient at each hook, and the per-prompt metric."""
    hooks = relp_hooks(model)
    with final_norm_rule(model) if final_rule else torch.enable_grad():
        run = forward_for_grads(model, task.clean_tokens, task.metric, names, hooks)
        grads = run.grads()
    B = task.clean_tokens.shape[0]
    # the run differentiates the mean over prompts: scale back to each prompt's own metric
    return {n: (run.acts[n].detach() * grads[n]).flatten(1).sum(1) * B for n in names}, run.per_prompt


def test_relevance_is_conserved_at_every_cut(llama64, task):
    L = llama64.n_layers
    cuts = ["hook_embed"] + [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    rel, metric = _relevance_at(llama64, task, cuts)
    assert metric.abs().min() > 1e-3
    for name, r in rel.items():  # (to float32 precision: the norms compute in float32)
        assert torch.allclose(r, metric, rtol=1e-6, atol=1e-9), (name, r, metric)
    # with the plain gradient at the final norm (scale invariant: it maps its input to ~0) the
    # relevance vanishes instead
    plain, _ = _relevance_at(llama64, task, ["hook_embed"], final_rule=False)
    assert plain["hook_embed"].abs().max() < 1e-2 * metric.abs().min()


def test_relevance_through_norm_and_mlp(llama64, task):
    """resid_mid is read at the second norm's input (where the MLP branch starts); a handle there
    must sit on the rule's path: its relevance is the MLP output's, conserved through norm and MLP."""
    L = llama64.n_layers
    names = [f"blocks.{l}.hook_resid_mid" for l in range(L)] + [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    rel, _ = _relevance_at(llama64, task, names)
    for l in range(L):
        mid, out = rel[f"blocks.{l}.hook_resid_mid"], rel[f"blocks.{l}.hook_mlp_out"]
        assert out.abs().max() > 1e-4 and torch.allclose(mid, out, rtol=1e-6, atol=1e-9), (l, mid, out)


# ---- end to end: cl.patch(method="relp") against a Llama written out with the rules


def _ruled_llama_resids(model, tokens):
    """Residual streams entering each layer and the logits of a from-scratch Llama forward pass
    in which every rule is written into the computation (detached scales, ratio and pattern)."""
    hf, cfg = _hf(model), model.bridge.original_model.config
    H, KV, dh = model.n_heads, model.n_kv_heads, model.d_head
    G = H // KV
    B, T = tokens.shape
    cos, sin = _rope(T, dh, cfg.rope_parameters["rope_theta"])
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)

    def norm(x, mod):
        return x / _rms_scale(x, mod).detach() * mod.weight

    x, resids = hf.embed_tokens.weight[tokens].requires_grad_(True), []
    for blk in hf.layers:
        resids.append(x)
        a = blk.self_attn
        h = norm(x, blk.input_layernorm)
        q = (h @ a.q_proj.weight.T).view(B, T, H, dh).transpose(1, 2)
        k = (h @ a.k_proj.weight.T).view(B, T, KV, dh).transpose(1, 2)
        v = (h @ a.v_proj.weight.T).view(B, T, KV, dh).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        s = (q @ k[:, [i // G for i in range(H)]].transpose(-1, -2)) / dh ** 0.5
        A = s.masked_fill(causal, float("-inf")).softmax(-1).detach()
        z = (A @ v[:, [i // G for i in range(H)]]).transpose(1, 2).reshape(B, T, H * dh)
        x = x + z @ a.o_proj.weight.T
        m = blk.mlp
        h = norm(x, blk.post_attention_layernorm)
        gate, up = h @ m.gate_proj.weight.T, h @ m.up_proj.weight.T
        act = gate * torch.sigmoid(gate)
        ratio = torch.where(gate == 0, torch.full_like(gate, 0.5), act / gate).detach()
        hid = 0.5 * (gate * ratio * up.detach() + act.detach() * up)
        x = x + hid @ m.down_proj.weight.T
    logits = norm(x, hf.norm) @ model.bridge.original_model.lm_head.weight.T
    return resids, logits


def test_relp_matches_rules_written_out(llama64, task):
    roles = ["IO", "S1", "S2", "END"]
    got = cl.patch(llama64, task, "resid_pre", method="relp", positions=roles)
    B = task.clean_tokens.shape[0]
    b, end = torch.arange(B), task.lengths - 1
    with torch.enable_grad():
        base, logits = _ruled_llama_resids(llama64, task.corrupt_tokens)  # denoising: corrupt run
        ld = (logits[b, end, task.answer_ids] - logits[b, end, task.wrong_ids]).mean()
        grads = torch.autograd.grad(ld, base)
    with torch.no_grad():
        src, _ = _ruled_llama_resids(llama64, task.clean_tokens)
    for l in range(llama64.n_layers):
        for role in roles:
            p = task.role_positions(role)
            expect = float(((src[l] - base[l])[b, p] * grads[l][b, p]).sum())
            assert float(got.values[l, roles.index(role)]) == pytest.approx(expect, rel=1e-5, abs=1e-9), (l, role)
    atp = cl.patch(llama64, task, "resid_pre", method="atp", positions=roles)
    assert (atp.values - got.values).abs().max() > 1e-3 * got.values.abs().max()  # the rules matter
