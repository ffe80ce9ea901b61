"""The facts methods need about a model family, answered by one object per loaded model.

Why: a method that reads Hugging Face or bridge internals itself (scanning modules for a
``scaling`` attribute, reading ``act_fn`` or ``act``, telling a dense MLP by its class name)
breaks silently on the next family. An adapter states each fact for its family, read from the
place that family keeps it, and ``tests/test_adapters.py`` checks every answer against the
model's own forward pass on a tiny random model of the family.

A family subclasses :class:`Adapter`, sets the class attributes that differ from the defaults
below (which fit Llama) and registers with :func:`circuitlab.models.adapters.register`.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Optional

import torch
from torch import nn

from circuitlab.engine.norms import NormParams
from circuitlab.engine.sites import norm_path

WEIGHTS = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O",
           "W_in", "W_gate", "W_out", "b_in", "b_out", "W_U", "b_U")
"""Stacked weights in TransformerLens layout that :meth:`Adapter.weight` returns (e.g.
W_Q [layer, head, d_model, d_head], W_O [layer, head, d_head, d_model], W_K/W_V with the
key/value heads under grouped-query attention)."""


class Adapter:
    """One model family's answers, for one loaded bridge. The class attributes describe the
    family; the methods read per-layer values from the loaded modules."""

    family: ClassVar[str] = ""
    """Short family name shown to users (``gpt2``, ``llama``, ``gemma3`` ...)."""
    model_types: ClassVar[tuple[str, ...]] = ()
    """Hugging Face ``config.model_type`` values this adapter answers for."""
    positional_embedding: ClassVar[str] = "rotary"
    """'learned': a position vector is added to the token embedding (``hook_pos_embed``);
    'rotary': positions rotate queries and keys inside attention and add nothing to the
    residual stream."""
    norm_kind: ClassVar[str] = "RMS"
    """'LN' (LayerNorm: subtracts the mean, may add a bias) or 'RMS' (RMSNorm)."""
    norm_eps_attr: ClassVar[str] = "variance_epsilon"
    """Attribute of the Hugging Face norm module that holds its epsilon."""
    norm_weight_offset: ClassVar[bool] = False
    """True where the norm multiplies by 1 + weight (Gemma), not by weight."""
    block_norms: ClassVar[tuple[str, ...]] = ("ln1", "ln2")
    """The norms inside each block (names of :data:`circuitlab.engine.sites.NORMS`), in the
    order the bridge lists their hooks."""
    gated_mlp: ClassVar[bool] = True
    """True for act(gate x) * (up x) MLPs (``mlp.hook_pre`` is the gate, ``mlp.hook_pre_linear``
    the up projection); False for act(W_in x)."""
    act_attr: ClassVar[str] = "act_fn"
    """Attribute of the Hugging Face MLP module that holds its activation function."""
    mlp_attr: ClassVar[str] = "mlp"
    """Attribute of the Hugging Face block that holds its MLP."""
    dense_mlp: ClassVar[bool] = True
    """True where every block's MLP is dense and position-wise (each position's output
    depends on that position's input alone; a mixture of experts is not)."""

    def __init__(self, bridge):
        self.bridge = bridge
        self.config = bridge.original_model.config

    def __repr__(self) -> str:
        return f"{type(self).__name__}(family={self.family!r})"

    @property
    def n_layers(self) -> int:
        return len(self.bridge.blocks)

    # --- block layout -------------------------------------------------------------------

    @property
    def parallel_attn_mlp(self) -> bool:
        """True where attention and MLP read the same residual (GPT-NeoX, GPT-J)."""
        return False

    @property
    def post_attn_norm(self) -> bool:
        """True where a norm is applied to the attention output before it joins the residual
        stream (Gemma's ``ln1_post``): per-head contributions then pass through that norm."""
        return "ln1_post" in self.block_norms

    # --- attention ----------------------------------------------------------------------

    def attention(self, layer: int) -> nn.Module:
        """Block ``layer``'s Hugging Face attention module."""
        return self.bridge.blocks[layer].attn.original_component

    def attn_scale(self, layer: int) -> float:
        """What q . k is multiplied by before the softmax (the module's own ``scaling``:
        d_head**-0.5 for most families, query_pre_attn_scalar**-0.5 for Gemma)."""
        return float(self.attention(layer).scaling)

    def attn_softcap(self, layer: int) -> Optional[float]:
        """Attention-logit soft-capping constant c (logit = c tanh(s / c)), or None."""
        return None

    def sliding_window(self, layer: int) -> Optional[int]:
        """Query t sees key j only when t - j < window on a sliding-window layer; None where
        the layer sees every earlier key."""
        return None

    def qk_points(self, layer: int) -> tuple[str, str]:
        """Hook points (for :func:`circuitlab.engine.sites.hook_name`) of the queries and keys
        attention actually multiplies: after rotary embeddings where the family has them."""
        return ("rot_q", "rot_k") if self.positional_embedding == "rotary" else ("q", "k")

    # --- MLP ----------------------------------------------------------------------------

    def mlp(self, layer: int) -> nn.Module:
        """Block ``layer``'s Hugging Face MLP module."""
        return self.bridge.blocks[layer].mlp.original_component

    def activation(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The MLP's activation function: ``mlp.hook_post`` = act(``mlp.hook_pre``), times
        ``mlp.hook_pre_linear`` where the MLP is gated."""
        return getattr(self.mlp(layer), self.act_attr)

    def dense_mlp_slot(self, layer: int) -> Optional[tuple[nn.Module, str]]:
        """(module, attribute) holding block ``layer``'s MLP where it is dense and position-wise,
        so that running it on some positions only gives those positions' outputs; else None."""
        if not self.dense_mlp:
            return None
        return self.bridge.blocks[layer].original_component, self.mlp_attr

    # --- norms --------------------------------------------------------------------------

    def norms(self, include_final: bool = False) -> list[tuple[str, Optional[int]]]:
        """Every norm as (name, layer), block by block in :attr:`block_norms` order, then
        ``('ln_final', None)`` when ``include_final``."""
        out: list[tuple[str, Optional[int]]] = [(n, l) for l in range(self.n_layers) for n in self.block_norms]
        return out + [("ln_final", None)] if include_final else out

    def norm_module(self, name: str, layer: Optional[int] = None) -> nn.Module:
        """The bridge module of norm ``name`` (``ln1`` ... of block ``layer``, or ``ln_final``)."""
        if name != "ln_final" and name not in self.block_norms:
            raise ValueError(f"{self.family or 'this'} model has no norm {name!r}; its norms are "
                             f"{', '.join(self.block_norms + ('ln_final',))}")
        mod = self.bridge
        for part in norm_path(name, layer).split("."):
            mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
        return mod

    def norm_function(self, name: str, layer: Optional[int] = None) -> nn.Module:
        """Norm ``name`` as the model computes it (its Hugging Face module): methods that apply a
        norm to a changed input (edge patching, receiver gradients) then match the model exactly."""
        return self.norm_module(name, layer).original_component

    def norm(self, name: str, layer: Optional[int] = None) -> NormParams:
        """Epsilon, kind, gain and bias of one norm (see :meth:`norms` for the names)."""
        comp = self.norm_module(name, layer).original_component
        rms = self.norm_kind == "RMS"
        weight = comp.weight
        if self.norm_weight_offset:
            weight = 1.0 + weight
        bias = None if rms else comp.bias
        return NormParams(float(getattr(comp, self.norm_eps_attr)), rms, weight.detach(),
                          None if bias is None else bias.detach())

    # --- input --------------------------------------------------------------------------

    @property
    def context_length(self) -> Optional[int]:
        """The longest sequence the model takes (its position-embedding or RoPE table), or None
        where neither the bridge nor the Hugging Face configuration states it."""
        n = getattr(self.bridge.cfg, "n_ctx", None)
        if isinstance(n, int) and n > 0:
            return n
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            n = getattr(self.config, key, None)
            if isinstance(n, int) and n > 0:
                return n
        return None

    # --- output -------------------------------------------------------------------------

    @property
    def logit_softcap(self) -> Optional[float]:
        """Final-logit soft-capping constant c (logits = c tanh(z / c)), or None."""
        return None

    # --- weights ------------------------------------------------------------------------

    def weight(self, name: str) -> Optional[torch.Tensor]:
        """A stacked weight of :data:`WEIGHTS` (detached), or None where the family has none
        (bias-free projections)."""
        if name not in WEIGHTS:
            raise ValueError(f"unknown weight {name!r}; choose one of {', '.join(WEIGHTS)}")
        try:
            value = getattr(self.bridge, name)
        except (AttributeError, ValueError, RuntimeError):
            return None
        return value.detach() if value is not None else None

