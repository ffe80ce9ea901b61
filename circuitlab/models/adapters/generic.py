"""The adapter of an architecture no family module claims: every fact is found by probing the
loaded modules and the bridge's configuration, the way methods did before adapters existed.

Why keep it: TransformerBridge loads many more architectures than circuitlab has adapters for,
and the load-time checks (residual decomposition, fast paths) still guard them. A probe can be
wrong for a new family; writing its adapter (one module in this package, checked by
``tests/test_adapters.py``) replaces the guesses with stated facts.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from circuitlab.engine.norms import NormParams
from circuitlab.engine.sites import hook_name, parse_hook
from circuitlab.models.adapters.base import Adapter


class Generic(Adapter):
    family = "generic"

    @property
    def positional_embedding(self) -> str:  # type: ignore[override]
        kind = str(getattr(self.bridge.cfg, "positional_embedding_type", "") or "")
        return "learned" if kind == "standard" else kind

    @property
    def norm_kind(self) -> str:  # type: ignore[override]
        norm = str(getattr(self.bridge.cfg, "normalization_type", "LN") or "LN")
        return "RMS" if "RMS" in norm.upper() else "LN"

    @property
    def block_norms(self) -> tuple[str, ...]:  # type: ignore[override]
        found = [parse_hook(k) for k in self.bridge.hook_dict]
        scales = [p[0] for p in found if p is not None and p[1] == 0 and p[0].endswith(".scale")]
        return tuple(dict.fromkeys(point.split(".")[0] for point in scales))

    @property
    def gated_mlp(self) -> bool:  # type: ignore[override]
        return hook_name("mlp_pre_linear", 0) in self.bridge.hook_dict

    @property
    def parallel_attn_mlp(self) -> bool:
        return bool(getattr(self.bridge.cfg, "parallel_attn_mlp", False))

    @property
    def post_attn_norm(self) -> bool:
        return hasattr(self.bridge.blocks[0], "ln1_post")

    def attention(self, layer: int) -> nn.Module:
        attn = getattr(self.bridge.blocks[layer], "attn", None)
        return getattr(attn, "original_component", None) or attn

    def attn_scale(self, layer: int) -> float:
        s = getattr(self.attention(layer), "scaling", None)
        if isinstance(s, (int, float)):
            return float(s)
        for mod in self.bridge.blocks[layer].modules():
            s = getattr(mod, "scaling", None)
            if isinstance(s, (int, float)):
                return float(s)
        return int(self.bridge.cfg.d_head) ** -0.5

    def attn_softcap(self, layer: int) -> Optional[float]:
        cap = getattr(self.attention(layer), "attn_logit_softcapping", None)
        return float(cap) if cap else None

    def sliding_window(self, layer: int) -> Optional[int]:
        hf = self.attention(layer)
        window = getattr(hf, "sliding_window", None)
        if getattr(hf, "is_sliding", True) is False:
            return None
        return int(window) if isinstance(window, int) and window > 0 else None

    def qk_points(self, layer: int) -> tuple[str, str]:
        hd = self.bridge.hook_dict
        if hook_name("rot_q", layer) in hd and hook_name("rot_k", layer) in hd:
            return "rot_q", "rot_k"
        return "q", "k"

    def activation(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        mlp = self.mlp(layer)
        return getattr(mlp, "act_fn", None) or getattr(mlp, "act", None)

    def dense_mlp_slot(self, layer: int) -> Optional[tuple[nn.Module, str]]:
        block = self.bridge.blocks[layer]
        owner = getattr(block, "_original_component", block)
        mlp = getattr(owner, "mlp", None)
        # TransformerLens' MLP bridges are dense and position-wise; a mixture of experts
        # returns router outputs too and is left alone
        if isinstance(mlp, nn.Module) and "MLP" in type(mlp).__name__ and "MoE" not in type(mlp).__name__:
            return owner, "mlp"
        return None

    def norm(self, name: str, layer: Optional[int] = None) -> NormParams:
        ln = self.norm_module(name, layer)  # a clear error for a norm this model lacks
        comp = ln.original_component
        eps = getattr(comp, "eps", None) or getattr(comp, "variance_epsilon", None) or 1e-5
        rms = bool(getattr(ln, "uses_rms_norm", False))
        weight = getattr(ln, "weight", None)
        if weight is not None and getattr(ln, "uses_weight_offset", False):
            weight = 1.0 + weight
        bias = getattr(comp, "bias", None) if not rms else None
        return NormParams(float(eps), rms, None if weight is None else weight.detach(),
                          None if bias is None else bias.detach())

    @property
    def logit_softcap(self) -> Optional[float]:
        cap = getattr(self.config, "final_logit_softcapping", None)
        return float(cap) if cap else None
