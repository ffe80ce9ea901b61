"""A frozen forward pass: norm scales and attention patterns taken from a cached clean run.

Why: attribution graphs live in the "local replacement model", where every norm divides by the
scale it had on the clean prompt and every attention pattern is the clean one. With those frozen
(and MLP outputs held constant) the model is affine in its inputs, so the effect of adding a
vector anywhere is exactly linear. These hooks change forward values (unlike
``backward_rule``-based rules) and are used to *verify* attributions by intervention and to
compute bias contributions. The engine attaches them (callers pass them to ``run_to_final``).
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


def norm_paths(bridge, include_final: bool = False) -> list[str]:
    """Module paths of every norm with a scale hook (``blocks.0.ln1``, ..., ``ln_final``)."""
    out = [k[: -len(".hook_scale")] for k in bridge.hook_dict if k.endswith(".hook_scale")]
    out = list(dict.fromkeys(out))
    return [p for p in out if include_final or p != "ln_final"]


def norm_params(bridge, path: str) -> NormParams:
    """The norm's epsilon, kind, gain and bias (read from the loaded module)."""
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


def record_scale_hooks(bridge, paths: list[str], store: dict) -> list:
    """Hooks that store each norm's scale on the current run (``store[path]`` [B, T, 1])."""
    hooks = []
    for path in paths:
        p = norm_params(bridge, path)

        def fn(x, path=path, p=p):
            store[path] = norm_scale(p, x).detach()

        hooks.append((f"{path}.hook_in", fn))
    return hooks


def frozen_norm_hooks(bridge, scales: dict[str, torch.Tensor]) -> list:
    """Hooks making each norm in ``scales`` divide by its cached scale ([1 or B, T, 1])."""
    hooks = []
    for path, scale in scales.items():
        p = norm_params(bridge, path)
        box: dict = {}

        def take(x, box=box):
            box["x"] = x

        def out(y, box=box, p=p, scale=scale):
            return apply_norm(p, box.pop("x"), scale.to(y.device)).to(y.dtype)

        hooks += [(f"{path}.hook_in", take), (f"{path}.hook_out", out)]
    return hooks


def frozen_pattern_hooks(patterns: dict[int, torch.Tensor]) -> list:
    """Hooks replacing ``blocks.{l}.attn.hook_pattern`` by the cached pattern ([1, H, T, T])."""
    def make(pat):
        def fn(y):
            return pat.to(device=y.device, dtype=y.dtype).expand_as(y)

        return fn

    return [(f"blocks.{l}.attn.hook_pattern", make(p)) for l, p in patterns.items()]
