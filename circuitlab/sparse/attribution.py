"""Patching and attributing to coder latents: exact patching and AtP on ``latents`` nodes.

The coders are spliced into the model with their error term (``circuitlab.sparse.splice``),
so the unpatched model is unchanged and each latent is a node ``Node(l, 'latents', unit=i)``
(label ``L2.F9@5``) that the engine's batched patching and gradient runs address like any
other site. ``cl.patch`` keeps its site grids; this is the entry point for latents.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.gradients import forward_for_grads
from circuitlab.engine.patching import patch_nodes
from circuitlab.engine.sites import Node
from circuitlab.result import Cost, Result
from circuitlab.sparse.splice import site_layer, splice


def latent_nodes(coders: Sequence, positions: Sequence[int | str], units: Optional[Sequence[int]] = None) -> list[Node]:
    """Nodes for each coder's latents (all, or ``units``) at each position, layer-major."""
    nodes = []
    for c in coders:
        layer = site_layer(c.hook_out)
        for p in positions:
            for u in (range(c.d_sae) if units is None else units):
                nodes.append(Node(layer, "latents", unit=int(u), pos=p))
    return nodes


def patch_latents(model, task, coders: Sequence, method: str = "exact", direction: str = "denoising",
                  positions: Optional[Sequence[int | str]] = None, units: Optional[Sequence[int]] = None,
                  progress: bool = False) -> Result:
    """Effect on ``task.metric`` of setting each latent to its source-run value.

    method ``exact``: one patched run per latent (batched by the engine); ``atp``:
    (f_source - f_base) * dmetric/df from one forward and backward pass."""
    from circuitlab.methods.attribution import node_values

    if method not in ("exact", "atp"):
        raise ValueError(f"latents support method 'exact' or 'atp', not {method!r}")
    t0 = time.perf_counter()
    base, src = task.base_and_source(direction)
    positions = list(range(base.shape[1])) if positions is None else list(positions)
    nodes = latent_nodes(coders, positions, units)
    m = task.metric
    with torch.no_grad(), splice(model, coders, error=True) as sp:
        hooks = sp.latent_hooks
        source = capture(model, src, hooks)
    if method == "exact":
        with splice(model, coders, error=True):
            run = patch_nodes(model, base, source, nodes, m, task.roles, progress=progress)
        baseline = float(m.reduce(run.baseline[None])[0])
        values = (m.reduce(run.per_prompt) - baseline).cpu()
        cost = Cost(forward_passes=run.forward_passes + 2, seconds=time.perf_counter() - t0)
    else:
        with splice(model, coders, error=True):
            g = forward_for_grads(model, base, m, hooks)
            grads = g.grads()
        scores = {h: (source[h] - g.acts[h].detach()) * grads[h] for h in hooks}
        values = node_values(nodes, scores, task.roles, base.shape[0])
        baseline = float(g.value.detach())
        cost = Cost(forward_passes=2, backward_passes=1, seconds=time.perf_counter() - t0)
    n_u = len(nodes) // (len(coders) * len(positions))
    return Result(values.reshape(len(coders), len(positions), n_u), [str(n) for n in nodes],
                  ("layer", "pos", "latent"), method, "latents", direction, m.name, baseline, cost,
                  meta={"positions": positions})
