"""Direct logit attribution: how much each component writes the answer-vs-wrong direction.

The final residual at the answer position is a sum of components (embeddings, each head's
z W_O, attention output biases, each MLP output or neuron, MLP output biases). Through the final
norm with its cached scale sigma (frozen), component c contributes

    (c - mean(c)) / sigma . (gain * (W_U[:, answer] - W_U[:, wrong]))      (no centering for RMSNorm)

and the components plus the final norm's bias term and the unembedding-bias difference sum to
the real logit difference (tested). Works on raw Hugging Face weights: the norm gain is folded
here. Per-source DLA splits a head's contribution by source token: A[d, s] (v_s W_O^h) / sigma.

Sandwich norms (Gemma-2, Gemma-3) normalise each attention and MLP output before it joins the
residual stream: attn_out = g * x / sigma_l with x the sum of the heads. With that norm's scale
sigma_l frozen too (as the final norm's is), each head's piece g * (z_h W_O^h) / sigma_l is what
it adds, and the pieces still sum to the logit difference. Where the model soft-caps its logits
(Gemma-2), the decomposition is of the logits before the cap (``meta['logit_softcap']``).
"""

from __future__ import annotations

import time

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.sites import hook_name
from circuitlab.models import weights
from circuitlab.result import Cost, DirectEffects

BY = ("layer", "head", "neuron", "source")
_POST = {"attn": "ln1_post", "mlp": "ln2_post"}


def _post_norm(model, layer: int, part: str):
    """Block ``layer``'s norm applied to the attention ('attn') or MLP ('mlp') output (its
    parameters), or None."""
    if not model.post_attn_norm or _POST[part] not in model.adapter.block_norms:
        return None
    return model.adapter.norm(_POST[part], layer)


