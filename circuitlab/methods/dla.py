"""Direct logit attribution: how much each component writes the answer-vs-wrong direction.

The final residual at the answer position is a sum of components (embeddings, each head's
z W_O, attention output biases, each MLP output or neuron, MLP output biases). Through the final
norm with its cached scale sigma (frozen), component c contributes

    (c - mean(c)) / sigma . (gain * (W_U[:, answer] - W_U[:, wrong]))      (no centering for RMSNorm)

and the components plus the final norm's bias term and the unembedding-bias difference sum to
the real logit difference (tested). Works on raw Hugging Face weights: the norm gain is folded
here. Per-source DLA splits a head's contribution by source token: A[d, s] (v_s W_O^h) / sigma.
"""

from __future__ import annotations

import time

import torch

from circuitlab.engine.cache import capture
from circuitlab.models import weights
from circuitlab.result import Cost, Result

BY = ("layer", "head", "neuron", "source")


def dla(model, task, by: str = "head", tokens: str = "clean") -> Result:
    """DLA of the logit difference answer - wrong at each prompt's answer position (mean over
    prompts). ``by``: 'layer' [layer, (attn, mlp)], 'head' [layer, head], 'neuron'
    [layer, neuron], 'source' [layer, head, source position]. ``extras`` holds every other
    component so that everything sums to the logit difference (``meta['total']``)."""
    if by not in BY:
        raise ValueError(f"unknown DLA grouping {by!r}; choose from {BY}")
    if model.post_attn_norm:
        raise ValueError("DLA needs components that add into the residual stream; this model normalises "
                         "attention/MLP outputs before adding them (Gemma-2 sandwich norms). Use patching instead.")
    t0 = time.perf_counter()
    toks = task.clean_tokens if tokens == "clean" else task.corrupt_tokens
    B = toks.shape[0]
    b = torch.arange(B, device=toks.device)
    pos = task.answer_pos
    L = model.n_layers
    names = ["blocks.0.hook_resid_pre", "ln_final.hook_scale", f"blocks.{L - 1}.hook_resid_post"]
    has_pos = getattr(model.bridge.cfg, "positional_embedding_type", "") == "standard"
    if has_pos:
        names.append("hook_pos_embed")
    for l in range(L):
        names += [f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_mlp_out"]
        if by == "neuron":
            names.append(f"blocks.{l}.mlp.hook_post")
        if by == "source":
            names += [f"blocks.{l}.attn.hook_v", f"blocks.{l}.attn.hook_pattern"]
    with torch.no_grad():
        return _dla(model, task, by, tokens, toks, names, has_pos, t0)


def _dla(model, task, by, tokens, toks, names, has_pos, t0) -> Result:
    B, L = toks.shape[0], model.n_layers
    b = torch.arange(B, device=toks.device)
    pos = task.answer_pos
    c = capture(model, toks, names)
    at = lambda x: x[b, pos]  # noqa: E731  [B, ...] at each prompt's answer position
    gain, nbias = weights.final_norm(model)
    WU, bU = weights.W_U(model), weights.b_U(model)
    dW = (WU[:, task.answer_ids] - WU[:, task.wrong_ids]).T  # [B, d]
    u = gain * dW  # the final norm's gain folded into the readout
    sigma = at(c["ln_final.hook_scale"])  # [B, 1]
    center = model.norm == "LN"

    def contrib(x: torch.Tensor) -> torch.Tensor:
        """x [B, ..., d] -> [...] mean over prompts of its logit-difference contribution."""
        if center:
            x = x - x.mean(-1, keepdim=True)
        shape = (B,) + (1,) * (x.dim() - 2)
        return ((x / sigma.view(*shape, 1)) * u.view(B, *([1] * (x.dim() - 2)), -1)).sum(-1).mean(0)

    W_O, b_O = weights.W_O(model), weights.b_O(model)
    extras: dict[str, torch.Tensor] = {}
    pos_embed = at(c["hook_pos_embed"]) if has_pos else None
    embed = at(c["blocks.0.hook_resid_pre"]) - (pos_embed if has_pos else 0)
    extras["embed"] = contrib(embed)
    if has_pos:
        extras["pos_embed"] = contrib(pos_embed)
    heads = torch.stack([contrib(torch.einsum("bhd,hdm->bhm", at(c[f"blocks.{l}.attn.hook_z"]), W_O[l])) for l in range(L)])
    attn_bias = torch.stack([contrib(b_O[l].expand(B, -1)) for l in range(L)])
    mlp = torch.stack([contrib(at(c[f"blocks.{l}.hook_mlp_out"])) for l in range(L)])
    # the norm's bias is added after the gain: it reads through dW, not u
    const = ((dW @ nbias).mean() if nbias is not None else torch.tensor(0.0)) + (bU[task.answer_ids] - bU[task.wrong_ids]).mean()
    extras["final_norm_and_unembed_bias"] = const.reshape(())
    labels: list[str]
    if by == "layer":
        values = torch.stack([heads.sum(1) + attn_bias, mlp], 1)
        dims, labels = ("layer", "sublayer"), [f"L{l}.{s}" for l in range(L) for s in ("attn_out", "mlp_out")]
    elif by == "head":
        values, dims = heads, ("layer", "head")
        labels = [f"L{l}.H{h}" for l in range(L) for h in range(model.n_heads)]
        extras.update(attn_bias=attn_bias, mlp=mlp)
    elif by == "neuron":
        W_out, b_out = weights.W_out(model), weights.b_out(model)
        values = torch.stack([contrib(at(c[f"blocks.{l}.mlp.hook_post"])[..., None] * W_out[l]) for l in range(L)])
        dims = ("layer", "neuron")
        labels = [f"L{l}.N{n}" for l in range(L) for n in range(values.shape[1])]
        extras.update(heads=heads, attn_bias=attn_bias, mlp_bias=torch.stack([contrib(b_out[l].expand(B, -1)) for l in range(L)]))
    else:
        per = []
        for l in range(L):
            v = c[f"blocks.{l}.attn.hook_v"]
            v = v.repeat_interleave(model.n_heads // v.shape[2], 2)  # GQA: each query head's values
            A = c[f"blocks.{l}.attn.hook_pattern"][b, :, pos]  # [B, H, S]
            x = A[..., None] * torch.einsum("bshd,hdm->bhsm", v, W_O[l])  # [B, H, S, d]
            per.append(contrib(x))
        values, dims = torch.stack(per), ("layer", "head", "source")
        labels = [f"L{l}.H{h}<-{s}" for l in range(L) for h in range(model.n_heads) for s in range(values.shape[2])]
        extras.update(attn_bias=attn_bias, mlp=mlp)
    real = (c[f"blocks.{L - 1}.hook_resid_post"])  # the actual logit difference, for the record
    from circuitlab.engine.forward import final_logits

    logits = final_logits(model, at(real))
    actual = (logits[b, task.answer_ids] - logits[b, task.wrong_ids]).mean()
    total = values.sum() + sum(v.sum() for k, v in extras.items() if not (by == "neuron" and k == "mlp"))
    meta = {"total": float(total.detach()), "logit_diff": float(actual.detach()), "tokens": tokens}
    return Result(values.detach().cpu(), labels, dims, "dla", by, tokens, "logit_diff", float(actual),
                  Cost(1, 0, time.perf_counter() - t0), {k: v.detach().cpu() for k, v in extras.items()}, meta)
