"""Coder files in the SAE Lens layout: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

Why this layout: it is what published SAEs use, so ``load_coder`` opens them, and SAE Lens
opens ours (``SAE.load_from_disk``). Tensors use SAE Lens names and orientation: W_enc
[d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec, ``threshold`` for JumpReLU, W_skip
[d_out, d_in] for skip transcoders; matching pursuit (``matching_pursuit``, tied) has W_dec
and b_dec only. Our full config rides along under ``cfg.json``'s
``circuitlab`` key (SAE Lens ignores unknown keys). Architectures SAE Lens lacks (crosscoders,
TopK transcoders) keep the same layout with a ``circuitlab_*`` architecture name.
Only safetensors and JSON are read: no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from circuitlab.result import atomic_folder
from circuitlab.sparse.base import CoderConfig, SparseCoder, config_class, make_coder

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAE_LENS_VERSION = "6.0.0"
"""The cfg.json format version we write (SAE Lens >= 6 reads it without conversion)."""


def _lens_arch(cfg: CoderConfig) -> str:
    if cfg.n_sources != 1 or cfg.n_targets_ != 1:
        return f"circuitlab_crosscoder_{cfg.arch}"
    if cfg.arch == "batchtopk":
        return "jumprelu" if cfg.autoencoder else "jumprelu_transcoder"
    if cfg.autoencoder:
        return {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "mpsae": "matching_pursuit"}[cfg.arch]
    if cfg.arch == "relu":
        return "skip_transcoder" if cfg.skip else "transcoder"
    if cfg.arch == "jumprelu":
        return "jumprelu_skip_transcoder" if cfg.skip else "jumprelu_transcoder"
    return f"circuitlab_{cfg.arch}_transcoder"


def save_coder(coder: SparseCoder, path: str | Path, meta: Optional[dict] = None) -> Path:
    """Write ``coder`` (folded to raw units; BatchTopK as JumpReLU) to folder ``path``.

    All-or-nothing: a failed save leaves the previous coder in ``path`` whole (other files in
    the folder are kept)."""
    from safetensors.torch import save_file

    coder = coder.for_inference()
    if not (torch.all(coder.in_scale == 1) and torch.all(coder.out_scale == 1)):
        raise ValueError("fold the activation scaling into the weights (coder.fold_scaling()) before saving")
    cfg = coder.cfg
    path = Path(path)
    t = {"W_dec": coder.W_dec, "b_dec": coder.b_dec}
    if cfg.arch != "mpsae":  # tied pursuit: SAE Lens's matching_pursuit holds no encoder (mpsae.py)
        t.update(W_enc=coder.W_enc, b_enc=coder.b_enc)
    if coder.W_skip is not None:
        t["W_skip"] = coder.W_skip.t()
    t.update(coder.extra_tensors())
    t = {k: v.detach().float().contiguous().cpu() for k, v in t.items()}
    lens = {
        "architecture": _lens_arch(cfg),
        "d_in": cfg.d_in * cfg.n_sources,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": cfg.b_dec_in,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAE_LENS_VERSION,
            "sae_lens_training_version": SAE_LENS_VERSION,
            "model_name": (cfg.models[0] if cfg.models else None),
            "hook_name": (cfg.hooks_in[0] if cfg.hooks_in else None),
            "hook_name_out": ((cfg.hooks_out or cfg.hooks_in)[0] if cfg.hooks_in else None),
            "prepend_bos": True,
            "exclude_special_tokens": list(cfg.exclude_token_ids),
            **(meta or {}),
        },
        "circuitlab": cfg.to_dict(),
    }
    if cfg.arch == "topk":
        lens["k"] = cfg.k
        lens["rescale_acts_by_decoder_norm"] = False
    if cfg.arch == "mpsae":  # SAE Lens's matching_pursuit then runs exactly k steps
        lens.update(max_iterations=cfg.k, residual_threshold=0.0, stop_on_duplicate_support=False)
    if not cfg.autoencoder:
        lens["d_out"] = cfg.d_out_ * cfg.n_targets_
    text = json.dumps(lens, indent=1)
    with atomic_folder(path) as tmp:
        save_file(t, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(text)
    return path


_FROM_LENS = {"standard": ("relu", False), "topk": ("topk", False), "jumprelu": ("jumprelu", False),
              "transcoder": ("relu", False), "skip_transcoder": ("relu", True),
              "jumprelu_transcoder": ("jumprelu", False), "jumprelu_skip_transcoder": ("jumprelu", True),
              "matching_pursuit": ("mpsae", False)}


def load_coder(path: str | Path, device: str | torch.device = "cpu") -> SparseCoder:
    """Open a coder folder written by ``save_coder`` or by SAE Lens (``SAE.save_model``)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CFG_FILE).exists() or not (path / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"{path} is not a coder folder: expected {CFG_FILE} and {WEIGHTS_FILE}")
    try:
        lens = json.loads((path / CFG_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path / CFG_FILE} is not valid JSON ({e}); re-export the coder") from e
    try:
        t = load_file(str(path / WEIGHTS_FILE), device="cpu")
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path / WEIGHTS_FILE} is not a readable safetensors file ({e}); re-export "
                         "or re-download the coder") from e
    try:
        coder = _coder_from(lens, t)
    except KeyError as e:
        raise ValueError(f"{path}: {WEIGHTS_FILE} or {CFG_FILE} lacks the entry {e}; it is not a "
                         "complete sparse-coder folder") from e
    except RuntimeError as e:  # load_state_dict: shapes that disagree with the config
        raise ValueError(f"{path}: the weights do not fit the config in {CFG_FILE} ({e})") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    bad = [name for name, w in coder.state_dict().items() if w.is_floating_point() and not torch.isfinite(w).all()]
    if bad:
        raise ValueError(f"{path / WEIGHTS_FILE}: NaN or infinite values in {', '.join(bad)}; the coder "
                         "was saved from a diverged training run")
    return coder.to(device)


