"""AtP*'s QK fix: exact softmax for query and key nodes, linear only after the pattern.

Plain AtP linearises through the softmax and misses effects on saturated heads. Here, for a
query at position t, the pattern row t is recomputed exactly with the new query; for a key at
position j, the closed form below gives the exact change of every row t >= j when only that key
changes (docs/methods.md section 1):

    D_tj = s q_t . (k'_j - k_j),  E = A_tj expm1(D_tj),  S_t = sum_i A_ti G_ti
    I(k_j) = sum_{t>=j} E / (1 + E) * (G_tj - S_t)

with A the base pattern and G = dL/dA. Keys shared by several query heads (GQA) sum over them.
Queries and keys are the ones attention uses (after QK-norm and rotary embeddings where the
model has them: hook_rot_q / hook_rot_k). Scores follow the model's own rule, as its family's
adapter states it: the scale (Gemma-3 uses query_pre_attn_scalar**-0.5, not d_head**-0.5),
logit soft-capping (Gemma-2: cap * tanh(s / cap), so D above is the difference of capped
scores) and the mask (causal, and for sliding-window layers only keys t - j < window).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from circuitlab.engine.sites import hook_name


@dataclass(frozen=True)
class ScoreRule:
    """How one layer turns a query and a key into an attention logit."""

    scale: float
    """Multiplies q . k (d_head**-0.5 unless the model says otherwise)."""
    softcap: Optional[float] = None
    """Soft-capping constant c: the logit is c * tanh(scale q.k / c) (Gemma-2); None: no cap."""
    window: Optional[int] = None
    """Sliding window: query t sees key j only when t - j < window; None: all earlier keys."""


def attn_scale(model, layer: int) -> float:
    """The attention logit scale (1/sqrt(d_head) unless the model says otherwise)."""
    return model.adapter.attn_scale(layer)


def score_rule(model, layer: int) -> ScoreRule:
    """Layer ``layer``'s scale, soft-cap and sliding window, as the model's adapter states them."""
    a = model.adapter
    return ScoreRule(a.attn_scale(layer), a.attn_softcap(layer), a.sliding_window(layer))


def rotated_names(model, layer: int) -> tuple[str, str]:
    """Hook names of the queries and keys attention actually uses (post-rotary if present)."""
    q, k = model.adapter.qk_points(layer)
    return hook_name(q, layer), hook_name(k, layer)


def visible(T: int, device, window: Optional[int] = None) -> torch.Tensor:
    """[T(query), T(key)] True where query t attends to key j: j <= t (and t - j < window)."""
    m = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    if window is not None:
        m = m.triu(-(window - 1))
    return m


def _rule(scale, rule: Optional[ScoreRule]) -> ScoreRule:
    if isinstance(scale, ScoreRule):
        return scale
    return rule if rule is not None else ScoreRule(float(scale))


def _logits(rule: ScoreRule, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, H, T, T] attention logits (before masking) from q [B, T, H, d], k [B, T, H, d]."""
    S = rule.scale * torch.einsum("bthd,bjhd->bhtj", q.float(), k.float())
    if rule.softcap:
        S = rule.softcap * torch.tanh(S / rule.softcap)
    return S


def query_effects(q_base, q_src, k_base, A, G, scale, rule: Optional[ScoreRule] = None) -> torch.Tensor:
    """[B, T, H]: effect of replacing each query (one at a time) by its source value.
    ``scale``: a float (plain causal attention) or a :class:`ScoreRule`."""
    rule = _rule(scale, rule)
    group = q_base.shape[2] // k_base.shape[2]
    kb = k_base.repeat_interleave(group, 2)
    T = A.shape[-1]
    S = _logits(rule, q_src, kb)
    S = S.masked_fill(~visible(T, S.device, rule.window), torch.finfo(S.dtype).min)
    return ((S.softmax(-1) - A) * G).sum(-1).transpose(1, 2)


def key_effects(q_base, k_base, k_src, A, G, scale, rule: Optional[ScoreRule] = None) -> torch.Tensor:
    """[B, T, Hkv]: effect of replacing each key (one at a time) by its source value."""
    rule = _rule(scale, rule)
    B, T, H, _ = q_base.shape
    Hk = k_base.shape[2]
    group = H // Hk
    kb, ks = (x.repeat_interleave(group, 2) for x in (k_base, k_src))
    if rule.softcap:  # the cap is not linear in q.k: difference of the capped logits
        D = _logits(rule, q_base, ks) - _logits(rule, q_base, kb)
    else:
        D = rule.scale * torch.einsum("bthd,bjhd->bhtj", q_base.float(), (ks - kb).float())
    mask = ~visible(T, A.device, rule.window)
    D = D.masked_fill(mask, 0.0)  # hidden keys: A = 0, and no 0 * inf
    E = A * torch.expm1(D)
    St = (A * G).sum(-1, keepdim=True)
    term = (E / (1 + E)) * (G - St)
    term = term.masked_fill(mask, 0.0)
    per_key = term.sum(2)  # sum over query rows t -> [B, H, T(key)]
    return per_key.view(B, Hk, group, T).sum(2).transpose(1, 2)


def all_keys_effect(q_base, k_base, k_src, A, G, scale, rule: Optional[ScoreRule] = None) -> torch.Tensor:
    """[B, T, Hkv] with the JOINT effect of replacing every key of a head at position 0 (the
    per-key closed form would not add up to a joint patch)."""
    rule = _rule(scale, rule)
    B, T, H, _ = q_base.shape
    Hk = k_base.shape[2]
    group = H // Hk
    ks = k_src.repeat_interleave(group, 2)
    mask = ~visible(T, A.device, rule.window)
    S = _logits(rule, q_base, ks).masked_fill(mask, torch.finfo(torch.float32).min)
    joint = ((S.softmax(-1) - A) * G).sum((-1, -2))  # [B, H]
    out = torch.zeros(B, T, Hk, device=A.device)
    out[:, 0] = joint.view(B, Hk, group).sum(-1)
    return out
