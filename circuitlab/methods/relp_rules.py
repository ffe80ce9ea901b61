"""LRP propagation rules installed at hook points of an already-loaded model (for RelP).

Every rule has the form ``backward_rule(y, s)``: the forward value is the model's own output
``y`` (bit-identical), the backward pass is the gradient of a surrogate ``s``:

- norms (LN-rule): the normaliser is a constant, s = (x - mean) / scale.detach() * w + b
  (RMSNorm: no mean). The final norm is applied to the read positions after the run's hooks
  are gone, so its rule is attached for a whole computation by :func:`final_norm_rule`;
  without it the final norm would pass its plain gradient, which is orthogonal to its input
  (a norm is scale invariant), so input x gradient at every cut would sum to ~0 instead of
  the output;
- activations (identity rule): s = x * (act(x) / x).detach();
- gated products act(gate) * up (half rule): each factor gets half the gradient;
- attention, ``attention="pattern"`` (CP-LRP / AH rule): the pattern is a constant, so query
  and key nodes get no attribution and are refused; ``attention="attnlrp"``: gradients through
  the pattern and the values are halved (A V product) and through queries and keys halved
  again (q k product), keeping the softmax gradient. RoPE is linear and gets the plain
  gradient; under grouped-query attention a shared key/value head sums the gradients of the
  query heads that read it, as any input read twice does;
- linear maps: the plain gradient (LRP-0).

Rules are chosen when a run starts, from the model's adapter (its norms, MLP activation and
gating), so enabling RelP after loading works (a pitfall of the reference fork).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from circuitlab.engine.gradients import backward_rule
from circuitlab.engine.hooks import scoped_hooks
from circuitlab.engine.sites import hook_name

ATTENTION_RULES = ("pattern", "attnlrp")


def _ln_rule(adapter, norm: str, layer=None) -> list:
    """LN-rule at one norm: its forward output, the gradient with the normaliser held constant.

    The input is read back as normalized * scale at the norm's own inner hooks, which fire after
    every hook on ``hook_in``: a differentiable handle placed there later (the resid_mid site
    is the second norm's input) then stays on the path that carries the rule's gradient."""
    p = adapter.norm(norm, layer)
    state = {}

    def take_scale(scale):
        state["scale"] = scale

    def take_normalized(n):
        state["n"] = n

    def rule(y):
        n, scale = state.pop("n"), state.pop("scale")
        centred = n * scale  # (x - mean) for LayerNorm, x for RMSNorm, connected to the input
        s = centred.float() / scale.detach().float()
        if p.weight is not None:
            s = s * p.weight.float()
        if p.bias is not None:
            s = s + p.bias.float()
        return backward_rule(y, s.to(y.dtype))

    return [(hook_name(f"{norm}.scale", layer), take_scale), (hook_name(f"{norm}.normalized", layer), take_normalized),
            (hook_name(f"{norm}.out", layer), rule)]


def norm_rule_hooks(model) -> list:
    """The LN-rule at every norm inside the blocks (the final norm: :func:`final_norm_rule`)."""
    return [h for norm, layer in model.adapter.norms() for h in _ln_rule(model.adapter, norm, layer)]


def _ratio(y, x):
    safe = torch.where(x.abs() > 1e-6, x, torch.ones_like(x))
    return torch.where(x.abs() > 1e-6, y / safe, torch.full_like(x, 0.5)).detach()


def _mlp_hooks(model, layer: int):
    act = model.adapter.activation(layer)
    pre, post, up = (hook_name(p, layer) for p in ("mlp_pre", "neurons", "mlp_pre_linear"))
    state = {}
    if model.adapter.gated_mlp:  # hook_post = act(gate) * up
        def take_gate(x):
            state["g"] = x

        def take_up(x):
            state["u"] = x

        def rule(y):
            g, u = state.pop("g"), state.pop("u")
            a = act(g)
            a_s = g * _ratio(a, g)  # identity rule on the activation
            s = 0.5 * (a_s * u.detach() + a.detach() * u)  # half rule on the product
            return backward_rule(y, s)

        return [(pre, take_gate), (up, take_up), (post, rule)]

    def take_pre(x):
        state["x"] = x

    def rule_act(y):
        x = state.pop("x")
        return backward_rule(y, x * _ratio(y, x))

    return [(pre, take_pre), (post, rule_act)]


def _scale_grad(factor: float):
    def fn(y):
        return backward_rule(y, y * factor)

    return fn


def relp_hooks(model, attention: str = "pattern") -> list:
    """Forward hooks implementing the rules on ``model`` (see module docstring)."""
    if attention not in ATTENTION_RULES:
        raise ValueError(f"unknown attention rule {attention!r}; choose from {ATTENTION_RULES}")
    hooks = norm_rule_hooks(model)  # the final norm: see final_norm_rule
    for l in range(model.n_layers):
        hooks += _mlp_hooks(model, l)
        if attention == "pattern":
            hooks.append((hook_name("pattern", l), lambda y: y.detach()))
        else:
            hooks += [(hook_name(p, l), _scale_grad(0.5)) for p in ("pattern", "v", "q", "k")]
    return hooks


@contextlib.contextmanager
def final_norm_rule(model) -> Iterator[None]:
    """The LN-rule at the final norm for everything run inside the block (forward values
    unchanged). Use it around any computation that reads logits under :func:`relp_hooks`."""
    bridge = model.bridge
    hooks = _ln_rule(model.adapter, "ln_final") if hook_name("ln_final.scale") in bridge.hook_dict else []
    with scoped_hooks(bridge, hooks):
        yield
