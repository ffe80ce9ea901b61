"""GPT-NeoX (Pythia): rotary positions on part of each head, LayerNorm, act(W_in x) MLPs
(``act``), and by default attention and MLP reading the same residual (``use_parallel_residual``)."""

from circuitlab.models.adapters.base import Adapter
from circuitlab.models.adapters.registry import register


@register
class GPTNeoX(Adapter):
    family = "gpt_neox"
    model_types = ("gpt_neox",)
    norm_kind = "LN"
    norm_eps_attr = "eps"
    gated_mlp = False
    act_attr = "act"

    @property
    def parallel_attn_mlp(self) -> bool:
        return bool(self.config.use_parallel_residual)

    def qk_points(self, layer: int) -> tuple[str, str]:
        raise NotImplementedError(
            "GPT-NeoX: TransformerBridge exposes no queries and keys after the rotary embedding "
            "(attn.hook_rot_q / hook_rot_k never fire for this family), so the QK fix cannot score "
            "its q and k nodes; use method='exact' or 'atp' for the q and k families"
        )
