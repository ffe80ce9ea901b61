"""Llama (and SmolLM2): rotary positions, RMSNorm, SiLU-gated MLPs, grouped-query attention."""

from circuitlab.models.adapters.base import Adapter
from circuitlab.models.adapters.registry import register


@register
class Llama(Adapter):
    family = "llama"
    model_types = ("llama",)
