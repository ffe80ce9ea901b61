"""JumpReLU: ``f = h * H(h - theta)`` with a learned per-latent threshold and an L0 penalty.

The step function has zero gradient almost everywhere, so theta learns through a straight-
through estimator: a rectangle kernel of width ``bandwidth`` around the threshold stands in
for the Dirac delta. theta is stored as log(theta) in float32 whatever the other weights use:
in bf16 the small updates round to zero and the thresholds silently stop learning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlab.sparse.base import CoderConfig, LossContext, SparseCoder, register


def _kernel(u: torch.Tensor) -> torch.Tensor:
    """Rectangle kernel: 1 on |u| < 1/2."""
    return (u.abs() < 0.5).to(u.dtype)


class JumpFn(torch.autograd.Function):
    """h * H(h - theta); d/dtheta = -(theta / eps) K((h - theta) / eps) (pseudo-derivative)."""

    @staticmethod
    def forward(ctx, h, theta, eps: float):
        ctx.save_for_backward(h, theta)
        ctx.eps = eps
        return h * (h > theta).to(h.dtype)

    @staticmethod
    def backward(ctx, g):
        h, theta = ctx.saved_tensors
        eps = ctx.eps
        gh = g * (h > theta).to(h.dtype)
        gt = (g * (-(theta / eps) * _kernel((h - theta) / eps))).sum(0)
        return gh, gt.to(theta.dtype), None


class StepFn(torch.autograd.Function):
    """H(h - theta); d/dtheta = -(1 / eps) K((h - theta) / eps); no gradient to h."""

    @staticmethod
    def forward(ctx, h, theta, eps: float):
        ctx.save_for_backward(h, theta)
        ctx.eps = eps
        return (h > theta).to(h.dtype)

    @staticmethod
    def backward(ctx, g):
        h, theta = ctx.saved_tensors
        eps = ctx.eps
        gt = (g * (-(1.0 / eps) * _kernel((h - theta) / eps))).sum(0)
        return torch.zeros_like(h), gt.to(theta.dtype), None


@dataclass
class JumpReLUConfig(CoderConfig):
    """JumpReLU coder trained with an L0 penalty through a straight-through estimator."""

    arch: str = "jumprelu"
    """Architecture name (fixed)."""
    l0_coeff: float = 1.0
    """lambda in MSE + lambda * sum_i H(h_i - theta_i)."""
    bandwidth: float = 0.05
    """Width of the rectangle kernel of the straight-through estimator."""
    init_threshold: float = 0.1
    """Initial threshold of every latent."""


@register("jumprelu")
class JumpReLUCoder(SparseCoder):
    config_cls = JumpReLUConfig
    lens_sae, lens_transcoder, lens_skip_transcoder = "jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder"

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        self.log_threshold = torch.nn.Parameter(
            torch.full((cfg.d_sae,), float(torch.tensor(cfg.init_threshold).log()), dtype=torch.float32))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        h = torch.relu(h)
        return h * (h > self.threshold.to(h.dtype)).to(h.dtype)

    def train_forward(self, x, ctx):
        h = torch.relu(self.pre(x))
        hf = h.to(torch.promote_types(h.dtype, torch.float32))  # threshold comparisons in >= fp32
        return JumpFn.apply(hf, self.threshold.to(hf.dtype), self.cfg.bandwidth).to(h.dtype), h, {}

    def sparsity_loss(self, f, h, x, y, y_hat, ctx: LossContext) -> torch.Tensor:
        hf = h.to(torch.promote_types(h.dtype, torch.float32))
        l0 = StepFn.apply(hf, self.threshold.to(hf.dtype), self.cfg.bandwidth).sum(-1).mean()
        return ctx.sparsity_scale * self.cfg.l0_coeff * l0

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {"threshold": self.threshold.detach().float()}

    def state_from_file(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Files hold ``threshold`` (SAE Lens); the coder learns its logarithm."""
        return {**super().state_from_file(t), "log_threshold": t["threshold"].float().clamp_min(1e-12).log()}
