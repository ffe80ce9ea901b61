"""TopK: keep the k largest pre-activations per token; AuxK revives dead latents.

AuxK reconstructs the current residual error with the top-k_aux *dead* latents, so latents
that never win the top-k still get gradient (through the encoder as well as the decoder).
Decoder rows are kept at unit norm so the encoder cannot game the top-k by scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from circuitlab.sparse.base import CoderConfig, LossContext, LossOut, SparseCoder, recon_loss, register
from circuitlab.sparse.sparse_grad import pre_at, sparse_decode, topk_pre


class _LazyDense:
    """Dense latents [batch, d_sae] built only if someone asks (``.dense()`` / comparisons)."""

    def __init__(self, idx, vals, n):
        self.idx, self.vals, self.n = idx, vals, n

    def dense(self) -> torch.Tensor:
        return torch.zeros(self.idx.shape[0], self.n, dtype=self.vals.dtype, device=self.vals.device).scatter(
            -1, self.idx, self.vals)

    def __gt__(self, other):
        return self.dense() > other

    def __eq__(self, other):
        return self.dense() == other

    def __getattr__(self, name):
        return getattr(self.dense(), name)


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


def aux_k_loss(coder: SparseCoder, h: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor, ctx: LossContext,
               dead_pre: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """min(n_dead / k_aux, 1) * mean ||e - TopK_dead(h) @ W_dec||^2 with e = y - y_hat (detached).
    ``dead_pre(columns)``: pre-activations of those latents with a graph (default: columns of h)."""
    cfg = coder.cfg
    if ctx.dead is None or not bool(ctx.dead.any()):
        return torch.zeros((), device=h.device)
    n_dead = int(ctx.dead.sum())
    k_aux = cfg.aux_k if cfg.aux_k is not None else max(1, cfg.d_in // 2)
    kk = min(k_aux, n_dead)
    dead_idx = ctx.dead.nonzero().squeeze(-1).to(h.device)
    h_dead = dead_pre(dead_idx) if dead_pre is not None else h.index_select(1, dead_idx)
    vals, j = torch.relu(h_dead).topk(kk, dim=-1, sorted=False)  # only dead columns
    idx = dead_idx[j]
    e = (y - y_hat).detach()
    e_hat = sparse_decode(coder.W_dec, idx, vals)
    scale = min(n_dead / k_aux, 1.0)
    return scale * (e_hat - e).pow(2).sum(-1).mean()


@register("topk")
class TopKCoder(SparseCoder):
    config_cls = TopKConfig
    homogeneous_encoder = True
    lens_sae = "topk"

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        vals, idx = h.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(h).scatter(-1, idx, torch.relu(vals))

    def sparsity_loss(self, f, h, x, y, y_hat, ctx: LossContext, dead_pre=None) -> torch.Tensor:
        return self.cfg.aux_coeff * aux_k_loss(self, h, y, y_hat, ctx, dead_pre)

    def loss(self, x, y=None, ctx=None) -> LossOut:
        """Same loss as the base class, decoded sparsely: only the k active rows of W_dec are
        read and receive gradient (the dense [batch, d_sae] latents are built lazily)."""
        ctx = ctx or LossContext()
        x = self.flat_in(x)
        y = x if y is None else self.flat_in(y)
        if x.dim() == 2:  # encoder gradients at the k chosen latents only (sparse_grad.py)
            shift = self.b_dec if self.cfg.b_dec_in else None
            # h is read only inside this loss (AuxK reads dead columns through dead_pre), so the
            # pre-activations may live in the shared scratch buffer.
            vals, idx, h, pattern = topk_pre(x, self.W_enc, self.b_enc, self.cfg.k, shift=shift, scratch=True)
            dead_pre = lambda cols: pre_at(self.encoder_input(x), self.W_enc, self.b_enc, cols)  # noqa: E731
        else:
            h = self.pre(x)
            vals, idx = h.topk(self.cfg.k, dim=-1, sorted=False)
            dead_pre = pattern = None
        vals = torch.relu(vals)
        y_hat = sparse_decode(self.W_dec, idx, vals, pattern) + self.b_dec
        if self.W_skip is not None:
            y_hat = y_hat + x @ self.W_skip
        recon = recon_loss(y_hat, y, ctx)
        sp = self.sparsity_loss(None, h, x, y, y_hat, ctx, dead_pre=dead_pre)
        with torch.no_grad():
            on = (vals > 0).long()  # ReLU can zero a chosen latent: it did not fire
            fired = torch.zeros(self.d_sae, dtype=torch.long, device=x.device).index_add_(
                0, idx.reshape(-1), on.reshape(-1))
            l0 = on.sum(-1).float().mean()
        return LossOut(recon + sp, recon, sp, _LazyDense(idx, vals, self.d_sae), y_hat, {}, fired, l0)

    @torch.no_grad()
    def after_step(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    def lens_fields(self) -> dict:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def lens_config(cls, lens: dict) -> dict:
        """``k`` from cfg.json (any activation_fn entry: TopK is the activation)."""
        k = int(lens["k"])
        if lens.get("rescale_acts_by_decoder_norm"):
            raise ValueError("TopK SAEs with rescale_acts_by_decoder_norm are not supported")
        return {"k": k}
