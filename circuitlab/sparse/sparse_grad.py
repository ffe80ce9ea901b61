"""Encoder pre-activations at the k chosen latents, with a backward pass that stays sparse.

A TopK coder reads k of d_sae pre-activations per token. Autograd through the dense
``(x - shift) @ W_enc`` would spend two more dense [batch, d_in] x [d_in, d_sae] matmuls in the
backward pass (the weight gradient, and the input gradient that b_dec needs) on gradients that
are zero everywhere except at those k latents. Here the forward matmul runs without a graph and
the backward pass touches only the chosen columns: a sparse [d_sae, batch] x [batch, d_in]
product for the weight gradient, and, for the shift (b_dec, the same vector for every token), one
matrix-vector product: sum_b grad_x[b] = W_enc @ grad_b_enc. The per-token input gradient (k
rows of W_enc per token) is only built when the input itself needs a gradient.
"""

from __future__ import annotations

from typing import Optional

import torch


class _GatherPre(torch.autograd.Function):
    """values[b, j] = x_enc[b] @ W_enc[:, idx[b, j]] + b_enc[idx[b, j]] with x_enc = x - shift
    (precomputed in forward, without a graph)."""

    @staticmethod
    def forward(ctx, x, shift, W_enc, b_enc, x_enc, idx, values):
        ctx.save_for_backward(x_enc, W_enc, idx)
        return values

    @staticmethod
    def backward(ctx, grad):
        x_enc, W_enc, idx = ctx.saved_tensors
        B, k = idx.shape
        n = W_enc.shape[1]
        grad = grad.contiguous()
        need_x, need_shift, need_W, need_b = ctx.needs_input_grad[:4]
        grad_x = grad_shift = grad_W = grad_b = None
        flat_idx, flat_g = idx.reshape(-1), grad.reshape(-1)
        if need_x:
            grad_x = torch.nn.functional.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=grad,
                                                       mode="sum")
        if need_b or need_shift:
            grad_b = torch.zeros(n, dtype=grad.dtype, device=grad.device).index_add_(0, flat_idx, flat_g)
            if need_shift:
                grad_shift = -(W_enc @ grad_b)
            if not need_b:
                grad_b = None
        if need_W:
            tokens = torch.arange(B, device=x_enc.device).repeat_interleave(k)
            s = torch.sparse_coo_tensor(torch.stack([flat_idx, tokens]), flat_g, (n, B), check_invariants=False).coalesce()
            grad_W = torch.sparse.mm(s, x_enc).t()
        return grad_x, grad_shift, grad_W, grad_b, None, None, None


def topk_pre(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int,
             shift: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values [batch, k], indices [batch, k], dense pre-activations [batch, d_sae] without grad)
    of the k largest pre-activations ``(x - shift) @ W_enc + b_enc``; gradients reach x, shift,
    W_enc and b_enc through the k chosen entries only."""
    with torch.no_grad():
        x_enc = x if shift is None else x - shift
        h = torch.addmm(b_enc, x_enc, W_enc)
        values, idx = h.topk(k, dim=-1, sorted=False)
    return _GatherPre.apply(x, shift, W_enc, b_enc, x_enc, idx, values), idx, h


def pre_at(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Pre-activations [batch, len(columns)] of some latents, with an ordinary (small) graph."""
    return torch.addmm(b_enc[columns], x, W_enc[:, columns])
