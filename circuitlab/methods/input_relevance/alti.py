"""ALTI (Ferrando et al. 2022, "Measuring the Mixing of Contextual Information in the Transformer").

Each block's attention writes, at position i, a sum over source positions j of transformed
vectors T_i(x_j) = sum_h A^h_ij v^h_j W_O^h (through the post-attention norm with its scale held
fixed, where the model has one); the residual adds x_i to T_i(x_i). The output
y_i = x_i + attn_out_i is that sum plus the output bias. Token j's contribution to position i is

    c_ij = max(0, ||y_i||_1 - ||y_i - T_i(x_j)||_1),   normalised so that sum_j c_ij = 1,

the closer a transformed vector is to the output (Manhattan distance), the more it contributes.
MLPs act on each position alone, so they mix nothing. Rolling the per-layer matrices out across
layers (C_{L-1} ... C_1 C_0) gives each position's final residual stream as a distribution over
the input tokens; its row at the read position is the input relevance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.norms import NormParams
from circuitlab.engine.sites import hook_name
from circuitlab.methods.input_relevance.explained import Explained
from circuitlab.models import weights


@dataclass
class ALTIOptions:
    """Options of ALTI (none besides the chunk size: the method has no free parameters)."""

    max_rows: int = 64
    """Prompts per forward pass (each holds [pos, pos, d_model] transformed vectors per layer)."""

    def __post_init__(self):
        from circuitlab.validate import check_positive_int

        check_positive_int("max_rows", self.max_rows)


@dataclass
class ALTI:
    """Per-layer token-to-token contributions and their rollout."""

    contributions: torch.Tensor
    """[layer, prompts, pos i, pos j] share of source token j in position i's residual after
    the layer's attention; each row is a distribution (causal: 0 for j > i)."""
    rollout: torch.Tensor
    """[prompts, pos i, pos j] share of input token j in position i's final residual stream."""
    reconstruction_error: float
    """Largest |sum_j T_i(x_j) + bias - attn_out_i| relative to |attn_out|: how exactly the
    decomposition rebuilds the model's own attention output (float rounding only)."""


def contributions(transformed: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """ALTI's contribution matrix from transformed vectors [..., i, j, d] and outputs [..., i, d]:
    [..., i, j] rows that are distributions. A row whose every term is clipped to 0 (no
    transformed vector is closer to the output than zero is) puts all its weight on i itself."""
    y = output.double()
    dist = (y[..., :, None, :] - transformed.double()).abs().sum(-1)
    c = (y.abs().sum(-1)[..., None] - dist).clamp_min(0)
    s = c.sum(-1, keepdim=True)
    eye = torch.eye(c.shape[-2], c.shape[-1], dtype=c.dtype, device=c.device).expand_as(c)
    return torch.where(s > 0, c / s.clamp_min(torch.finfo(c.dtype).tiny), eye)


def rollout(per_layer: torch.Tensor) -> torch.Tensor:
    """[layer, ..., i, j] per-layer contribution matrices -> [..., i, j] their product, last
    layer on the left: the share of each input token in each position after the last layer."""
    out = per_layer[0]
    for c in per_layer[1:]:
        out = c @ out
    return out


def transformed_vectors(model, acts: dict, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T [B, i, j, d] without the residual, bias [B, i, d], attn_out [B, i, d]) of one layer,
    from captured values, patterns and (where the model has one) the post-attention norm scale."""
    v = acts[hook_name("v", layer)].double()  # [B, j, kv heads, d_head]
    A = acts[hook_name("pattern", layer)].double()  # [B, heads, i, j]
    if v.shape[2] != A.shape[1]:  # grouped-query attention: each kv head serves a group of heads
        v = v.repeat_interleave(A.shape[1] // v.shape[2], dim=2)
    W_O = weights.W_O(model)[layer].double()  # [heads, d_head, d]
    vo = torch.einsum("bjhe,hed->bjhd", v, W_O)
    T = torch.einsum("bhij,bjhd->bijd", A, vo)
    bias = weights.b_O(model)[layer].double().expand(T.shape[0], T.shape[1], -1)
    if model.adapter.post_attn_norm:
        p = model.adapter.norm("ln1_post", layer)
        scale = acts[hook_name("ln1_post.scale", layer)].double()  # [B, i, 1]
        T = _frozen_norm(p, T, scale[:, :, None])
        bias = _frozen_norm(p, bias, scale)
        if p.bias is not None:
            bias = bias + p.bias.double()
    return T, bias, acts[hook_name("attn_out", layer)].double()


def _frozen_norm(p: NormParams, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The linear part of a norm with its scale held fixed (no bias), in float64: it maps a sum
    of vectors to the sum of their images."""
    x = x if p.rms else x - x.mean(-1, keepdim=True)
    x = x / scale
    return x * p.weight.double() if p.weight is not None else x


def alti(model, tokens: torch.Tensor) -> ALTI:
    """ALTI contributions of every layer on ``tokens`` [B, pos], and their rollout."""
    L = model.n_layers
    names = []
    for l in range(L):
        names += [hook_name(p, l) for p in ("resid_pre", "v", "pattern", "attn_out")]
        if model.adapter.post_attn_norm:
            names.append(hook_name("ln1_post.scale", l))
    acts = capture(model, tokens, names)
    per_layer, err = [], 0.0
    for l in range(L):
        T, bias, attn_out = transformed_vectors(model, acts, l)
        err = max(err, float((T.sum(2) + bias - attn_out).abs().max() / attn_out.abs().max().clamp_min(1e-30)))
        x = acts[hook_name("resid_pre", l)].double()
        idx = torch.arange(T.shape[1], device=T.device)
        T[:, idx, idx] += x  # the residual: x_i reaches position i unchanged
        per_layer.append(contributions(T, x + attn_out))
        del T
    C = torch.stack(per_layer)
    return ALTI(C.cpu(), rollout(C).cpu(), err)


def alti_relevance(model, ex: Explained, opts: ALTIOptions) -> dict:
    """Scores [prompts, pos] (the rollout's row at each read position), totals (1) and meta."""
    scores = torch.zeros(ex.tokens.shape, dtype=torch.float64)
    per_layer, worst = [], 0.0
    for idx in torch.arange(len(ex)).split(opts.max_rows):
        a = alti(model, ex.tokens[idx])
        scores[idx] = a.rollout[torch.arange(len(idx)), ex.read[idx].cpu()]
        per_layer.append(a.contributions[:, torch.arange(len(idx)), ex.read[idx].cpu()])
        worst = max(worst, a.reconstruction_error)
    meta = {"reconstruction_error": worst,
            "per_layer_rows": torch.cat(per_layer, 1)}  # [layer, prompt, pos]: each layer's own row
    return {"scores": scores, "total": torch.ones(len(ex), dtype=torch.float64), "label": "alti",
            "meta": meta}
