"""Stacked weights in TransformerLens layout, with zeros where a model has no bias.

The model's adapter reads them (``model.adapter.weight``); these helpers name the common ones
and fill in the missing biases."""

from __future__ import annotations

import torch


def _get(model, name: str):
    return model.adapter.weight(name)


def _or_zeros(model, name: str, *shape: int) -> torch.Tensor:
    b = _get(model, name)
    if b is None:
        return torch.zeros(*shape, device=model.device, dtype=model.dtype)
    return b


def W_E(model) -> torch.Tensor:
    """[vocab, d_model]: token embeddings."""
    return _get(model, "W_E")


def W_Q(model) -> torch.Tensor:
    """[layer, head, d_model, d_head]: query weights (the pre-rotary ``attn.hook_q``)."""
    return _get(model, "W_Q")


def W_K(model) -> torch.Tensor:
    """[layer, key/value head, d_model, d_head]."""
    return _get(model, "W_K")


def W_V(model) -> torch.Tensor:
    """[layer, key/value head, d_model, d_head]."""
    return _get(model, "W_V")


def W_O(model) -> torch.Tensor:
    """[layer, head, d_head, d_model]."""
    return _get(model, "W_O")


def b_O(model) -> torch.Tensor:
    """[layer, d_model]; zeros for bias-free projections (Llama, Qwen2, Gemma-2)."""
    return _or_zeros(model, "b_O", model.n_layers, model.d_model)


def W_U(model) -> torch.Tensor:
    """[d_model, vocab]."""
    return _get(model, "W_U")


def b_U(model) -> torch.Tensor:
    return _or_zeros(model, "b_U", model.d_vocab)


def W_out(model) -> torch.Tensor:
    """[layer, d_mlp, d_model]: MLP output weights (neuron i writes row i)."""
    return _get(model, "W_out")


def b_out(model) -> torch.Tensor:
    return _or_zeros(model, "b_out", model.n_layers, model.d_model)


def final_norm(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(gain, bias) of the final norm; bias is None for RMSNorm. Gemma-style offsets applied."""
    p = model.adapter.norm("ln_final")
    return p.weight, p.bias
