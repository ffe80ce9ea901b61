"""TopK: keep the k largest pre-activations per token; AuxK revives dead latents.

AuxK reconstructs the current residual error with the top-k_aux *dead* latents, so latents
that never win the top-k still get gradient (through the encoder as well as the decoder).
Decoder rows are kept at unit norm so the encoder cannot game the top-k by scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from circuitlab.sparse.base import CoderConfig, LossContext, SparseCoder, register


@dataclass
class TopKConfig(CoderConfig):
    """TopK coder with the AuxK auxiliary loss."""

    arch: str = "topk"
    """Architecture name (fixed)."""
    k: int = 32
    """Latents kept per token."""
    aux_k: Optional[int] = None
    """Dead latents used by AuxK; None means d_in // 2 (of one source)."""
    aux_coeff: float = 1.0 / 32
    """Weight of the AuxK loss."""
    init_decoder_norm: float = 1.0
    """Unit-norm decoder rows (kept at unit norm during training)."""


def aux_k_loss(coder: SparseCoder, h: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """min(n_dead / k_aux, 1) * mean ||e - TopK_dead(h) @ W_dec||^2 with e = y - y_hat (detached)."""
    cfg = coder.cfg
    if ctx.dead is None or not bool(ctx.dead.any()):
        return torch.zeros((), device=h.device)
    n_dead = int(ctx.dead.sum())
    k_aux = cfg.aux_k if cfg.aux_k is not None else max(1, cfg.d_in // 2)
    kk = min(k_aux, n_dead)
    hd = torch.relu(h).masked_fill(~ctx.dead, float("-inf"))
    vals, idx = hd.topk(kk, dim=-1)
    vals = torch.nan_to_num(vals, neginf=0.0)
    e = (y - y_hat).detach()
    e_hat = torch.zeros(h.shape[0], coder.d_sae, device=h.device, dtype=h.dtype).scatter(-1, idx, vals) @ coder.W_dec
    scale = min(n_dead / k_aux, 1.0)
    return scale * (e_hat - e).pow(2).sum(-1).mean()


@register("topk")
class TopKCoder(SparseCoder):
    config_cls = TopKConfig

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        vals, idx = h.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(h).scatter(-1, idx, torch.relu(vals))

    def sparsity_loss(self, f, h, x, y, y_hat, ctx: LossContext) -> torch.Tensor:
        return self.cfg.aux_coeff * aux_k_loss(self, h, y, y_hat, ctx)

    @torch.no_grad()
    def after_step(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))
