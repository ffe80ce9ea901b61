"""Toy activations with hierarchical features: a child fires only when its parent fires.

Why: real features nest (``animal`` -> ``dog``, ``cat``), and a child's direction shares a part
with its parent's. One-shot encoders (TopK, ReLU) score every latent against the whole input, so
nested, correlated directions are where they merge or split features (feature absorption) and
where matching pursuit (``circuitlab.sparse.architectures.mpsae``) is claimed to help. Here the hierarchy is
known, so a coder's decoder can be scored against parents and children separately
(``circuitlab.sparse.recovery``).

Each parent fires independently with probability ``p_parent``; when it fires, with probability
``p_child`` exactly one of its children (uniformly chosen) fires too. A child's direction is
``child_cos * parent + sqrt(1 - child_cos^2) * u`` with u a random unit vector orthogonal to
the parent: cosine ``child_cos`` with its parent, about ``child_cos^2`` with its siblings.
Magnitudes are uniform in [0.5, 1.5]. Shards are a pure function of (seed, index), like
``ToyData`` shards, and plug into ``ShardLoader`` and ``Trainer`` the same way.
"""

from __future__ import annotations

import math

import torch

from circuitlab.sparse.store import Rows


class HierarchyToy:
    """Parent/child feature data in ``d`` dims: ``n_parents`` parents with ``children`` each.

    Ground truth: ``dirs`` [n_features, d] unit rows, the parents first (rows 0..n_parents-1),
    then the children of parent 0, of parent 1, ...; ``parent`` [n_features] the parent of each
    child (-1 for parents); ``parent_dirs`` and ``child_dirs`` the two blocks of ``dirs``."""

    def __init__(self, d: int = 32, n_parents: int = 16, children: int = 4, p_parent: float = 0.15,
                 p_child: float = 0.8, child_cos: float = 0.6, noise: float = 0.01, shard_tokens: int = 2048,
                 seed: int = 0):
        for name, val, lo in (("d", d, 2), ("n_parents", n_parents, 1), ("children", children, 1),
                              ("shard_tokens", shard_tokens, 1)):
            if not isinstance(val, int) or isinstance(val, bool) or val < lo:
                raise ValueError(f"{name} = {val!r} is invalid; {name} must be an integer >= {lo}")
        for name, val in (("p_parent", p_parent), ("p_child", p_child)):
            if not 0.0 <= float(val) <= 1.0:
                raise ValueError(f"{name} = {val!r} is invalid; {name} is a probability in [0, 1]")
        if not -1.0 < float(child_cos) < 1.0:
            raise ValueError(f"child_cos = {child_cos!r} is invalid; it is the cosine between a child and its "
                             "parent, in (-1, 1) (at +-1 the child would be its parent)")
        if not float(noise) >= 0:
            raise ValueError(f"noise = {noise!r} is invalid; noise is a standard deviation >= 0")
        g = torch.Generator().manual_seed(seed)
        P, C = n_parents, children
        par = torch.randn(P, d, generator=g)
        par /= par.norm(dim=-1, keepdim=True)
        u = torch.randn(P, C, d, generator=g)
        u -= (u * par[:, None]).sum(-1, keepdim=True) * par[:, None]  # orthogonal to the parent
        u /= u.norm(dim=-1, keepdim=True)
        kids = child_cos * par[:, None] + math.sqrt(1.0 - child_cos**2) * u
        self.dirs = torch.cat([par, kids.reshape(P * C, d)])
        self.parent = torch.cat([torch.full((P,), -1), torch.arange(P).repeat_interleave(C)])
        self.offset = torch.randn(d, generator=g) * 0.5
        self.n_parents, self.children = P, C
        self.p_parent, self.p_child, self.child_cos = float(p_parent), float(p_child), float(child_cos)
        self.noise, self.shard_tokens, self.seed = float(noise), shard_tokens, seed

    @property
    def parent_dirs(self) -> torch.Tensor:
        return self.dirs[: self.n_parents]

    @property
    def child_dirs(self) -> torch.Tensor:
        return self.dirs[self.n_parents:]

    def codes(self, i: int) -> torch.Tensor:
        """[shard_tokens, n_features] the non-negative feature coefficients of shard ``i``."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + i + 1)
        n, P, C = self.shard_tokens, self.n_parents, self.children
        par_on = torch.rand(n, P, generator=g) < self.p_parent
        kid_on = par_on & (torch.rand(n, P, generator=g) < self.p_child)
        which = torch.randint(0, C, (n, P), generator=g)
        kids = torch.zeros(n, P, C, dtype=torch.bool).scatter(-1, which[..., None], kid_on[..., None])
        on = torch.cat([par_on, kids.reshape(n, P * C)], dim=1)
        return on * (torch.rand(n, P + P * C, generator=g) + 0.5)

    def shard(self, i: int) -> Rows:
        codes = self.codes(i)
        n, d = codes.shape[0], self.dirs.shape[1]
        g = torch.Generator().manual_seed(self.seed * 100_003 + i + 1 + 7_919_000)
        x = codes @ self.dirs + self.offset + self.noise * torch.randn(n, d, generator=g)
        z = torch.zeros(n, dtype=torch.int32)
        return Rows(x, None, torch.arange(n, dtype=torch.int32) % 7, z + i, torch.arange(n, dtype=torch.int32))
