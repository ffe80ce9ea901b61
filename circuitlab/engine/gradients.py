"""Gradients of a metric at any sites from one forward and one backward pass.

Each requested site's activation is replaced in the forward pass by an identical tensor (a
view) that autograd can differentiate with respect to; forward values do not change. Methods
that change the backward pass (RelP rules, GradDrop gates, frozen attention) pass extra hooks
built with :func:`backward_rule`, whose forward output is bit-identical to the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch

from circuitlab.engine.forward import final_logits, gather_positions, run_to_final
from circuitlab.engine.sites import hook_name


def backward_rule(y: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``y`` in the forward pass, the gradient of ``surrogate`` in the backward pass.

    ``surrogate - surrogate.detach()`` is exactly zero, so the output is bit-identical to y.
    """
    return y.detach() + (surrogate - surrogate.detach())


@dataclass
class GradGates:
    """Multipliers applied to the gradient flowing through named hooks, read at backward time
    (so one forward pass serves several backward passes with different gates: GradDrop)."""

    scale: dict[str, float] = field(default_factory=dict)

    def hooks(self, names: Iterable[str]):
        out = []
        for name in names:
            def fn(x, name=name):
                if not x.requires_grad:
                    return None
                y = x.view_as(x)
                y.register_hook(lambda g, name=name: g * self.scale[name] if self.scale.get(name, 1.0) != 1.0 else None)
                return y

            out.append((name, fn))
        return out


@dataclass
class GradRun:
    """A forward pass kept alive for one or more backward passes."""

    value: torch.Tensor
    """The reported metric (scalar) as a differentiable tensor."""
    per_prompt: torch.Tensor
    acts: dict[str, torch.Tensor]
    """Activations at the requested sites (forward values)."""

    def grads(self, retain: bool = False) -> dict[str, torch.Tensor]:
        names = list(self.acts)
        gs = torch.autograd.grad(self.value, [self.acts[n] for n in names], retain_graph=retain, allow_unused=True)
        return {n: (g if g is not None else torch.zeros_like(self.acts[n])).detach() for n, g in zip(names, gs)}


def forward_for_grads(
    model,
    tokens: torch.Tensor,
    metric,
    names: Sequence[str],
    extra_hooks: Iterable = (),
    embed_hook: Optional[Callable] = None,
    copies: int = 1,
) -> GradRun:
    """Run ``tokens`` with a differentiable handle on each hook in ``names``.

    With ``copies`` > 1 the batch holds that many copies of the prompts (e.g. integrated-
    gradient steps); the differentiated value is the sum of each copy's reported metric."""
    acts: dict[str, torch.Tensor] = {}

    def make(name):
        def fn(x):
            y = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
            acts[name] = y
            return y

        return fn

    hooks = list(extra_hooks) + [(n, make(n)) for n in dict.fromkeys(names)]
    if embed_hook is not None:
        hooks = [(hook_name("embed"), embed_hook)] + hooks
    B = tokens.shape[0]
    rows = torch.arange(B, device=tokens.device).repeat(copies)
    with torch.enable_grad():
        resid = run_to_final(model, tokens.repeat(copies, 1), hooks)
        logits = final_logits(model, gather_positions(resid, metric.positions, rows))
        per_prompt = metric.per_prompt(logits, rows)
        value = metric.finish(per_prompt.view(copies, B).mean(1)).sum()
    missing = [n for n in names if n not in acts]
    if missing:
        raise RuntimeError(f"hooks never fired: {missing}")
    return GradRun(value, per_prompt.detach(), acts)
