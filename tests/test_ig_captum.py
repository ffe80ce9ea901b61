"""Integrated gradients against Captum on tiny float64 GPT-2 and Llama models.

The reference side never touches circuitlab's engine: a second Hugging Face model is loaded from
the same folder, the metric (logit difference at each prompt's last token) comes from its plain
forward pass on ``inputs_embeds``, and Captum hooks the bare modules that carry each site: the
block input (resid_pre, through an identity module), the attention output projection's output
(attn_out) and input (the heads' z vectors, summed per head), and the MLP's output (mlp_out).

- variant="inputs" interpolates the token embeddings from the base to the source prompt.
  Captum's InternalInfluence integrates the gradient at a layer along exactly that path; the
  node value is that integral times the layer's activation difference (LayerActivation).
- variant="activations" runs the base prompt with one site interpolated: IG of the metric as a
  function of the site's value. The reference is InternalInfluence at an identity module in
  front of the site; Captum's IntegratedGradients gives the same, and so does
  LayerIntegratedGradients run the other way round (it runs its *input* prompt and interpolates
  from its baseline's activation, so inputs=base, baselines=source gives minus the value with
  the rule mirrored: alpha -> 1 - alpha turns right into left).

Precision: Captum builds step sizes and Riemann nodes in torch's default dtype, so it runs here
under a float64 default; IntegratedGradients and LayerIntegratedGradients still round the step
sizes to float32 (exact for 1/4, not for Gauss-Legendre weights), so they are held to 1e-7 where
that rounding is not exact. Hugging Face's Llama keeps float32 steps inside a float64 model;
float64_throughout turns them off on both sides. The rest agrees to 1e-16 (asserted: 1e-10).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import circuitlab as cl
from circuitlab.methods.ig import RULES, quadrature

captum_attr = pytest.importorskip("captum.attr")

CAPTUM_METHOD = {"right": "riemann_right", "left": "riemann_left", "midpoint": "riemann_middle",
                 "trapezoid": "riemann_trapezoid", "gauss-legendre": "gausslegendre"}
MIRROR = {"right": "left", "left": "right", "midpoint": "midpoint", "trapezoid": "trapezoid",
          "gauss-legendre": "gauss-legendre"}
FAMILIES = ("resid_pre", "attn_out", "mlp_out", "heads")
TOL = 1e-10


@pytest.fixture(scope="module")
def models(tiny_dir, ioi_pairs):
    """arch -> (circuitlab model, bare HF model, task), both models float64 from one folder."""
    from transformers import AutoModelForCausalLM

    out = {}

    def get(arch: str):
        if arch not in out:
            folder = str(tiny_dir(arch))
            m = cl.load(folder, device="cpu", dtype=torch.float64)
            hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, attn_implementation="eager").eval()
            add_resid_pre_probes(hf)
            pairs = [ioi_pairs[0], ioi_pairs[2]]  # the second is a token shorter: right padding
            out[arch] = (m, hf, cl.tasks.from_pairs(m, pairs))
        return out[arch]

    with float64_throughout():
        yield get


@contextlib.contextmanager
def float64_throughout():
    """Hugging Face's Llama rounds to float32 inside RMSNorm and the attention softmax even in a
    float64 model (TransformerLens' attention does the same softmax), in the backward pass too.
    Two computations of one quantity with differently laid out batches then differ by float32
    rounding (1e-8 here). While this is active both sides keep float64 throughout."""
    from transformers.models.llama import modeling_llama

    norm, softmax = modeling_llama.LlamaRMSNorm, torch.nn.functional.softmax

    def norm_forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def softmax_keeping_float64(x, dim=None, _stacklevel=3, dtype=None):
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)

    original = norm.forward
    norm.forward, torch.nn.functional.softmax = norm_forward, softmax_keeping_float64
    try:
        yield
    finally:
        norm.forward, torch.nn.functional.softmax = original, softmax


@contextlib.contextmanager
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def body(hf):
    return hf.transformer if hasattr(hf, "transformer") else hf.model


def blocks(hf):
    return body(hf).h if hasattr(body(hf), "h") else body(hf).layers


def add_resid_pre_probes(hf) -> None:
    """An identity module at each block's input: the residual stream entering the block as one
    module's output (the block itself also takes masks and caches, which Captum cannot hook)."""
    for blk in blocks(hf):
        blk.resid_pre_probe = torch.nn.Identity()
        blk.register_forward_pre_hook(lambda mod, args: (mod.resid_pre_probe(args[0]),) + tuple(args[1:]))


def site_module(hf, family: str, layer: int) -> tuple[torch.nn.Module, bool]:
    """(module, True if the site is the module's input else its output)."""
    blk = blocks(hf)[layer]
    out_proj = blk.attn.c_proj if hasattr(blk, "attn") else blk.self_attn.o_proj
    return {"resid_pre": (blk.resid_pre_probe, False), "attn_out": (out_proj, False), "mlp_out": (blk.mlp, False),
            "heads": (out_proj, True)}[family]


def embeddings(hf, tokens: torch.Tensor) -> torch.Tensor:
    return hf.get_input_embeddings()(tokens).detach()


def logit_diff_fn(hf, task):
    """embeds [rows, T, d] -> logit(answer) - logit(wrong) per row; rows cycle over the prompts
    (Captum stacks the steps as [step0 prompts, step1 prompts, ...])."""
    last, ans, wrong = task.lengths - 1, task.answer_ids, task.wrong_ids
    B = len(last)

    def f(embeds):
        logits = hf(inputs_embeds=embeds).logits
        r = torch.arange(embeds.shape[0]) % B
        lg = logits[torch.arange(embeds.shape[0]), last[r]]
        return lg.gather(1, ans[r][:, None])[:, 0] - lg.gather(1, wrong[r][:, None])[:, 0]

    return f


def base_source(task, direction):
    return (
        (task.corrupt_tokens, task.clean_tokens)
        if direction == "denoising"
        else (task.clean_tokens, task.corrupt_tokens)
    )


def to_nodes(family: str, scores: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Per-element scores [B, T, d] -> node values averaged over prompts ([T] or [T, heads])."""
    if family == "heads":
        scores = scores.view(*scores.shape[:2], n_heads, -1)
    return scores.sum(-1).mean(0)


def captum_ig(hf, task, family: str, layer: int, variant: str, rule: str, steps: int, direction: str):
    """(reference per-element scores [B, T, d], {name: other Captum routes to the same scores}).

    The reference integrates with InternalInfluence, which keeps Captum's float64 step sizes;
    IntegratedGradients and LayerIntegratedGradients round the step sizes to float32."""
    base, src = base_source(task, direction)
    module, on_input = site_module(hf, family, layer)
    f = logit_diff_fn(hf, task)
    e_base, e_src = embeddings(hf, base), embeddings(hf, src)
    method = CAPTUM_METHOD[rule]
    with float64_default():
        act = captum_attr.LayerActivation(f, module)
        a_base = act.attribute(e_base, attribute_to_layer_input=on_input)
        a_src = act.attribute(e_src, attribute_to_layer_input=on_input)
        if variant == "inputs":
            mean_grad = captum_attr.InternalInfluence(f, module).attribute(
                e_src, baselines=e_base, n_steps=steps, method=method, attribute_to_layer_input=on_input)
            return (a_src - a_base) * mean_grad, {}
        entry = torch.nn.Identity()
        g = _with_site(f, module, on_input, e_base, entry)
        mean_grad = captum_attr.InternalInfluence(g, entry).attribute(
            a_src, baselines=a_base, n_steps=steps, method=method
        )
        others = {
            "IntegratedGradients": captum_attr.IntegratedGradients(g).attribute(
                a_src, baselines=a_base, n_steps=steps, method=method),
            "-LayerIntegratedGradients(inputs=base, baselines=source, mirrored rule)":
                -captum_attr.LayerIntegratedGradients(f, module).attribute(
                    e_base, baselines=e_src, n_steps=steps, method=CAPTUM_METHOD[MIRROR[rule]],
                    attribute_to_layer_input=on_input),
        }
    return (a_src - a_base) * mean_grad, others


def _with_site(f, module, on_input: bool, e_run: torch.Tensor, entry: torch.nn.Module):
    """value -> f on the ``e_run`` prompts with the site replaced by ``entry(value)`` (batched
    copies; ``entry`` is an identity module for Captum to hook)."""

    def g(value):
        value = entry(value)
        if on_input:
            handle = module.register_forward_pre_hook(lambda mod, args: (value,) + tuple(args[1:]))
        else:
            handle = module.register_forward_hook(lambda mod, args, out: value)
        try:
            return f(e_run.repeat(value.shape[0] // e_run.shape[0], 1, 1))
        finally:
            handle.remove()

    return g


def captum_scale(rule: str, steps: int) -> float:
    """Captum's riemann_trapezoid puts step sizes 1/m (ends 1/2m) on nodes 1/(m-1) apart, so its
    weights sum to (m-1)/m; circuitlab's trapezoid weights sum to 1."""
    return (steps - 1) / steps if rule == "trapezoid" else 1.0


def float32_exact(rule: str, steps: int) -> bool:
    w = quadrature(rule, steps)[1] * captum_scale(rule, steps)
    return torch.equal(w.float().double(), w)


def compare(family, layer, ours, hf, task, variant, rule, steps, direction, n_heads):
    ref, others = captum_ig(hf, task, family, layer, variant, rule, steps, direction)
    scale = captum_scale(rule, steps)
    assert_matches(ours * scale, to_nodes(family, ref, n_heads))
    for name, other in others.items():  # float32 step sizes: exact for 1/4, 1/8; else 6e-8 relative
        tol = TOL if float32_exact(rule, steps) else 1e-7
        assert_matches(ours * scale, to_nodes(family, other, n_heads), tol, name)


def assert_matches(ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL, name: str = "InternalInfluence"):
    scale = max(1.0, float(ref.abs().max()))
    err = float((ours - ref).abs().max())
    assert err <= tol * scale, f"max |circuitlab - captum {name}| = {err:.3g} (scale {scale:.3g})"
    assert float(ref.abs().max()) > 1e-3  # the comparison is not between zeros


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", ["inputs", "activations"])
@pytest.mark.parametrize("arch, direction", [("gpt2", "denoising"), ("llama", "noising")])
def test_ig_matches_captum_at_each_site(models, arch, direction, variant, family):
    """Every position (and head) of the middle layer, Gauss-Legendre (non-equal weights)."""
    m, hf, task = models(arch)
    steps, rule, layer = 4, "gauss-legendre", 1
    r = cl.patch(m, task, family, direction=direction, method="ig", variant=variant, steps=steps, rule=rule,
                 layers=[layer])
    assert r.values.dtype == torch.float64
    compare(family, layer, r.values[0], hf, task, variant, rule, steps, direction, m.n_heads)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("variant", ["inputs", "activations"])
def test_ig_rules_match_captum_methods(models, variant, rule):
    m, hf, task = models("gpt2")
    steps, layer = 4, 1
    r = cl.patch(m, task, "heads", method="ig", variant=variant, steps=steps, rule=rule, layers=[layer])
    compare("heads", layer, r.values[0], hf, task, variant, rule, steps, "denoising", m.n_heads)


def test_default_rule_is_right_riemann(models):
    m, _, task = models("gpt2")
    a = cl.patch(m, task, "mlp_out", method="ig", steps=4, layers=[0])
    b = cl.patch(m, task, "mlp_out", method="ig", steps=4, rule="right", layers=[0])
    assert torch.equal(a.values, b.values) and a.meta["rule"] == "right"


def test_quadrature_nodes_and_weights():
    for rule in RULES:
        for m in (2, 3, 7):
            a, w = quadrature(rule, m)
            assert a.dtype == w.dtype == torch.float64 and a.shape == w.shape == (m,)
            assert abs(float(w.sum()) - 1) < 1e-15 and float(a.min()) >= 0 and float(a.max()) <= 1
    assert quadrature("right", 4)[0].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert quadrature("left", 4)[0].tolist() == [0.0, 0.25, 0.5, 0.75]
    assert quadrature("midpoint", 4)[0].tolist() == [0.125, 0.375, 0.625, 0.875]
    # Gauss-Legendre with m nodes integrates t^(2m-1) on [0, 1] exactly; the right rule does not
    a, w = quadrature("gauss-legendre", 3)
    assert abs(float((w * a**5).sum()) - 1 / 6) < 1e-15
    a, w = quadrature("right", 3)
    assert abs(float((w * a**5).sum()) - 1 / 6) > 0.01


@pytest.mark.parametrize("kwargs, match", [
    (dict(rule="simpson"), "unknown IG rule 'simpson'; choose from right, left, midpoint, trapezoid, gauss-legendre"),
    (dict(rule="riemann_right"), "choose from right, left"),
    (dict(steps=0), "steps >= 1"),
    (dict(steps=-3), "steps >= 1"),
    (dict(steps=2.5), "whole number of steps"),
    (dict(steps=1, rule="trapezoid"), "trapezoid rule needs steps >= 2"),
])
def test_bad_rule_or_steps_raise(gpt2, ioi_pairs, kwargs, match):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs[:1])
    with pytest.raises(ValueError, match=match):
        cl.patch(gpt2, task, "resid_pre", method="ig", **kwargs)
