"""Every model-family adapter, checked on a tiny random model of its family against the model's
own forward pass (patterns, neurons, norms, projections, logits) and against the bridge's and
Hugging Face's own description of the model. A new family adds its adapter module and one entry
to BUILDERS."""

from __future__ import annotations

import pytest
import torch

import circuitlab as cl
from circuitlab.engine.cache import capture
from circuitlab.engine.forward import final_logits, run_to_final
from circuitlab.engine.sites import hook_name, parse_hook
from circuitlab.methods import qk_fix
from circuitlab.models.adapters import Adapter, adapter_class, families, register
from circuitlab.models.adapters.generic import Generic
from test_gemma3 import save_tiny_gemma3

BUILDERS = {
    "gpt2": "gpt2",
    "llama": "llama",
    "qwen2": "qwen2",
    "gemma2": "gemma2",
    "gpt_neox": "neox",
    "gemma3": save_tiny_gemma3,
}
"""Family -> its architecture in tests/tiny.py, or a function writing a tiny random model of it
into a folder."""


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def model(request, tiny_model, tmp_path_factory):
    build = BUILDERS[request.param]
    if isinstance(build, str):
        return tiny_model(build)  # shared with the other test modules
    return cl.load(str(build(tmp_path_factory.mktemp(request.param))), device="cpu")


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(2, 100, (2, 9), generator=g)


def test_every_registered_family_has_a_tiny_model():
    assert set(families()) == set(BUILDERS)


def test_the_registered_adapter_is_attached(model):
    a = model.adapter
    assert isinstance(a, Adapter) and not isinstance(a, Generic)
    assert model.bridge.original_model.config.model_type in a.model_types
    assert model.norm == a.norm_kind and model.post_attn_norm == a.post_attn_norm
    assert model.parallel_attn_mlp == a.parallel_attn_mlp


def test_facts_agree_with_the_bridge_and_config(model):
    a, b, cfg = model.adapter, model.bridge, model.bridge.original_model.config
    assert (a.positional_embedding == "learned") == (b.cfg.positional_embedding_type == "standard")
    assert a.norm_kind == ("RMS" if "RMS" in str(b.cfg.normalization_type).upper() else "LN")
    assert a.parallel_attn_mlp == bool(b.cfg.parallel_attn_mlp)
    assert a.gated_mlp == (hook_name("mlp_pre_linear", 0) in b.hook_dict)
    assert a.logit_softcap == getattr(cfg, "final_logit_softcapping", None)
    in_hooks = [parse_hook(k) for k in b.hook_dict if k.endswith(".hook_scale")]
    assert [p for p in in_hooks if p is not None] == [(f"{n}.scale", l) for n, l in a.norms(include_final=True)]
    assert len(in_hooks) == len(a.norms(include_final=True))  # every norm is one the adapter names


def test_answers_equal_the_generic_probes(model):
    """Registered families state what the probes found before adapters existed: same numbers."""
    a, g = model.adapter, Generic(model.bridge)
    for fact in ("positional_embedding", "norm_kind", "block_norms", "gated_mlp", "parallel_attn_mlp",
                 "post_attn_norm", "logit_softcap"):
        assert getattr(a, fact) == getattr(g, fact), fact
    for l in range(model.n_layers):
        assert qk_fix.score_rule(model, l) == qk_fix.ScoreRule(g.attn_scale(l), g.attn_softcap(l), g.sliding_window(l))
        assert a.activation(l) is g.activation(l)
        if model.adapter.family != "gpt_neox":  # see test_neox_has_no_rotated_queries
            assert a.qk_points(l) == g.qk_points(l)
        assert a.dense_mlp_slot(l) == g.dense_mlp_slot(l)
    for name, layer in a.norms(include_final=True):
        p, q = a.norm(name, layer), g.norm(name, layer)
        assert (p.eps, p.rms) == (q.eps, q.rms) and torch.equal(p.weight, q.weight)
        assert (p.bias is None and q.bias is None) or torch.equal(p.bias, q.bias)


