"""Gemma-3 text models: Gemma-2's layout plus RMS-normalised queries and keys (q_norm, k_norm,
before the rotary embedding) and per-layer rotary tables for sliding and global layers."""

from circuitlab.models.adapters.gemma2 import Gemma2
from circuitlab.models.adapters.registry import register


@register
class Gemma3(Gemma2):
    family = "gemma3"
    model_types = ("gemma3_text",)
    block_norms = ("ln1", "ln1_post", "ln2", "ln2_post", "q_norm", "k_norm")
