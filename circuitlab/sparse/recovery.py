"""Ground-truth feature recovery: how many known feature directions a coder's decoder found.

On real activations FVU and L0 say how well a coder reconstructs, not whether its latents are
the features the data is made of; a coder can reconstruct well with latents that mix features.
On data built from known directions (``circuitlab.sparse.synthetic.ToyData``; toy models of
superposition, Elhage et al. 2022) the question can be answered directly, as Sharkey et al.
(2022) did: for each true direction, the best cosine similarity with any decoder direction.
Its mean is the MMCS (mean max cosine similarity); a feature counts as recovered when its
best cosine reaches ``threshold``.

Cosines are signed: the features fire with non-negative coefficients and so do the latents, so
a latent pointing opposite to a feature does not represent it.
"""

from __future__ import annotations

import torch

from circuitlab.sparse.base import SparseCoder


def _check(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D tensor [rows, d], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} (shape {tuple(t.shape)}) contains NaN or inf")


def recovery(decoder: torch.Tensor, true_dirs: torch.Tensor, threshold: float = 0.9) -> dict:
    """Score ``decoder`` [n_latents, d] against ``true_dirs`` [n_features, d] (rows of any scale).

    Returns ``mmcs`` (mean over true features of the max cosine with any latent), ``recovered``
    (fraction of features whose max cosine is >= ``threshold``), ``threshold`` and
    ``per_feature`` (the max cosine of each feature, in ``true_dirs`` order). An all-zero row
    (a latent that was never trained, say) has cosine 0 with everything."""
    _check("decoder", decoder)
    _check("true_dirs", true_dirs)
    if decoder.shape[1] != true_dirs.shape[1]:
        raise ValueError(f"decoder has shape {tuple(decoder.shape)} and true_dirs {tuple(true_dirs.shape)}: "
                         f"their last dimensions (the space the directions live in) must agree; pass decoder "
                         f"rows [n_latents, d] (SparseCoder.W_dec, not W_enc) and true_dirs [n_features, d]")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold is a cosine similarity and must lie in [-1, 1], got {threshold!r}")
    dec = decoder.detach().double()
    true = true_dirs.detach().to(device=dec.device, dtype=torch.float64)
    dec = dec / dec.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    true = true / true.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    best = (true @ dec.t()).max(dim=1).values.clamp(-1.0, 1.0)
    return {"mmcs": float(best.mean()), "recovered": float((best >= threshold).double().mean()),
            "threshold": float(threshold), "per_feature": best.cpu().tolist()}


def coder_recovery(coder: SparseCoder, true_dirs: torch.Tensor, threshold: float = 0.9) -> dict:
    """``recovery`` of a coder's decoder rows (``W_dec``) against ``true_dirs``.

    Decoder rows live in the coder's *output* space: for an SAE that is its input space, so
    compare with the input directions (``ToyData.dirs``); for a transcoder it is the target
    space (``d_out``), so compare with the output directions (``ToyData.out``). Crosscoders'
    rows are the targets concatenated, ``[n_targets * d_out]``, and so must ``true_dirs`` be.
    Rows are taken in raw activation units (the training normalisation ``out_scale`` divided
    out, as ``fold_scaling`` would), which matters only when targets have different scales."""
    if not isinstance(coder, SparseCoder):
        raise TypeError(f"coder must be a circuitlab SparseCoder, got {type(coder).__name__}; "
                        "for a bare decoder matrix use recovery(decoder, true_dirs)")
    cfg = coder.cfg
    width = cfg.n_targets_ * cfg.d_out_
    if true_dirs.dim() == 2 and true_dirs.shape[1] != width:
        space = "input (d_in)" if cfg.autoencoder else "output (d_out)"
        raise ValueError(f"coder {cfg.arch!r} has decoder rows of width {width} (its {space} space, W_dec shape "
                         f"{tuple(coder.W_dec.shape)}) but true_dirs has shape {tuple(true_dirs.shape)}; "
                         + ("pass the true output directions (ToyData.out) for a transcoder"
                            if not cfg.autoencoder else "pass the true input directions (ToyData.dirs)"))
    with torch.no_grad():
        w = coder.W_dec.detach() / coder.out_scale.repeat_interleave(cfg.d_out_)[None, :]
    return recovery(w, true_dirs, threshold)
