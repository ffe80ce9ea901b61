"""Qwen2: Llama's layout with biased q/k/v projections and optional sliding-window layers
(``use_sliding_window``: the attention module then holds its ``sliding_window``)."""

from typing import Optional

from circuitlab.models.adapters.llama import Llama
from circuitlab.models.adapters.registry import register


@register
class Qwen2(Llama):
    family = "qwen2"
    model_types = ("qwen2",)

    def sliding_window(self, layer: int) -> Optional[int]:
        window = self.attention(layer).sliding_window
        return int(window) if window else None
