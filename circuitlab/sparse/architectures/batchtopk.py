"""BatchTopK: keep the k*B largest activations of the whole batch, not k per token.

Tokens that need more latents get more. At inference there is no batch, so the coder tracks
an EMA of the smallest activation it kept and is saved as a JumpReLU with that threshold
(``for_inference``). Under data parallelism the k*B cut is taken over the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlab.sparse.architectures.jumprelu import JumpReLUCoder, JumpReLUConfig
from circuitlab.sparse.architectures.topk import TopKCoder, TopKConfig, aux_k_loss
from circuitlab.sparse.base import LossContext, SparseCoder, register


@dataclass
class BatchTopKConfig(TopKConfig):
    """BatchTopK coder (AuxK as for TopK); exported as JumpReLU."""

    arch: str = "batchtopk"
    """Architecture name (fixed)."""
    threshold_ema: float = 0.9
    """Decay of the running estimate of the smallest kept activation (0.9: a ~10-step window,
    short enough not to lag behind the shrinking activations of a short run)."""


def batch_threshold(a: torch.Tensor, k_total: int, comm) -> torch.Tensor:
    """The k_total-th largest entry of ``a`` over the (global) batch."""
    flat = a.detach().flatten()
    local = flat.topk(min(k_total, flat.numel())).values
    if comm is not None and comm.world > 1:
        local = comm.all_gather_cat(local)
    return local.topk(min(k_total, local.numel())).values[-1]


@register("batchtopk")
class BatchTopKCoder(TopKCoder):
    config_cls = BatchTopKConfig
    inference_arch = "jumprelu"  # saved and read back as JumpReLU (for_inference)
    lens_sae = ""

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float32))
        self.register_buffer("threshold_steps", torch.zeros((), dtype=torch.long))

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        h = torch.relu(h)
        return h * (h > self.threshold.to(h.dtype)).to(h.dtype)

    def train_forward(self, x, ctx: LossContext):
        h = self.pre(x)
        a = torch.relu(h)
        world = ctx.comm.world if ctx.comm is not None else 1
        t = batch_threshold(a, self.cfg.k * a.shape[0] * world, ctx.comm)
        keep = (a >= t) & (a > 0)
        return a * keep.to(a.dtype), h, {"batch_threshold": t}

    def sparsity_loss(self, f, h, x, y, y_hat, ctx: LossContext) -> torch.Tensor:
        return self.cfg.aux_coeff * aux_k_loss(self, h, y, y_hat, ctx)

    loss = SparseCoder.loss  # the per-token sparse decode of TopK does not apply (k varies per token)

    def observe(self, parts: dict) -> None:
        if "batch_threshold" in parts:
            self.update_threshold(parts["batch_threshold"])

    @torch.no_grad()
    def update_threshold(self, t: torch.Tensor) -> None:
        """EMA of the smallest kept activation (the first value is taken as is)."""
        t = t.float()
        if int(self.threshold_steps) == 0:
            self.threshold.copy_(t)
        else:
            d = self.cfg.threshold_ema
            self.threshold.mul_(d).add_((1 - d) * t)
        self.threshold_steps += 1

    def for_inference(self) -> JumpReLUCoder:
        """An equivalent JumpReLU coder with threshold = the learned batch threshold."""
        cfg = self.cfg
        base = {k: v for k, v in cfg.to_dict().items() if k in JumpReLUConfig.__dataclass_fields__}
        base.update(arch="jumprelu", init_threshold=max(float(self.threshold), 1e-8))
        j = JumpReLUCoder(JumpReLUConfig.from_dict(base))
        sd = {k: v for k, v in self.state_dict().items() if k not in ("threshold", "threshold_steps")}
        j.load_state_dict(sd, strict=False)
        return j

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {"threshold": self.threshold.expand(self.d_sae).clone()}
