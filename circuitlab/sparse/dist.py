"""Data-parallel reductions under torchrun: gloo on CPU, NCCL on GPU.

Why not DistributedDataParallel: the trainer needs a few collectives DDP does not do for it —
the global BatchTopK threshold, summed dead-latent counts, a broadcast initialisation — and
averaging a coder's gradients by hand is one flat all-reduce per step.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch

from circuitlab.sparse.base import Comm


class TorchComm(Comm):
    """Comm backed by torch.distributed (the process group must be initialised)."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        self.dist.all_reduce(t)
        return t

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(out, t.contiguous())
        return torch.cat(out)

    def broadcast_(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self.dist.broadcast(t.data, 0)

    def average_grads_(self, params: Iterable[torch.nn.Parameter]) -> None:
        ps = [p for p in params if p.grad is not None]
        if not ps:
            return
        flat = torch.cat([p.grad.flatten() for p in ps])
        self.dist.all_reduce(flat)
        flat /= self.world
        i = 0
        for p in ps:
            n = p.grad.numel()
            p.grad.copy_(flat[i:i + n].view_as(p.grad))
            i += n


def init_comm() -> Comm:
    """A TorchComm when launched by torchrun with more than one process, else the identity."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Comm()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return TorchComm()
