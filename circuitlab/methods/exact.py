"""Exact activation patching: the ground truth every estimator is compared against.

Denoising runs the corrupted prompts and sets one node to its clean value; noising runs the
clean prompts and sets it to its corrupted value. Values are the metric under the patch minus
the unpatched run's metric (``Result.patched`` gives the raw values TransformerLens returns).
"""

from __future__ import annotations

import time
from typing import Optional, Sequence


from circuitlab.engine.cache import capture
from circuitlab.engine.patching import patch_nodes, validate_nodes
from circuitlab.methods.grid import site_grid
from circuitlab.result import Cost, Result

def exact(
    model,
    task,
    sites: str = "resid_pre",
    direction: str = "denoising",
    positions: Optional[Sequence[int | str]] = None,
    layers: Optional[Sequence[int]] = None,
    max_patches_per_pass: Optional[int] = None,
    memory_bytes: Optional[int] = None,
    progress: bool = True,
    max_waste: Optional[float] = None,
    skip_noops: bool = True,
    **_,
) -> Result:
    """Patch every node of ``sites`` one at a time; see circuitlab.methods.grid for site specs."""
    t0 = time.perf_counter()
    base, src_tokens = task.base_and_source(direction)
    grid = site_grid(model, base.shape[1], sites, positions, layers)
    validate_nodes(model, grid.nodes, base.shape[1])
    hooks = sorted({n.hook for n in grid.nodes})
    source = capture(model, src_tokens, hooks)
    run = patch_nodes(model, base, source, grid.nodes, task.metric, task.roles,
                      max_patches_per_pass, memory_bytes, progress, max_waste, skip_noops)
    m = task.metric
    baseline = float(m.reduce(run.baseline[None])[0])
    patched = m.reduce(run.per_prompt)
    values = (patched - baseline).reshape(grid.shape).cpu()
    cost = Cost(forward_passes=run.forward_passes + 2, seconds=time.perf_counter() - t0)
    return Result(values, [str(n) for n in grid.nodes], grid.dims, "exact", sites, direction,
                  m.name, baseline, cost, meta={"chunk_size": run.chunk_size, "positions": positions,
                                              "skipped_noop_patches": run.skipped})
