"""Stacked weights in TransformerLens layout, with zeros where a model has no bias."""

from __future__ import annotations

import torch


def _get(model, name: str):
    try:
        value = getattr(model.bridge, name)
    except AttributeError:
        return None
    return value.detach() if value is not None else None


def W_O(model) -> torch.Tensor:
    """[layer, head, d_head, d_model]."""
    return _get(model, "W_O")


def b_O(model) -> torch.Tensor:
    """[layer, d_model]; zeros for bias-free projections (Llama, Qwen2, Gemma-2)."""
    b = _get(model, "b_O")
    if b is None:
        return torch.zeros(model.n_layers, model.d_model, device=model.device, dtype=model.dtype)
    return b


def W_U(model) -> torch.Tensor:
    """[d_model, vocab]."""
    return _get(model, "W_U")


def b_U(model) -> torch.Tensor:
    b = _get(model, "b_U")
    if b is None:
        return torch.zeros(model.d_vocab, device=model.device, dtype=model.dtype)
    return b
