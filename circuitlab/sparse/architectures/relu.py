"""ReLU + L1 ("April update"): the penalty weights each latent by its decoder norm.

Weighting by ``||W_dec,i||`` stops the coder from shrinking activations while growing decoder
rows to dodge the L1 penalty, so no norm constraint on the decoder is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlab.sparse.base import CoderConfig, LossContext, SparseCoder, register


@dataclass
class ReLUConfig(CoderConfig):
    """ReLU coder with a decoder-norm-weighted L1 penalty."""

    arch: str = "relu"
    """Architecture name (fixed)."""
    l1_coeff: float = 5.0
    """lambda in MSE + lambda * sum_i f_i ||W_dec,i|| (inputs normalised to E||x|| = sqrt(d))."""


@register("relu")
class ReLUCoder(SparseCoder):
    config_cls = ReLUConfig
    lens_sae, lens_transcoder, lens_skip_transcoder = "standard", "transcoder", "skip_transcoder"

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h)

    def sparsity_loss(self, f, h, x, y, y_hat, ctx: LossContext) -> torch.Tensor:
        return ctx.sparsity_scale * self.cfg.l1_coeff * (f * self.decoder_norms()).sum(-1).mean()
