"""Crosscoders: one dictionary over several sources — layers, models, or training checkpoints.

``f = act(sum_l W_enc^l a^l + b)`` and ``a_hat^l = f W_dec^l + b_dec^l`` (acausal). The sources
are concatenated, so the base coder trains them unchanged; the penalty weights each latent by
``sum_l ||W_dec,i^l||`` (``decoder_norms``). A latent's decoder-norm share per source says
where (which layer) or when (which checkpoint) or in which model a feature exists.
"""

from __future__ import annotations

from typing import Sequence

import torch

from circuitlab.sparse.base import CoderConfig, SparseCoder, config_class


def crosscoder_config(arch: str, hooks: Sequence[str], d_model: int, d_sae: int,
                      models: Sequence[str] = (), **fields) -> CoderConfig:
    """Config of an acausal crosscoder. ``hooks`` and ``models`` give one entry per source
    (a single model for a cross-layer coder; the same hook repeated for model diffing or
    checkpoints)."""
    hooks = tuple(hooks)
    models = tuple(models)
    n = max(len(hooks), len(models))
    if len(hooks) == 1:
        hooks = hooks * n
    if models and len(models) not in (1, n):
        raise ValueError(f"give one model or one per source ({n} sources, {len(models)} models)")
    return config_class(arch)(d_in=d_model, d_sae=d_sae, n_sources=n, hooks_in=hooks, models=models, **fields)


def source_shares(coder: SparseCoder) -> torch.Tensor:
    """[d_sae, n_sources] each latent's decoder-norm share per source (rows sum to 1)."""
    norms = coder.source_norms().detach()
    return norms / norms.sum(-1, keepdim=True).clamp_min(1e-12)
