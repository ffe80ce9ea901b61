"""Load-time checks: does the bridge map this architecture's hooks the way methods assume?

Methods add and subtract residual-stream pieces, so a bridge that maps ``hook_attn_out`` to a
residual-added state (reported for some architectures) would silently corrupt every result. We
check the decomposition on a short input and raise an error that names the hook.

Tolerances follow the dtype: ``factor * eps(dtype) * scale``, where ``scale`` is the size of the
activations compared. A float32 model is held to a few hundred-thousandths of its residual
norm, a bfloat16 one (eps 2**-7) to a few tenths of a percent; a wrong mapping is off by the
size of a whole residual term, far above either.
"""

from __future__ import annotations

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.sites import hook_name
from circuitlab.models import weights

DECOMPOSITION_FACTOR = 64.0
"""Rounding steps allowed (in units of eps * scale) when re-adding residual pieces."""
FAST_PATH_FACTOR = 256.0
"""Rounding allowed for a shortcut forward pass: its rounding differs from the full pass at
the first recomputed layer and is carried through the remaining layers."""


def tolerance(dtype: torch.dtype, scale: float, factor: float) -> float:
    """``factor * eps(dtype) * scale``: the rounding error a computation in ``dtype`` may show
    on values of size ``scale``."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    return factor * eps * max(1.0, scale)


def _sample_tokens(model, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    hi = min(model.d_vocab, 1000)
    return torch.randint(0, hi, (2, n), generator=g).to(model.device)


def check_finite_weights(model) -> None:
    """Raise ValueError naming the first parameter holding NaN or inf (a corrupted file, or a
    weight too large for the requested dtype: float16 stops at 65504)."""
    for name, p in model.bridge.original_model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            bad = int((~torch.isfinite(p)).sum())
            name = name.replace("._original_component", "").replace("_original_component.", "")
            raise ValueError(
                f"model {model.name!r}: parameter {name} holds {bad} NaN/inf value(s) in "
                f"{p.dtype}. The weights file is corrupted, or the values overflow this dtype "
                "(float16 stops at 65504: load with dtype='bfloat16' or 'float32')."
            )


def _check_finite_acts(model, c: dict) -> None:
    for name, x in c.items():
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"model {model.name!r}: activation {name} is NaN/inf on a short random input in "
                f"{x.dtype}. The activations overflow this dtype (float16 stops at 65504; load "
                "with dtype='bfloat16' or 'float32') or the weights are broken."
            )


def check_decomposition(model, factor: float = DECOMPOSITION_FACTOR) -> None:
    """resid_pre + attn_out == resid_mid; resid_mid + mlp_out == resid_post; per-head results
    (z W_O per head) + b_O == attn_out, within ``tolerance(model.dtype, ...)``. Raises
    ValueError naming the first hook that disagrees, or the first non-finite weight or
    activation."""
    check_finite_weights(model)
    toks = _sample_tokens(model)
    sites = ["resid_pre", "attn_out", "mlp_out", "resid_post", "heads", "k"]
    if not model.parallel_attn_mlp:
        sites.append("resid_mid")
    c = capture(model, toks, [hook_name(s, l) for l in range(model.n_layers) for s in sites])
    _check_finite_acts(model, c)
    model.kv_hook_heads = int(c[hook_name("k", 0)].shape[2])
    W_O, b_O = weights.W_O(model), weights.b_O(model)
    dtype = c[hook_name("resid_pre", 0)].dtype

    def close(a, b, what):
        scale = max(float(a.abs().max()), float(b.abs().max()))
        tol = tolerance(dtype, scale, factor)
        err = float((a.float() - b.float()).abs().max())
        if not err <= tol:  # a NaN error fails too
            raise ValueError(
                f"model {model.name!r}: the bridge's hooks do not decompose the residual stream "
                f"({what}; max error {err:.3g}, allowed {tol:.3g} in {dtype}). This "
                "architecture's hook mapping is wrong in this TransformerLens version; load with "
                "check=False to use it anyway, but residual-based methods (DLA, patching of that "
                "hook) will be wrong."
            )

    for l in range(model.n_layers):
        h = {s: hook_name(s, l) for s in sites}
        pre, attn, mlp, post = (c[h[k]] for k in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
        if model.parallel_attn_mlp:
            close(pre + attn + mlp, post, f"{h['resid_pre']} + {h['attn_out']} + {h['mlp_out']} != {h['resid_post']}")
        else:
            mid = c[h["resid_mid"]]
            close(pre + attn, mid, f"{h['resid_pre']} + {h['attn_out']} != {h['resid_mid']}")
            close(mid + mlp, post, f"{h['resid_mid']} + {h['mlp_out']} != {h['resid_post']}")
        z = c[h["heads"]]
        heads = torch.einsum("bphd,hdm->bpm", z, W_O[l].to(z.dtype)) + b_O[l].to(z.dtype)
        what = "sum of per-head z W_O + b_O"
        if model.post_attn_norm:  # sandwich norm (Gemma-2/3): attn_out = ln1_post(sum of heads)
            with torch.no_grad():
                heads = model.bridge.blocks[l].ln1_post(heads)
            what = f"ln1_post({what})"
        close(heads, attn, f"{h['heads']}: {what} != {h['attn_out']}")


def _probe_length(model) -> int:
    """Long enough to pass the smallest sliding window (if small), so a shortcut that mishandles
    the window is caught rather than waved through on a prompt the window never cuts."""
    windows = [w for l in range(model.n_layers) if (w := model.adapter.sliding_window(l)) is not None]
    if windows and min(windows) <= 56:
        return min(windows) + 8
    return 8


def check_fast_paths(model, factor: float = FAST_PATH_FACTOR) -> None:
    """Verify that restarting at a layer, and recomputing only later positions from cached
    keys/values, reproduce the full forward pass on this model within
    ``tolerance(model.dtype, ...)``; enable each only if it does and record why not in
    ``model.fast_path_notes`` (shown by ``repr(model)``)."""
    from circuitlab.engine.forward import Restart, kv_tensors, new_kv_cache, run_to_final

    model.fast_restart = model.fast_positions = False
    notes = model.fast_path_notes = {}
    if model.layers is None:
        notes["restart"] = notes["positions"] = "the Hugging Face block list was not found"
        return
    if model.n_layers < 2:
        notes["restart"] = notes["positions"] = "a one-layer model has nothing to skip"
        return
    toks = _sample_tokens(model, _probe_length(model))
    T = toks.shape[1]
    l, p = model.n_layers // 2, max(3, T - 5)
    with torch.no_grad():
        kv = new_kv_cache(model)
        full = run_to_final(model, toks, kv_cache=kv)
        resid = capture(model, toks, [hook_name("resid_pre", l)])[hook_name("resid_pre", l)]
        tol = tolerance(full.dtype, float(full.abs().max()), factor)
        try:
            re = run_to_final(model, toks, restart=Restart(l, resid))
        except Exception as e:  # noqa: BLE001 - any failure means the shortcut is unusable
            notes["restart"] = f"restarting at block {l} failed ({type(e).__name__}: {e})"
            notes["positions"] = "needs the layer restart"
            return
        err = float((re.float() - full.float()).abs().max())
        model.fast_restart = err <= tol
        if not model.fast_restart:
            notes["restart"] = f"restarting at block {l} differs from the full pass by {err:.3g} (allowed {tol:.3g})"
            notes["positions"] = "needs the layer restart"
            return
        past = [(k[:, :, :p], v[:, :, :p]) for k, v in kv_tensors(kv)]
        try:
            part = run_to_final(model, toks, restart=Restart(l, resid[:, p:], p, past))
        except Exception as e:  # noqa: BLE001
            notes["positions"] = (f"recomputing from position {p} with cached keys/values failed "
                                  f"({type(e).__name__}: {e})")
            return
        err = float((part.float() - full[:, p:].float()).abs().max())
        model.fast_positions = err <= tol
        if not model.fast_positions:
            notes["positions"] = (f"recomputing from position {p} with cached keys/values differs from "
                                  f"the full pass by {err:.3g} (allowed {tol:.3g})")
