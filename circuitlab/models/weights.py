"""Stacked weights in TransformerLens layout, with zeros where a model has no bias."""

from __future__ import annotations

import torch


def _get(model, name: str):
    try:
        value = getattr(model.bridge, name)
    except (AttributeError, ValueError, RuntimeError):
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


def W_out(model) -> torch.Tensor:
    """[layer, d_mlp, d_model]: MLP output weights (neuron i writes row i)."""
    return _get(model, "W_out")


def b_out(model) -> torch.Tensor:
    b = _get(model, "b_out")
    if b is None:
        return torch.zeros(model.n_layers, model.d_model, device=model.device, dtype=model.dtype)
    return b


def final_norm(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(gain, bias) of the final norm; bias is None for RMSNorm. Gemma-style offsets applied."""
    gain, bias, _ = norm_affine(model.bridge.ln_final, model.norm == "LN")
    return gain, bias


def norm_affine(ln, centered: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """(gain, bias, centers) of a norm bridge: its output is gain * (x - [mean x]) / scale + bias
    with ``scale`` its hook_scale. Gemma's 1 + weight convention applied; bias None for RMSNorm.
    ``centered`` overrides whether it subtracts the mean (LayerNorm) or not (RMSNorm)."""
    w = ln.weight.detach()
    if getattr(ln, "uses_weight_offset", False):
        w = 1.0 + w
    if centered is None:
        centered = not getattr(ln, "uses_rms_norm", True)
    bias = getattr(ln.original_component, "bias", None)
    return w, (bias.detach() if bias is not None and centered else None), bool(centered)
