"""Toy activations with known sparse structure, for tests and quick demos.

Each row is a sparse non-negative combination of ``n_features`` random unit directions plus
a little noise, so a coder with enough latents can reach a low FVU at a known L0, and its
decoder can be scored against the true directions (``circuitlab.sparse.recovery``). Shards are
a pure function of (seed, index), like model activation shards.

Features fire independently, all at rate ``p_active`` by default. Real features are far from
uniform (a few are common, most are rare), which is what makes recovery hard: with
``freq_exponent`` set, feature i fires with probability proportional to ``(i + 1) ** -exponent``.
"""

from __future__ import annotations

import torch

from circuitlab.sparse.store import Rows


def power_law_probs(n_features: int, exponent: float, mean_active: float) -> torch.Tensor:
    """[n_features] firing probabilities ``min(1, c (i + 1) ** -exponent)`` summing to ``mean_active``.

    ``c`` is found by bisection, so the expected number of active features per row is exactly
    ``mean_active`` even when the commonest features are capped at probability 1."""
    if not exponent >= 0:
        raise ValueError(f"freq_exponent must be >= 0 (0 is uniform), got {exponent!r}")
    if not 0 < mean_active <= n_features:
        raise ValueError(f"mean_active must be in (0, n_features={n_features}] (expected active features per row), "
                         f"got {mean_active!r}")
    w = torch.arange(1, n_features + 1, dtype=torch.float64).pow(-float(exponent))
    lo, hi = 0.0, float(n_features) / float(w.min())  # at hi every probability is capped at 1
    for _ in range(200):
        c = (lo + hi) / 2
        if float((c * w).clamp_max(1.0).sum()) < mean_active:
            lo = c
        else:
            hi = c
    return (hi * w).clamp_max(1.0).float()


class ToyData:
    """Sparse-feature data: ``d`` dims, ``n_features`` directions, ``p_active`` firing rate.

    Ground truth, for scoring coders against: ``dirs`` [n_features, d] are the true feature
    directions (unit rows) that inputs are built from; ``out`` [n_features, d_out] (with
    ``d_out``) the output direction of each feature, the target a transcoder should recover;
    ``probs`` [n_features] each feature's firing probability."""

    def __init__(self, d: int = 32, n_features: int = 96, p_active: float = 0.05, noise: float = 0.01,
                 shard_tokens: int = 2048, seed: int = 0, d_out: int | None = None,
                 freq_exponent: float | None = None, mean_active: float | None = None):
        """``freq_exponent``: None fires every feature at ``p_active``; a value fires feature i
        with probability proportional to ``(i + 1) ** -freq_exponent``, scaled so that
        ``mean_active`` features (default ``p_active * n_features``) are active per row on average."""
        g = torch.Generator().manual_seed(seed)
        self.dirs = torch.randn(n_features, d, generator=g)
        self.dirs /= self.dirs.norm(dim=-1, keepdim=True)
        self.out = None if d_out is None else torch.randn(n_features, d_out, generator=g) / d_out**0.5
        self.offset = torch.randn(d, generator=g) * 0.5
        self.p, self.noise, self.shard_tokens, self.seed = p_active, noise, shard_tokens, seed
        if freq_exponent is None:
            if mean_active is not None:
                raise ValueError("mean_active applies to power-law frequencies; set freq_exponent too "
                                 "(or use p_active for a uniform rate)")
            self.probs = torch.full((n_features,), float(p_active))
        else:
            self.probs = power_law_probs(n_features, freq_exponent,
                                         p_active * n_features if mean_active is None else mean_active)
            self.p = self.probs
        self.freq_exponent = freq_exponent

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
