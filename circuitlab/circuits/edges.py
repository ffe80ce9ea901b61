"""Edges through the engine: sender writes, receiver-input gradients, receiver-input overrides.

A receiver's *input* is the residual stream as that one receiver sees it, before its norm: a
head's query input is ``resid_pre`` read through ln1 and that head's W_Q only. Nothing in the
model holds a separate copy per receiver, so both directions are done by the chain rule, which
is exact:

* gradients: dL/d(input of head h's query) = J_ln1(resid)^T (dL/dq_h W_Q[h]^T), taken from the
  gradient at ``attn.hook_q`` (pre-rotary, verified to equal ln1(resid) W_Q + b_Q) and a
  vector-Jacobian product through the model's own norm module at the run's residual;
* overrides: giving head h's query input r + delta changes q_h by
  (ln1(r + delta) - ln1(r)) W_Q[h], added at ``attn.hook_q``; an MLP input is overridden at
  ``mlp.hook_in`` (the MLP's normalised input, which feeds nothing else), the logits' input at
  ``ln_final.hook_in``.

This avoids the bridge's split-qkv mode, which mutates the model's configuration and keeps
[batch, pos, heads, d_model] tensors for every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.gradients import forward_for_grads
from circuitlab.engine.sites import hook_name
from circuitlab.models import weights


@dataclass
class Readers:
    """The weights that map a residual-stream input to each receiver's activation."""

    W: list[dict[str, torch.Tensor]]
    """Per layer {'q': [H, d, dh], 'k': [Hkv, d, dh], 'v': [Hkv, d, dh]}."""
    W_O: torch.Tensor
    """[layer, head, d_head, d_model]: a head's write is z W_O (its share of b_O is constant)."""
    attn_norm: list[torch.nn.Module]
    """Per layer, the norm in front of attention (the Hugging Face module itself)."""
    mlp_norm: list[torch.nn.Module]
    parallel: bool

    @staticmethod
    def of(model) -> "Readers":
        L = range(model.n_layers)
        W_Q, W_K, W_V = weights.W_Q(model), weights.W_K(model), weights.W_V(model)
        W = [{"q": W_Q[l], "k": W_K[l], "v": W_V[l]} for l in L]
        attn_norm = [model.adapter.norm_function("ln1", l) for l in L]
        mlp_norm = [model.adapter.norm_function("ln2", l) for l in L]
        return Readers(W, weights.W_O(model), attn_norm, mlp_norm, bool(model.parallel_attn_mlp))

    def mlp_resid(self, layer: int) -> str:
        """The hook holding the residual an MLP reads (before its norm)."""
        return hook_name("resid_pre" if self.parallel else "resid_mid", layer)


def receiver_hook(receiver) -> str:
    """The hook a receiver's input is read and overridden at: q/k/v of its head (per-head
    projections of the normalised residual), the MLP's normalised input, the final norm's input."""
    if receiver.kind == "logits":
        return hook_name("ln_final.in")
    return hook_name("mlp_in" if receiver.kind == "mlp" else receiver.kind, receiver.layer)


def sender_hooks(model) -> list[str]:
    names = [hook_name("resid_pre", 0)]
    for l in range(model.n_layers):
        names += [hook_name("heads", l), hook_name("mlp_out", l)]
    return names


def writes_from_cache(model, readers: Readers, cache: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, T, senders, d_model] in graph order: embed, then per layer its heads and its MLP."""
    parts = [cache[hook_name("resid_pre", 0)][:, :, None]]
    for l in range(model.n_layers):
        z = cache[hook_name("heads", l)]
        parts.append(torch.einsum("bthe,hed->bthd", z, readers.W_O[l].to(z.dtype)))
        parts.append(cache[hook_name("mlp_out", l)][:, :, None])
    return torch.cat(parts, 2)


def sender_writes(model, tokens: torch.Tensor, readers: Optional[Readers] = None) -> torch.Tensor:
    """Each sender's write into the residual stream on ``tokens``: [B, T, senders, d_model]."""
    readers = readers or Readers.of(model)
    return writes_from_cache(model, readers, capture(model, tokens, sender_hooks(model)))


def norm_vjp(norm: torch.nn.Module, resid: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Pull gradients on norm(resid) ([N, T, R, d], one per receiver) back to the norm's input."""
    with torch.enable_grad():
        x = resid.detach()[:, :, None, :].expand_as(grad_out).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(norm(x), x, grad_out)
    return g


@dataclass
class ReceiverGrads:
    grads: torch.Tensor
    """[rows, T, receivers, d_model]: dL/d(receiver input), rows = copies x prompts."""
    value: float
    per_prompt: torch.Tensor


def receiver_grads(model, graph, tokens: torch.Tensor, metric, readers: Optional[Readers] = None,
                   copies: int = 1, embed_hook: Optional[Callable] = None) -> ReceiverGrads:
    """Gradients of the metric at every receiver's input from one forward and one backward."""
    readers = readers or Readers.of(model)
    L = model.n_layers
    final = hook_name("ln_final.in")
    names = []
    for l in range(L):
        names += [hook_name("resid_pre", l), readers.mlp_resid(l)]
        names += [hook_name(p, l) for p in ("q", "k", "v", "mlp_in")]
    names.append(final)
    names = list(dict.fromkeys(names))
    run = forward_for_grads(model, tokens, metric, names, embed_hook=embed_hook, copies=copies)
    g = run.grads()
    a = {k: v.detach() for k, v in run.acts.items()}
    N, T, d = a[final].shape
    out = torch.zeros(N, T, len(graph.receivers), d, dtype=g[final].dtype, device=tokens.device)
    for l in range(L):
        idx = graph.receivers_at(l)
        kinds = [graph.receivers[j] for j in idx]
        attn = [(j, r) for j, r in zip(idx, kinds) if r.kind in "qkv"]
        gout = torch.stack([g[hook_name(r.kind, l)][:, :, r.head] @ readers.W[l][r.kind][r.head].T.to(g[final].dtype)
                            for _, r in attn], 2)
        out[:, :, [j for j, _ in attn]] = norm_vjp(readers.attn_norm[l], a[hook_name("resid_pre", l)], gout)
        jm = [j for j, r in zip(idx, kinds) if r.kind == "mlp"][0]
        g_mlp = g[hook_name("mlp_in", l)][:, :, None]
        out[:, :, jm] = norm_vjp(readers.mlp_norm[l], a[readers.mlp_resid(l)], g_mlp)[:, :, 0]
    out[:, :, graph.receiver("logits")] = g[final]
    return ReceiverGrads(out, float(run.value.detach()), run.per_prompt)


def input_change(norm: torch.nn.Module, resid: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """norm(resid + delta) - norm(resid) for delta [N, T, R, d] (exactly 0 where delta is 0)."""
    r = resid[:, :, None, :]
    return norm(r + delta) - norm(r.expand_as(delta))


def project(readers: Readers, layer: int, kind: str, head: int, x: torch.Tensor) -> torch.Tensor:
    """A change of a head's normalised input [..., d] -> the change of its q/k/v [..., d_head]."""
    return x @ readers.W[layer][kind][head].to(x.dtype)
