"""Norm parameters, and a norm applied with a given scale.

Why: methods that hold a norm's scale constant (RelP's LN rule, the frozen replacement model of
attribution graphs, head detectors reading normalised vectors) need the norm's epsilon, kind,
gain and bias (which the model's adapter reads: ``model.adapter.norm(name, layer)``), and the
norm as an affine map of its input once the scale is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class NormParams:
    """What a LayerNorm / RMSNorm needs besides its input."""

    eps: float
    rms: bool
    weight: Optional[torch.Tensor]
    """Gain (Gemma's 1 + w offset already applied), or None."""
    bias: Optional[torch.Tensor]
    """Additive bias (LayerNorm only), or None."""


def norm_scale(p: NormParams, x: torch.Tensor) -> torch.Tensor:
    """The normaliser of ``x`` [..., d] -> [..., 1] (computed in float32)."""
    x = x.float()
    xc = x if p.rms else x - x.mean(-1, keepdim=True)
    return (xc.pow(2).mean(-1, keepdim=True) + p.eps).sqrt()


def apply_norm(p: NormParams, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The norm of ``x`` with a given (frozen) ``scale``: affine in x."""
    xf = x.float()
    xc = xf if p.rms else xf - xf.mean(-1, keepdim=True)
    s = xc / scale
    if p.weight is not None:
        s = s * p.weight.float()
    if p.bias is not None:
        s = s + p.bias.float()
    return s.to(x.dtype)
