"""Shared by the gradient estimators: from per-element scores at hooks to per-node values."""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from circuitlab.engine.patching import node_positions, validate_nodes
from circuitlab.engine.sites import HEAD_FAMILIES, UNIT_FAMILIES, VECTOR_FAMILIES, Node
from circuitlab.methods.grid import Grid, site_grid
from circuitlab.result import Cost, Result


def reduce_to_nodes(family: str, x: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] element scores -> [B, T, X] (X: heads, units, or 1 for vectors)."""
    if family in VECTOR_FAMILIES:
        return x.sum(-1, keepdim=True)
    if family in HEAD_FAMILIES:
        return x.sum(-1)
    return x


def node_values(nodes: Sequence[Node], scores: dict[str, torch.Tensor], roles: dict, n_prompts: int) -> torch.Tensor:
    """Sum each node's score over prompts (at each prompt's position, or all positions).

    ``scores`` maps hook name -> [B, T, X] (see :func:`reduce_to_nodes`)."""
    dtype = torch.promote_types(torch.float32, next(iter(scores.values())).dtype)
    out = torch.empty(len(nodes), dtype=dtype)
    by_hook: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        by_hook.setdefault(n.hook, []).append(i)
    for name, idx in by_hook.items():
        S = scores[name]
        dev = S.device
        x = torch.tensor([(nodes[i].head if nodes[i].family in HEAD_FAMILIES else
                           nodes[i].unit if nodes[i].family in UNIT_FAMILIES else 0) for i in idx], device=dev)
        all_pos = [i for i in idx if nodes[i].pos is None]
        at_pos = [i for i in idx if nodes[i].pos is not None]
        if all_pos:
            tot = S.sum(1).sum(0)  # [X]
            xs = torch.tensor([idx.index(i) for i in all_pos], device=dev)
            out[all_pos] = tot[x[xs]].to(dtype).cpu()
        if at_pos:
            P = torch.stack([node_positions(nodes[i], roles, n_prompts, dev) for i in at_pos])  # [n, B]
            xs = x[torch.tensor([idx.index(i) for i in at_pos], device=dev)]
            b = torch.arange(n_prompts, device=dev)
            out[at_pos] = S[b[None, :], P, xs[:, None]].sum(1).to(dtype).cpu()
    return out


def prepare(model, task, sites, direction, positions, layers) -> tuple[torch.Tensor, torch.Tensor, Grid]:
    base, src = task.base_and_source(direction)
    grid = site_grid(model, base.shape[1], sites, positions, layers)
    validate_nodes(model, grid.nodes, base.shape[1])
    return base, src, grid


def make_result(grid: Grid, values: torch.Tensor, method: str, sites: str, direction: str, task, baseline: float,
                t0: float, fwd: int, bwd: int, extras: Optional[dict] = None, meta: Optional[dict] = None) -> Result:
    return Result(values.reshape(grid.shape), [str(n) for n in grid.nodes], grid.dims, method, sites, direction,
                  task.metric.name, baseline, Cost(fwd, bwd, time.perf_counter() - t0),
                  {k: v.reshape(grid.shape) for k, v in (extras or {}).items()}, meta or {})
