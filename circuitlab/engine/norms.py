"""Norm parameters of a loaded model, and a norm applied with a given scale.

Why: methods that hold a norm's scale constant (RelP's LN rule, the frozen replacement model of
attribution graphs, head detectors reading normalised vectors) need the norm's epsilon, kind,
gain and bias as the loaded module has them, and the norm as an affine map of its input once
the scale is fixed.
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


def _module(bridge, path: str):
    mod = bridge
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


def norm_params(bridge, path: str) -> NormParams:
    """The norm's epsilon, kind, gain and bias, probed from the loaded module at ``path`` (the
    generic adapter's fallback; methods ask ``model.adapter.norm(name, layer)``)."""
    ln = _module(bridge, path)
    comp = ln.original_component
    eps = getattr(comp, "eps", None) or getattr(comp, "variance_epsilon", None) or 1e-5
    rms = bool(getattr(ln, "uses_rms_norm", False))
    weight = getattr(ln, "weight", None)
    if weight is not None and getattr(ln, "uses_weight_offset", False):
        weight = 1.0 + weight
    bias = getattr(comp, "bias", None) if not rms else None
    return NormParams(float(eps), rms, None if weight is None else weight.detach(),
                      None if bias is None else bias.detach())


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
