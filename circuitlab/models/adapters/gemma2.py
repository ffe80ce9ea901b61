"""Gemma-2: RMSNorm with 1 + weight gains, sandwich norms (ln1_post, ln2_post), GELU-gated
MLPs, query_pre_attn_scalar**-0.5 attention scale, attention-logit and final-logit
soft-capping, sliding-window layers alternating with global ones (``config.layer_types``)."""

from typing import Optional

from circuitlab.models.adapters.base import Adapter
from circuitlab.models.adapters.registry import register


@register
class Gemma2(Adapter):
    family = "gemma2"
    model_types = ("gemma2",)
    norm_eps_attr = "eps"
    norm_weight_offset = True
    block_norms = ("ln1", "ln1_post", "ln2", "ln2_post")

    def attn_softcap(self, layer: int) -> Optional[float]:
        cap = self.attention(layer).attn_logit_softcapping
        return float(cap) if cap else None

    def sliding_window(self, layer: int) -> Optional[int]:
        window = self.attention(layer).sliding_window  # None on global layers
        return int(window) if window else None

    @property
    def logit_softcap(self) -> Optional[float]:
        cap = self.config.final_logit_softcapping
        return float(cap) if cap else None
