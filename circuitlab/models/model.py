"""The Model: a TransformerBridge plus its tokenizer and the facts methods need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from circuitlab.engine.sites import FAMILIES


@dataclass
class Model:
    """A loaded model. ``bridge`` is TransformerLens 4's TransformerBridge over the unmodified
    Hugging Face model; legacy hook names (``blocks.3.attn.hook_z``) are the public vocabulary."""

    bridge: Any
    """The TransformerBridge (hooks live here; only circuitlab.engine attaches them)."""
    tokenizer: Any
    """The Hugging Face tokenizer."""
    name: str
    """Where the model came from (zoo name, folder or hub id)."""
    n_layers: int
    n_heads: int
    n_kv_heads: int
    """Key/value heads; fewer than ``n_heads`` under grouped-query attention."""
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    norm: str
    """'LN' (LayerNorm) or 'RMS' (RMSNorm)."""
    parallel_attn_mlp: bool = False
    """True where attention and MLP read the same residual (GPT-NeoX, GPT-J)."""
    post_attn_norm: bool = False
    """True where a norm is applied to the attention output before it joins the residual
    stream (Gemma-2's ``ln1_post``): per-head contributions then pass through that norm."""
    adapter: Any = field(default=None, repr=False)
    """The model family's :class:`~circuitlab.models.adapters.Adapter`: attention scale and
    windows, MLP activation and gating, positional embedding, norms, weights, dense MLPs."""
    kv_hook_heads: int = 0
    """Heads in hook_k / hook_v: n_kv_heads where the bridge keeps grouped keys (GQA)."""
    layers: Optional[nn.ModuleList] = field(default=None, repr=False)
    """The Hugging Face ModuleList of blocks (used to restart a forward pass at a layer)."""
    layers_owner: Any = field(default=None, repr=False)
    layers_attr: str = field(default="", repr=False)
    fast_restart: bool = field(default=False)
    """Whether restarting at a layer (skipping earlier blocks) was verified exact at load."""
    fast_positions: bool = field(default=False)
    """Whether recomputing only later positions from a key/value cache was verified exact."""
    fast_path_notes: dict = field(default_factory=lambda: {"restart": "not verified (loaded with check=False)",
                                                           "positions": "not verified (loaded with check=False)"})
    """Why a shortcut is off ('restart', 'positions' -> reason); empty when both are on."""

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.bridge.parameters()).dtype

    def heads_in(self, family: str) -> int:
        """How many heads a head-family hook carries (k and v may be grouped under GQA)."""
        if family in ("k", "v") and self.kv_hook_heads:
            return self.kv_hook_heads
        return self.n_heads

    @property
    def gqa(self) -> bool:
        return self.n_kv_heads != self.n_heads

    @property
    def sites(self) -> list[str]:
        """Site families this model supports (see circuitlab.engine.sites)."""
        return [f for f in FAMILIES if f != "latents"]

    def to_tokens(self, text: str | list[str], bos: bool = True) -> torch.Tensor:
        """Tokenize one prompt (1-D) exactly as tasks do, with the BOS token prepended."""
        from circuitlab.tasks.tokenize import encode

        if isinstance(text, str):
            return torch.tensor(encode(self.tokenizer, text, bos=bos), device=self.device)
        raise TypeError("to_tokens takes one string; build a Task for many prompts")

    def token_id(self, text: str) -> int:
        """The id of a string that must be exactly one token (e.g. ' Mary')."""
        from circuitlab.tasks.tokenize import single_token

        return single_token(self.tokenizer, text)

    def __repr__(self) -> str:
        off = "".join(f"; {k} shortcut off: {why}" for k, why in self.fast_path_notes.items()
                      if not getattr(self, f"fast_{k}", False))
        return (
            f"Model({self.name!r}: {self.n_layers} layers, d_model {self.d_model}, "
            f"{self.n_heads} heads ({self.n_kv_heads} kv), norm {self.norm}, "
            f"{self.device}, {self.dtype}{off})"
        )
