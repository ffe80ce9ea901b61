"""Load-time checks: does the bridge map this architecture's hooks the way methods assume?

Methods add and subtract residual-stream pieces, so a bridge that maps ``hook_attn_out`` to a
residual-added state (reported for some architectures) would silently corrupt every result. We
check the decomposition on a short input and raise an error that names the hook.
"""

from __future__ import annotations

import torch

from circuitlab.engine.cache import capture
from circuitlab.models import weights


def _sample_tokens(model, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    hi = min(model.d_vocab, 1000)
    return torch.randint(0, hi, (2, n), generator=g).to(model.device)


def check_decomposition(model, atol: float = 1e-3) -> None:
    """resid_pre + attn_out == resid_mid; resid_mid + mlp_out == resid_post; per-head results
    (z W_O per head) + b_O == attn_out. Raises ValueError naming the first hook that disagrees."""
    toks = _sample_tokens(model)
    names = []
    for l in range(model.n_layers):
        names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_attn_out",
                  f"blocks.{l}.hook_mlp_out", f"blocks.{l}.hook_resid_post", f"blocks.{l}.attn.hook_z"]
        names.append(f"blocks.{l}.attn.hook_k")
        if not model.parallel_attn_mlp:
            names.append(f"blocks.{l}.hook_resid_mid")
    c = capture(model, toks, names)
    model.kv_hook_heads = int(c["blocks.0.attn.hook_k"].shape[2])
    W_O, b_O = weights.W_O(model), weights.b_O(model)
    scale = max(1.0, float(c[f"blocks.0.hook_resid_pre"].abs().max()))
    tol = atol * scale

    def close(a, b, what):
        err = float((a - b).abs().max())
        if err > tol * max(1.0, float(b.abs().max()) / scale):
            raise ValueError(
                f"model {model.name!r}: the bridge's hooks do not decompose the residual stream "
                f"({what}; max error {err:.3g}). This architecture's hook mapping is wrong in "
                "this TransformerLens version; load with check=False to use it anyway, but "
                "residual-based methods (DLA, patching of that hook) will be wrong."
            )

    for l in range(model.n_layers):
        pre, attn, mlp, post = (c[f"blocks.{l}.hook_{k}"] for k in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
        if model.parallel_attn_mlp:
            close(pre + attn + mlp, post, f"blocks.{l}: hook_resid_pre + hook_attn_out + hook_mlp_out != hook_resid_post")
        else:
            mid = c[f"blocks.{l}.hook_resid_mid"]
            close(pre + attn, mid, f"blocks.{l}: hook_resid_pre + hook_attn_out != hook_resid_mid")
            close(mid + mlp, post, f"blocks.{l}: hook_resid_mid + hook_mlp_out != hook_resid_post")
        z = c[f"blocks.{l}.attn.hook_z"]
        heads = torch.einsum("bphd,hdm->bpm", z, W_O[l].to(z.dtype)) + b_O[l].to(z.dtype)
        what = "sum of per-head z W_O + b_O"
        if model.post_attn_norm:  # Gemma-2's sandwich norm: attn_out = ln1_post(sum of heads)
            with torch.no_grad():
                heads = model.bridge.blocks[l].ln1_post(heads)
            what = f"ln1_post({what})"
        close(heads, attn, f"blocks.{l}.attn.hook_z: {what} != hook_attn_out")


def check_fast_paths(model, atol: float = 1e-4) -> None:
    """Verify that restarting at a layer, and recomputing only later positions from cached
    keys/values, reproduce the full forward pass on this model; enable each only if it does."""
    from circuitlab.engine.forward import Restart, kv_tensors, new_kv_cache, run_to_final

    model.fast_restart = model.fast_positions = False
    if model.layers is None or model.n_layers < 2:
        return
    toks = _sample_tokens(model, 8)
    l, p = model.n_layers // 2, 3
    with torch.no_grad():
        kv = new_kv_cache(model)
        full = run_to_final(model, toks, kv_cache=kv)
        resid = capture(model, toks, [f"blocks.{l}.hook_resid_pre"])[f"blocks.{l}.hook_resid_pre"]
        try:
            re = run_to_final(model, toks, restart=Restart(l, resid))
            model.fast_restart = bool(torch.allclose(re, full, atol=atol, rtol=1e-4))
        except Exception:
            return
        if not model.fast_restart:
            return
        past = [(k[:, :, :p], v[:, :, :p]) for k, v in kv_tensors(kv)]
        try:
            part = run_to_final(model, toks, restart=Restart(l, resid[:, p:], p, past))
            model.fast_positions = bool(torch.allclose(part, full[:, p:], atol=atol, rtol=1e-4))
        except Exception:
            model.fast_positions = False
