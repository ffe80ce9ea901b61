"""Integrated gradients (Sundararajan et al.; EAP-IG), two variants.

IG(n) = (n(x_source) - n(x_base)) . mean over alpha in {1/m, ..., 1} of dL/dn at the
interpolated point. ``variant="inputs"`` (EAP-IG-inputs) interpolates the token embeddings:
m forward+backward passes for all nodes at once. ``variant="activations"`` interpolates one
site's activations (all positions) at a time: m passes per layer of the site family.
Completeness (the values summing to L(source) - L(base)) holds over a full cut, e.g. the
residual stream at one layer over all positions, as m grows. The m steps run as batched copies.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.gradients import forward_for_grads
from circuitlab.methods.attribution import make_result, node_values, prepare, reduce_to_nodes
from circuitlab.result import Result

VARIANTS = ("inputs", "activations")


def _alphas(steps: int, B: int, device) -> torch.Tensor:
    return (torch.arange(1, steps + 1, device=device, dtype=torch.float32) / steps).repeat_interleave(B)


def _interpolate(base_act: torch.Tensor, src_act: torch.Tensor, alphas: torch.Tensor):
    copies = alphas.shape[0] // base_act.shape[0]

    def fn(x):
        b, s = base_act.repeat(copies, *([1] * (base_act.dim() - 1))), src_act.repeat(copies, *([1] * (src_act.dim() - 1)))
        a = alphas.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return b + a * (s - b)

    return fn


def ig(model, task, sites: str = "resid_pre", direction: str = "denoising",
       positions: Optional[Sequence[int | str]] = None, layers: Optional[Sequence[int]] = None,
       steps: int = 16, variant: str = "inputs", **_) -> Result:
    if variant not in VARIANTS:
        raise ValueError(f"unknown IG variant {variant!r}; choose from {VARIANTS}")
    t0 = time.perf_counter()
    base, src, grid = prepare(model, task, sites, direction, positions, layers)
    hooks = sorted({n.hook for n in grid.nodes})
    B = base.shape[0]
    alphas = _alphas(steps, B, base.device)
    names = hooks + ["hook_embed"] if variant == "inputs" else hooks
    src_acts = capture(model, src, names)
    base_acts = capture(model, base, names)
    grads_sum: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        base_value = float(task.metric.reduce(_per_prompt(model, base, task)[None])[0])
    if variant == "inputs":
        interp = _interpolate(base_acts["hook_embed"], src_acts["hook_embed"], alphas)
        run = forward_for_grads(model, base, task.metric, hooks, extra_hooks=[("hook_embed", interp)], copies=steps)
        g = run.grads()
        grads_sum = {h: g[h].view(steps, B, *g[h].shape[1:]).sum(0) for h in hooks}
        passes = 1
    else:
        passes = 0
        for h in hooks:
            interp = _interpolate(base_acts[h], src_acts[h], alphas)
            run = forward_for_grads(model, base, task.metric, [h], extra_hooks=[(h, interp)], copies=steps)
            g = run.grads()[h]
            grads_sum[h] = g.view(steps, B, *g.shape[1:]).sum(0)
            passes += 1
    scores = {h: reduce_to_nodes(grid.family, (src_acts[h] - base_acts[h]) * grads_sum[h] / steps) for h in hooks}
    values = node_values(grid.nodes, scores, task.roles, B)
    fwd = steps * passes + 3
    return make_result(grid, values, "ig", sites, direction, task, base_value, t0, fwd, steps * passes,
                       meta={"variant": variant, "steps": steps, "forward_passes_note": "forward-pass equivalents (steps run as batched copies)"})


def _per_prompt(model, tokens, task):
    from circuitlab.engine.forward import metric_per_prompt

    return metric_per_prompt(model, tokens, task.metric)
