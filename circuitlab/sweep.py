"""Sweeps over many prompts: stream the task in batches, optionally split across processes.

Values are means over prompts, so a sweep is the prompt-weighted mean of its batches' results
(exact for every method's values; GradDrop's rank score becomes a batch-weighted mean of
per-batch scores). Under torchrun each rank takes a disjoint shard of prompts (rank, rank +
world, ...) and rank 0 gathers the weighted sums; the same script runs on one CPU process, on
several GPUs (NCCL) or across nodes.
"""

from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from circuitlab.result import Cost, Result


def distributed_info() -> tuple[int, int]:
    """(rank, world size), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def shard(n: int, rank: int, world: int) -> list[int]:
    return list(range(rank, n, world))


def sweep(model, task, sites: str, method: str, direction: str = "denoising", batch_size: int = 16,
          positions: Optional[Sequence] = None, progress: bool = True, **kwargs) -> Result:
    """Run ``method`` over ``task`` in prompt batches (and this rank's shard); the merged Result."""
    from circuitlab.api import METHODS, check_sites, patch
    from circuitlab.validate import check_choice, check_context, check_positive_int

    # everything a batch would reject, rejected before the first batch runs
    check_positive_int("batch_size", batch_size)
    check_choice("method", method, METHODS)
    check_choice("direction", direction, ("denoising", "noising"))
    check_sites(sites, method, kwargs)
    check_context(model, task)
    task.check_positions(positions)
    if len(task) == 0:
        raise ValueError(f"task {task.name!r} has no prompts")
    rank, world = distributed_info()
    idx = shard(len(task), rank, world)
    t0 = time.perf_counter()
    acc, acc_extras, n_done, first = None, {}, 0, None
    fwd = bwd = 0
    batches = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    for b in tqdm(batches, desc=f"{method} {sites}", disable=not progress or rank != 0):
        sub = task.subset(b)
        r = patch(model, sub, sites, method=method, direction=direction, positions=positions, **kwargs)
        if len(r.labels) != (len(first.labels) if first else len(r.labels)) or (first and r.labels != first.labels):
            raise ValueError("prompt batches produced different node sets (positions differ in length); "
                             "use role positions (e.g. positions=['S1','IO','S2','END']) for mixed-length tasks")
        w = len(b)
        acc = r.values.double() * w if acc is None else acc + r.values.double() * w
        for k, v in r.extras.items():
            acc_extras[k] = acc_extras.get(k, 0) + v.double() * w
        base = (first.baseline * n_done + r.baseline * w) / (n_done + w) if first else r.baseline
        first = first or r
        first.baseline = base
        n_done += w
        fwd, bwd = fwd + r.cost.forward_passes, bwd + r.cost.backward_passes
    if first is None:
        raise ValueError("this shard has no prompts: use fewer processes than prompts")
    stats = torch.tensor([float(n_done), first.baseline * n_done, float(fwd), float(bwd)], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        tensors = [acc] + [acc_extras[k] for k in sorted(acc_extras)] + [stats]
        for t in tensors:
            dist.all_reduce(t)
    total = stats[0]
    values = (acc / total).float()
    extras = {k: (v / total).float() for k, v in acc_extras.items()}
    meta = dict(first.meta, prompts=int(total), batch_size=batch_size, world_size=world)
    return Result(values, first.labels, first.dims, first.method, sites, direction, first.metric,
                  float(stats[1] / total), Cost(int(stats[2]), int(stats[3]), time.perf_counter() - t0), extras, meta)