def _coder_from(lens: dict, t: dict) -> SparseCoder:
    """A coder built from a cfg.json dict and its weight tensors."""
    if "circuitlab" in lens:
        d = dict(lens["circuitlab"])
        if d.get("arch") == "batchtopk":  # saved through for_inference as JumpReLU
            d["arch"] = "jumprelu"
        cfg = config_class(d["arch"]).from_dict(d)
    else:
        cfg = _cfg_from_lens(lens, t)
    coder = make_coder(cfg)
    sd = {"W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    if cfg.arch != "mpsae":
        sd.update(W_enc=t["W_enc"], b_enc=t["b_enc"])
    if "W_skip" in t:
        sd["W_skip"] = t["W_skip"].t()
    if cfg.arch == "jumprelu":
        sd["log_threshold"] = t["threshold"].float().clamp_min(1e-12).log()
    missing, unexpected = coder.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m not in ("in_scale", "out_scale")]
    if missing:
        raise ValueError(f"weights missing {missing}")
    return coder


def _cfg_from_lens(lens: dict, t: dict) -> CoderConfig:
    arch_name = lens.get("architecture", "standard")
    if arch_name not in _FROM_LENS:
        raise ValueError(f"SAE Lens architecture {arch_name!r} is not supported; supported: {', '.join(_FROM_LENS)}")
    norm = lens.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise ValueError(f"normalize_activations={norm!r} is not supported: fold the scaling into the weights "
                         "first (SAE Lens: sae.fold_activation_norm_scaling_factor)")
    act = lens.get("activation_fn", lens.get("activation_fn_str", "relu"))
    if act not in ("relu", None) and arch_name != "topk":
        raise ValueError(f"activation function {act!r} is not supported")
    arch, skip = _FROM_LENS[arch_name]
    meta = lens.get("metadata") or {}
    hook = meta.get("hook_name") or lens.get("hook_name") or lens.get("hook_point")
    model = meta.get("model_name") or lens.get("model_name")
    d_in, d_sae = int(lens["d_in"]), int(lens["d_sae"])
    d_out = int(lens.get("d_out", d_in))
    kw = dict(d_in=d_in, d_sae=d_sae, hooks_in=(hook,) if hook else (), models=(model,) if model else (),
              apply_b_dec_to_input=bool(lens.get("apply_b_dec_to_input", True)))
    if arch_name.endswith("transcoder"):
        out = meta.get("hook_name_out")
        kw.update(d_out=d_out, skip=skip, hooks_out=(out,) if out else ("transcoder_output",))
    if arch == "mpsae":
        if lens.get("residual_threshold", 1e-2) != 0 or lens.get("stop_on_duplicate_support", True) \
                or lens.get("max_iterations") is None:
            raise ValueError("only fixed-step matching_pursuit SAEs are supported (max_iterations set, "
                             "residual_threshold = 0, stop_on_duplicate_support = false): mpsae runs exactly k steps")
        kw["k"] = int(lens["max_iterations"])
    if arch == "topk":
        kw["k"] = int(lens["k"])
        if lens.get("rescale_acts_by_decoder_norm"):
            raise ValueError("TopK SAEs with rescale_acts_by_decoder_norm are not supported")
    return config_class(arch)(**kw)
