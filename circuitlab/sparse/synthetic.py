"""Toy activations with known sparse structure, for tests and quick demos.

Each row is a sparse non-negative combination of ``n_features`` random unit directions plus
a little noise, so a coder with enough latents can reach a low FVU at a known L0. Shards are
a pure function of (seed, index), like model activation shards.
"""

from __future__ import annotations

import torch

from circuitlab.sparse.store import Rows


class ToyData:
    """Sparse-feature data: ``d`` dims, ``n_features`` directions, ``p_active`` firing rate."""

    def __init__(self, d: int = 32, n_features: int = 96, p_active: float = 0.05, noise: float = 0.01,
                 shard_tokens: int = 2048, seed: int = 0, d_out: int | None = None):
        g = torch.Generator().manual_seed(seed)
        self.dirs = torch.randn(n_features, d, generator=g)
        self.dirs /= self.dirs.norm(dim=-1, keepdim=True)
        self.out = None if d_out is None else torch.randn(n_features, d_out, generator=g) / d_out**0.5
        self.offset = torch.randn(d, generator=g) * 0.5
        self.p, self.noise, self.shard_tokens, self.seed = p_active, noise, shard_tokens, seed

    def shard(self, i: int) -> Rows:
        g = torch.Generator().manual_seed(self.seed * 100_003 + i + 1)
        n, F = self.shard_tokens, self.dirs.shape[0]
        on = torch.rand(n, F, generator=g) < self.p
        mag = torch.rand(n, F, generator=g) * 2 + 0.5
        codes = on * mag
        x = codes @ self.dirs + self.offset + self.noise * torch.randn(n, self.dirs.shape[1], generator=g)
        y = None if self.out is None else codes @ self.out
        z = torch.zeros(n, dtype=torch.int32)
        return Rows(x, y, torch.arange(n, dtype=torch.int32) % 7, z + i, torch.arange(n, dtype=torch.int32))
