"""AtP (attribution patching): a first-order estimate of every node's patching effect.

I(n) = (n(x_source) - n(x_base)) . dL/dn at the base run: two forward passes and one
backward pass for all nodes. Denoising takes the gradient on the corrupted run; noising on
the clean run — each compared against exact patching in the same direction.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

from circuitlab.engine.cache import capture
from circuitlab.engine.gradients import forward_for_grads
from circuitlab.methods.attribution import make_result, node_values, prepare, reduce_to_nodes
from circuitlab.methods.registry import NodeOptions, node_method
from circuitlab.result import Result

AtPOptions = NodeOptions
"""AtP declares no options of its own (only ``layers``)."""


def atp_scores(model, task, base, src, grid, extra_hooks=(), method="atp") -> tuple[dict, float]:
    """Per-hook [B, T, X] AtP scores and the base metric value."""
    hooks = sorted({n.hook for n in grid.nodes})
    source = capture(model, src, hooks)
    run = forward_for_grads(model, base, task.metric, hooks, extra_hooks)
    grads = run.grads()
    scores = {h: reduce_to_nodes(grid.family, (source[h] - run.acts[h].detach()) * grads[h]) for h in hooks}
    return scores, float(run.value.detach())


@node_method("atp", AtPOptions, order=1)
def atp(model, task, sites: str = "resid_pre", direction: str = "denoising",
        positions: Optional[Sequence[int | str]] = None, layers: Optional[Sequence[int]] = None) -> Result:
    """AtP: a first-order estimate of every node's patching effect from one backward pass."""
    t0 = time.perf_counter()
    base, src, grid = prepare(model, task, sites, direction, positions, layers)
    scores, baseline = atp_scores(model, task, base, src, grid)
    values = node_values(grid.nodes, scores, task.roles, base.shape[0])
    return make_result(grid, values, "atp", sites, direction, task, baseline, t0, 2, 1)
