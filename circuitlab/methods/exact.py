"""Exact activation patching: the ground truth every estimator is compared against.

Denoising runs the corrupted prompts and sets one node to its clean value; noising runs the
clean prompts and sets it to its corrupted value. Values are the metric under the patch minus
the unpatched run's metric (``Result.patched`` gives the raw values TransformerLens returns).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

from circuitlab.engine.cache import capture
from circuitlab.engine.patching import patch_nodes, validate_nodes
from circuitlab.methods.grid import site_grid
from circuitlab.methods.registry import NodeOptions, node_method
from circuitlab.result import Cost, Result


@dataclass
class ExactOptions(NodeOptions):
    """Options of exact patching: how patches are batched into passes."""

    max_patches_per_pass: Optional[int] = None
    """Most patched copies of the batch in one pass (None: 64 on a GPU, 16 on a CPU, less if
    memory is short)."""
    memory_bytes: Optional[int] = None
    """Memory budget for one pass (None: a quarter of what is free)."""
    progress: bool = True
    """Show a progress bar over passes."""
    max_waste: Optional[float] = None
    """How much recomputation (of layers before a patch) a pass may spend to batch more patches,
    as a fraction of its useful work (None: 0.5 on a GPU, 0.15 on a CPU)."""
    skip_noops: bool = True
    """Give a patch whose source values equal the base run's, bit for bit, the base metric
    without a pass (it cannot change anything)."""


@node_method("exact", ExactOptions, order=0)
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
