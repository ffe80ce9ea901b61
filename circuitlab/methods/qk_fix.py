"""AtP*'s QK fix: exact softmax for query and key nodes, linear only after the pattern.

Plain AtP linearises through the softmax and misses effects on saturated heads. Here, for a
query at position t, the pattern row t is recomputed exactly with the new query; for a key at
position j, the closed form below gives the exact change of every row t >= j when only that key
changes (METHODS.md section 3):

    D_tj = s q_t . (k'_j - k_j),  E = A_tj expm1(D_tj),  S_t = sum_i A_ti G_ti
    I(k_j) = sum_{t>=j} E / (1 + E) * (G_tj - S_t)

with A the base pattern and G = dL/dA. Keys shared by several query heads (GQA) sum over them.
Queries and keys are the ones attention uses (after rotary embeddings where the model has them).
"""

from __future__ import annotations

import torch


def attn_scale(model, layer: int) -> float:
    """The attention logit scale (1/sqrt(d_head) unless the model says otherwise)."""
    for mod in model.layers[layer].modules():
        s = getattr(mod, "scaling", None)
        if isinstance(s, (int, float)):
            return float(s)
    return model.d_head ** -0.5


def rotated_names(model, layer: int) -> tuple[str, str]:
    """Hook names of the queries and keys attention actually uses (post-rotary if present)."""
    hd = model.bridge.hook_dict
    q, k = f"blocks.{layer}.attn.hook_rot_q", f"blocks.{layer}.attn.hook_rot_k"
    if q in hd and k in hd:
        return q, k
    return f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"


def _causal(T: int, device) -> torch.Tensor:
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def query_effects(q_base, q_src, k_base, A, G, scale) -> torch.Tensor:
    """[B, T, H]: effect of replacing each query (one at a time) by its source value."""
    group = q_base.shape[2] // k_base.shape[2]
    kb = k_base.repeat_interleave(group, 2)
    T = A.shape[-1]
    S = scale * torch.einsum("bthd,bjhd->bhtj", q_src.float(), kb.float())
    S = S.masked_fill(~_causal(T, S.device), torch.finfo(S.dtype).min)
    return ((S.softmax(-1) - A) * G).sum(-1).transpose(1, 2)


def key_effects(q_base, k_base, k_src, A, G, scale) -> torch.Tensor:
    """[B, T, Hkv]: effect of replacing each key (one at a time) by its source value."""
    B, T, H, _ = q_base.shape
    Hk = k_base.shape[2]
    group = H // Hk
    dk = (k_src - k_base).float().repeat_interleave(group, 2)
    D = scale * torch.einsum("bthd,bjhd->bhtj", q_base.float(), dk)
    E = A * torch.expm1(D)
    St = (A * G).sum(-1, keepdim=True)
    term = (E / (1 + E)) * (G - St)
    term = term.masked_fill(~_causal(T, term.device), 0.0)
    per_key = term.sum(2)  # sum over query rows t -> [B, H, T(key)]
    return per_key.view(B, Hk, group, T).sum(2).transpose(1, 2)


def all_keys_effect(q_base, k_base, k_src, A, G, scale) -> torch.Tensor:
    """[B, T, Hkv] with the JOINT effect of replacing every key of a head at position 0 (the
    per-key closed form would not add up to a joint patch)."""
    B, T, H, _ = q_base.shape
    Hk = k_base.shape[2]
    group = H // Hk
    kb, ks = (x.float().repeat_interleave(group, 2) for x in (k_base, k_src))
    mask = ~_causal(T, A.device)
    S = (scale * torch.einsum("bthd,bjhd->bhtj", q_base.float(), ks)).masked_fill(mask, torch.finfo(torch.float32).min)
    joint = ((S.softmax(-1) - A) * G).sum((-1, -2))  # [B, H]
    out = torch.zeros(B, T, Hk, device=A.device)
    out[:, 0] = joint.view(B, Hk, group).sum(-1)
    return out
