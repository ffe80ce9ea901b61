"""Quick per-layer transcoders fitted in seconds (tests, demos without trained coders).

Not a replacement for circuitlab.sparse training: plain Adam on MSE + L1 (weighted by decoder
norms) over the activations of a handful of prompts. Exactness of attribution graphs does not
depend on transcoder quality; scores do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from circuitlab.engine.cache import capture
from circuitlab.graphs.transcoders import READ_HOOK, WRITE_HOOK, Transcoder, TranscoderSet


@dataclass
class FitConfig:
    n_features: int = 128
    """Latents per layer."""
    steps: int = 300
    """Adam steps (full batch)."""
    lr: float = 3e-3
    l1: float = 1e-3
    """L1 coefficient on ``a_i * ||W_dec,i||``."""
    kind: str = "relu"
    """relu, jumprelu (threshold ``threshold``) or topk (``k``)."""
    threshold: float = 0.05
    k: int = 8
    skip: bool = False
    """Add a linear skip connection (fitted jointly)."""
    read: str = READ_HOOK
    """Read-site template (``blocks.{layer}.ln2.hook_out`` or ``blocks.{layer}.hook_resid_mid``)."""
    seed: int = 0


def _tokens(model, prompts) -> torch.Tensor:
    if isinstance(prompts, torch.Tensor):
        return prompts
    seqs = [model.to_tokens(p) for p in prompts]
    T = min(len(s) for s in seqs)
    return torch.stack([s[:T] for s in seqs])


def fit_transcoders(model, prompts: Sequence[str] | torch.Tensor, cfg: FitConfig = FitConfig()) -> TranscoderSet:
    """Fit one transcoder per layer on the MLP input/output of ``prompts`` (BOS excluded)."""
    tokens = _tokens(model, prompts).to(model.device)
    reads = [cfg.read.format(layer=l) for l in range(model.n_layers)]
    writes = [WRITE_HOOK.format(layer=l) for l in range(model.n_layers)]
    acts = capture(model, tokens, reads + writes, dtype=torch.float32)
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    for l in range(model.n_layers):
        x = acts[reads[l]][:, 1:].reshape(-1, acts[reads[l]].shape[-1]).cpu()
        y = acts[writes[l]][:, 1:].reshape(-1, model.d_model).cpu()
        d_in, n = x.shape[1], cfg.n_features
        W_enc = (torch.randn(d_in, n, generator=g) / d_in ** 0.5).requires_grad_()
        b_enc = torch.full((n,), 0.1).requires_grad_()
        W_dec = (torch.randn(n, y.shape[1], generator=g) * 0.1 / n ** 0.5).requires_grad_()
        b_dec = y.mean(0).clone().requires_grad_()
        params = [W_enc, b_enc, W_dec, b_dec]
        W_skip = None
        if cfg.skip:
            W_skip = torch.zeros(d_in, y.shape[1]).requires_grad_()
            params.append(W_skip)
        thr = torch.full((n,), cfg.threshold) if cfg.kind == "jumprelu" else None
        opt = torch.optim.Adam(params, lr=cfg.lr)
        scale = y.pow(2).sum(-1).mean().clamp_min(1e-8)
        for _ in range(cfg.steps):
            h = x @ W_enc + b_enc
            a = torch.relu(h)  # smooth surrogate while fitting; the kind's rule applies at inference
            y_hat = a @ W_dec + b_dec + (x @ W_skip if W_skip is not None else 0)
            loss = (y_hat - y).pow(2).sum(-1).mean() / scale + cfg.l1 * (a * W_dec.norm(dim=-1)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        dev, dt = model.device, model.dtype
        out.append(Transcoder(layer=l, W_enc=W_enc.detach(), b_enc=b_enc.detach(), W_dec=W_dec.detach(),
                              b_dec=b_dec.detach(), kind=cfg.kind, threshold=thr,
                              k=cfg.k if cfg.kind == "topk" else None,
                              W_skip=None if W_skip is None else W_skip.detach(), hook_in=reads[l]).to(dev, dt))
    return TranscoderSet(out, name=f"fit-{cfg.kind}-{cfg.n_features}")