def _head_writes(z: torch.Tensor, W_O: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """z [B, head, d_head] -> each head's write z W_O [B, head, d_model] in ``acc``."""
    return torch.einsum("bhd,hdm->bhm", z.to(acc), W_O.to(acc))


def dla(model, task, by: str = "head", tokens: str = "clean") -> DirectEffects:
    """DLA of the logit difference answer - wrong at each prompt's answer position (mean over
    prompts). ``by``: 'layer' [layer, (attn, mlp)], 'head' [layer, head], 'neuron'
    [layer, neuron], 'source' [layer, head, source position]. ``extras`` holds every other
    component so that everything sums to the logit difference (``meta['total']``)."""
    if by not in BY:
        raise ValueError(f"unknown DLA grouping {by!r}; choose from {BY}")
    t0 = time.perf_counter()
    toks = task.clean_tokens if tokens == "clean" else task.corrupt_tokens
    L = model.n_layers
    names = [hook_name("resid_pre", 0), hook_name("ln_final.scale"), hook_name("resid_post", L - 1)]
    has_pos = model.adapter.positional_embedding == "learned"
    if has_pos:
        names.append(hook_name("pos_embed"))
    for l in range(L):
        names += [hook_name("heads", l), hook_name("mlp_out", l)]
        if by == "neuron":
            names.append(hook_name("neurons", l))
        if by == "source":
            names += [hook_name("v", l), hook_name("pattern", l)]
        for part in ("attn", "mlp") if by == "neuron" else ("attn",):
            if _post_norm(model, l, part) is not None:
                names.append(hook_name(f"{_POST[part]}.scale", l))
    with torch.no_grad():
        return _dla(model, task, by, tokens, toks, names, has_pos, t0)


def _dla(model, task, by, tokens, toks, names, has_pos, t0) -> DirectEffects:
    B, L = toks.shape[0], model.n_layers
    b = torch.arange(B, device=toks.device)
    pos = task.answer_pos
    c = capture(model, toks, names)
    at = lambda x: x[b, pos]  # noqa: E731  [B, ...] at each prompt's answer position
    gain, nbias = weights.final_norm(model)
    WU, bU = weights.W_U(model), weights.b_U(model)
    dW = (WU[:, task.answer_ids] - WU[:, task.wrong_ids]).T  # [B, d]
    acc = torch.promote_types(torch.float32, model.dtype)  # bf16/fp16 models sum in float32
    u = gain.to(acc) * dW.to(acc)  # the final norm's gain folded into the readout
    sigma = at(c[hook_name("ln_final.scale")]).to(acc)  # [B, 1]
    center = model.norm == "LN"

    def per_prompt(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """v [B, k] broadcast against x [B, ..., d]."""
        return v.view(B, *([1] * (x.dim() - 2)), -1)

    def contrib(x: torch.Tensor) -> torch.Tensor:
        """x [B, ..., d] -> [...] mean over prompts of its logit-difference contribution."""
        x = x.to(acc)
        if center:
            x = x - x.mean(-1, keepdim=True)
        return ((x / per_prompt(sigma, x)) * per_prompt(u, x)).sum(-1).mean(0)

    def through(l: int, part: str, x: torch.Tensor) -> torch.Tensor:
        """x [B, ..., d] as it reaches the residual stream: through block l's post-attention
        ('attn') or post-MLP ('mlp') norm with its scale frozen, where the model has one."""
        x = x.to(acc)
        p = _post_norm(model, l, part)
        if p is None:
            return x
        if not p.rms:
            x = x - x.mean(-1, keepdim=True)
        scale = at(c[hook_name(f"{_POST[part]}.scale", l)]).to(acc)
        return x / per_prompt(scale, x) * p.weight.to(acc)

    def bias_in(l: int, part: str, b_vec: torch.Tensor) -> torch.Tensor:
        """A sublayer's output bias [d] as it reaches the residual stream, plus the post-norm's
        own bias (LayerNorm-style post norms)."""
        x = through(l, part, b_vec.expand(B, -1))
        p = _post_norm(model, l, part)
        if p is not None and p.bias is not None:
            x = x + p.bias.to(acc)
        return x

    W_O, b_O = weights.W_O(model), weights.b_O(model)
    extras: dict[str, torch.Tensor] = {}
    pos_embed = at(c[hook_name("pos_embed")]) if has_pos else None
    embed = at(c[hook_name("resid_pre", 0)]) - (pos_embed if has_pos else 0)
    extras["embed"] = contrib(embed)
    if has_pos:
        extras["pos_embed"] = contrib(pos_embed)
    heads = torch.stack([contrib(through(l, "attn", _head_writes(at(c[hook_name("heads", l)]), W_O[l], acc)))
                         for l in range(L)])
    attn_bias = torch.stack([contrib(bias_in(l, "attn", b_O[l])) for l in range(L)])
    mlp = torch.stack([contrib(at(c[hook_name("mlp_out", l)])) for l in range(L)])
    # the norm's bias is added after the gain: it reads through dW, not u
    const = (((dW.to(acc) @ nbias.to(acc)).mean() if nbias is not None else torch.tensor(0.0, dtype=acc))
             + (bU[task.answer_ids] - bU[task.wrong_ids]).to(acc).mean())
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
        values = torch.stack([contrib(through(l, "mlp", at(c[hook_name("neurons", l)]).to(acc)[..., None]
                                              * W_out[l].to(acc)))
                              for l in range(L)])
        dims = ("layer", "neuron")
        labels = [f"L{l}.N{n}" for l in range(L) for n in range(values.shape[1])]
        mlp_bias = torch.stack([contrib(bias_in(l, "mlp", b_out[l])) for l in range(L)])
        extras.update(heads=heads, attn_bias=attn_bias, mlp_bias=mlp_bias)
    else:
        per = []
        for l in range(L):
            v = c[hook_name("v", l)]
            v = v.repeat_interleave(model.n_heads // v.shape[2], 2)  # GQA: each query head's values
            A = c[hook_name("pattern", l)][b, :, pos]  # [B, H, S]
            x = A.to(acc)[..., None] * torch.einsum("bshd,hdm->bhsm", v.to(acc), W_O[l].to(acc))  # [B, H, S, d]
            per.append(contrib(through(l, "attn", x)))
        values, dims = torch.stack(per), ("layer", "head", "source")
        labels = [f"L{l}.H{h}<-{s}" for l in range(L) for h in range(model.n_heads) for s in range(values.shape[2])]
        extras.update(attn_bias=attn_bias, mlp=mlp)
    real = (c[hook_name("resid_post", L - 1)])  # the actual logit difference, for the record
    from circuitlab.engine.forward import logit_softcap

    logits = model.bridge.unembed(model.bridge.ln_final(at(real))).to(acc)  # before any soft-capping
    actual = (logits[b, task.answer_ids] - logits[b, task.wrong_ids]).mean()
    total = values.sum() + sum(v.sum() for k, v in extras.items() if not (by == "neuron" and k == "mlp"))
    meta = {"total": float(total.detach()), "logit_diff": float(actual.detach()), "tokens": tokens}
    cap = logit_softcap(model)
    if cap:
        capped = cap * torch.tanh(logits / cap)
        capped_diff = (capped[b, task.answer_ids] - capped[b, task.wrong_ids]).mean()
        meta.update(logit_softcap=cap, capped_logit_diff=float(capped_diff))
    return DirectEffects(values.detach().cpu(), labels, dims, "dla", by, tokens, "logit_diff", float(actual),
                         Cost(1, 0, time.perf_counter() - t0), {k: v.detach().cpu() for k, v in extras.items()}, meta)