def test_attention_rule_reproduces_every_pattern(model, tokens):
    """softmax(rule(q, k)) from the adapter's scale, soft-cap and window is the model's pattern."""
    if model.adapter.family == "gpt_neox":
        pytest.skip("no rotated queries and keys to read (test_neox_has_no_rotated_queries)")
    L = model.n_layers
    names = [n for l in range(L) for n in qk_fix.rotated_names(model, l)] + [hook_name("pattern", l) for l in range(L)]
    c = capture(model, tokens, names)
    for l in range(L):
        q, k = (c[n] for n in qk_fix.rotated_names(model, l))
        k = k.repeat_interleave(q.shape[2] // k.shape[2], 2)
        rule = qk_fix.score_rule(model, l)
        S = qk_fix._logits(rule, q, k)
        S = S.masked_fill(~qk_fix.visible(tokens.shape[1], "cpu", rule.window), float("-inf"))
        torch.testing.assert_close(S.softmax(-1), c[hook_name("pattern", l)], atol=1e-5, rtol=1e-4)


def test_activation_and_gating_reproduce_the_neurons(model, tokens):
    a = model.adapter
    points = ("mlp_pre", "neurons") + (("mlp_pre_linear",) if a.gated_mlp else ())
    c = capture(model, tokens, [hook_name(p, l) for l in range(model.n_layers) for p in points])
    for l in range(model.n_layers):
        post = a.activation(l)(c[hook_name("mlp_pre", l)])
        if a.gated_mlp:
            post = post * c[hook_name("mlp_pre_linear", l)]
        torch.testing.assert_close(post, c[hook_name("neurons", l)], atol=1e-5, rtol=1e-5)


def test_norm_params_reproduce_every_norm(model, tokens):
    norms = model.adapter.norms(include_final=True)
    c = capture(model, tokens, [hook_name(f"{n}.{p}", l) for n, l in norms for p in ("in", "out")])
    for n, l in norms:
        p = model.adapter.norm(n, l)
        x = c[hook_name(f"{n}.in", l)].float()
        if not p.rms:
            x = x - x.mean(-1, keepdim=True)
        y = x / (x.pow(2).mean(-1, keepdim=True) + p.eps).sqrt() * p.weight.float()
        if p.bias is not None:
            y = y + p.bias.float()
        torch.testing.assert_close(y, c[hook_name(f"{n}.out", l)].float(), atol=1e-4, rtol=1e-4, msg=f"{n} {l}")


def test_norm_functions_are_the_model_s_own(model, tokens):
    """Applying a norm function to a norm's input gives what the model computed (to float
    rounding: the bridge's norm hooks compute the norm in steps of their own)."""
    norms = model.adapter.norms(include_final=True)
    c = capture(model, tokens, [hook_name(f"{n}.{p}", l) for n, l in norms for p in ("in", "out")])
    with torch.no_grad():
        for n, l in norms:
            out = model.adapter.norm_function(n, l)(c[hook_name(f"{n}.in", l)])
            torch.testing.assert_close(out, c[hook_name(f"{n}.out", l)], atol=1e-5, rtol=1e-5, msg=f"{n} {l}")


def test_context_length(model):
    assert model.adapter.context_length == 64  # every tiny model's position table (tests/tiny.py, test_gemma3.py)


def test_positional_embedding_kind(model):
    """A learned position vector makes one token's embedding differ by position; rotary adds none."""
    same = torch.full((1, 4), 7)
    first = capture(model, same, [hook_name("resid_pre", 0)])[hook_name("resid_pre", 0)][0]
    moves = not torch.allclose(first[0], first[3])
    assert moves == (model.adapter.positional_embedding == "learned")


def test_weights_reproduce_the_projections(model, tokens):
    """ln1 output W + b is q, k, v for every head (key/value heads under GQA)."""
    a = model.adapter
    c = capture(model, tokens, [hook_name(p, l) for l in range(model.n_layers) for p in ("ln1.out", "q", "k", "v")])
    for kind in "QKV":
        W, b = a.weight(f"W_{kind}"), a.weight(f"b_{kind}")
        assert W.shape[1] == model.heads_in(kind.lower())
        for l in range(model.n_layers):
            y = torch.einsum("btd,hde->bthe", c[hook_name("ln1.out", l)], W[l]) + (0 if b is None else b[l])
            torch.testing.assert_close(y, c[hook_name(kind.lower(), l)], atol=1e-5, rtol=1e-5)


def test_dense_mlp_is_position_wise(model):
    owner, attr = model.adapter.dense_mlp_slot(model.n_layers - 1)
    mlp = getattr(owner, attr)
    x = torch.randn(2, 6, model.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(mlp(x[:, [1, 4]]), mlp(x)[:, [1, 4]])


def test_final_logits_with_the_soft_cap_are_the_models(model, tokens):
    with torch.no_grad():
        ours = final_logits(model, run_to_final(model, tokens))
        theirs = model.bridge.original_model(tokens).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_unknown_family_gets_the_generic_adapter():
    assert adapter_class("no_such_model_type") is Generic
    assert adapter_class("gemma3_text").family == "gemma3"


def test_register_refuses_a_claimed_model_type():
    families()  # every family module imported, so 'llama' is claimed

    class Clash(Adapter):
        family = "clash"
        model_types = ("llama",)

    with pytest.raises(ValueError, match="claimed by both"):
        register(Clash)

    class Nameless(Adapter):
        model_types = ("x",)

    with pytest.raises(ValueError, match="family name"):
        register(Nameless)


def test_norm_module_names_the_norms_a_family_has(tiny_model):
    with pytest.raises(ValueError, match="no norm 'ln1_post'.*ln1, ln2, ln_final"):
        tiny_model("gpt2").adapter.norm("ln1_post", 0)


def test_neox_has_no_rotated_queries(tiny_model):
    """The bridge never fires hook_rot_q for GPT-NeoX: the adapter says so instead of naming a
    hook that stays empty; its scale is the module's d_head**-0.5."""
    m = tiny_model("neox")
    with pytest.raises(NotImplementedError, match="QK fix cannot score"):
        qk_fix.rotated_names(m, 0)
    with pytest.raises(RuntimeError, match="never fired"):
        capture(m, torch.zeros(1, 3, dtype=torch.long), [hook_name("rot_q", 0)])
    assert m.adapter.attn_scale(0) == m.d_head ** -0.5
