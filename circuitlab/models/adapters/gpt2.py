"""GPT-2: learned absolute positions, LayerNorm, act(W_in x) MLPs (``act``: gelu_new)."""

from circuitlab.models.adapters.base import Adapter
from circuitlab.models.adapters.registry import register


@register
class GPT2(Adapter):
    family = "gpt2"
    model_types = ("gpt2",)
    positional_embedding = "learned"
    norm_kind = "LN"
    norm_eps_attr = "eps"
    gated_mlp = False
    act_attr = "act"
