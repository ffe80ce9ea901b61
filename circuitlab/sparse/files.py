"""Coder files in the SAE Lens layout: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

Why this layout: it is what published SAEs use, so ``load_coder`` opens them, and SAE Lens
opens ours (``SAE.load_from_disk``). Tensors use SAE Lens names and orientation: W_enc
[d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec, W_skip [d_out, d_in] for skip transcoders.
Our full config rides along under ``cfg.json``'s ``circuitlab`` key (SAE Lens ignores unknown
keys). What differs between architectures lives on each coder class, not here: its SAE Lens
names (``lens_sae``, ``lens_transcoder``, ``lens_skip_transcoder``), its extra cfg.json fields
(``lens_fields`` / ``lens_config``) and its tensors (``file_tensors`` / ``state_from_file``:
JumpReLU's ``threshold``, no encoder for tied coders). Architectures SAE Lens lacks
(crosscoders, TopK transcoders) keep the same layout with a ``circuitlab_*`` architecture name.
Only safetensors and JSON are read: no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from circuitlab.io import atomic_folder
from circuitlab.sparse.base import CoderConfig, SparseCoder, coder_class, config_class, load_architectures, make_coder

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAE_LENS_VERSION = "6.0.0"
"""The cfg.json format version we write (SAE Lens >= 6 reads it without conversion)."""


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
    t = {k: v.detach().float().contiguous().cpu() for k, v in coder.file_tensors().items()}
    lens = {
        "architecture": coder.lens_architecture(),
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
    lens.update(coder.lens_fields())
    if not cfg.autoencoder:
        lens["d_out"] = cfg.d_out_ * cfg.n_targets_
    text = json.dumps(lens, indent=1)
    with atomic_folder(path) as tmp:
        save_file(t, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(text)
    return path


def lens_names() -> dict[str, tuple[type[SparseCoder], bool, bool]]:
    """SAE Lens architecture name -> (coder class, transcoder?, skip connection?), from the
    names each registered architecture declares."""
    out: dict[str, tuple[type[SparseCoder], bool, bool]] = {}
    for cls in load_architectures().values():
        for name, transcoder, skip in ((cls.lens_sae, False, False), (cls.lens_transcoder, True, False),
                                       (cls.lens_skip_transcoder, True, True)):
            if not name:
                continue
            if name in out and out[name][0] is not cls:
                raise ValueError(f"architectures {out[name][0].arch!r} and {cls.arch!r} both claim SAE Lens's "
                                 f"{name!r}: set the subclass's lens_* names (\"\" for none)")
            out[name] = (cls, transcoder, skip)
    return out


def load_coder(path: str | Path, device: str | torch.device = "cpu") -> SparseCoder:
    """Open a coder folder written by ``save_coder`` or by SAE Lens (``SAE.save_model``)."""
    from safetensors.torch import load_file

    path = Path(path)
    lens = _read_cfg(path)
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


def _read_cfg(path: Path) -> dict:
    """cfg.json of coder folder ``path`` as a dict."""
    if not (path / CFG_FILE).exists() or not (path / WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"{path} is not a coder folder: expected {CFG_FILE} and {WEIGHTS_FILE}")
    try:
        return json.loads((path / CFG_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path / CFG_FILE} is not valid JSON ({e}); re-export the coder") from e


def load_config(path: str | Path) -> CoderConfig:
    """The config of the coder in folder ``path`` (its sites, shapes, architecture), without
    reading the weights: to pick coders from a folder before loading them."""
    path = Path(path)
    try:
        return _config_from(_read_cfg(path))
    except KeyError as e:
        raise ValueError(f"{path}: {CFG_FILE} lacks the entry {e}") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _config_from(lens: dict) -> CoderConfig:
    """The coder config a cfg.json dict describes (ours, or converted from SAE Lens's)."""
    if "circuitlab" in lens:
        d = dict(lens["circuitlab"])
        d["arch"] = coder_class(d["arch"]).inference_arch or d["arch"]
        return config_class(d["arch"]).from_dict(d)
    return _cfg_from_lens(lens)


def _coder_from(lens: dict, t: dict) -> SparseCoder:
    """A coder built from a cfg.json dict and its weight tensors."""
    coder = make_coder(_config_from(lens))
    missing, unexpected = coder.load_state_dict(coder.state_from_file(t), strict=False)
    missing = [m for m in missing if m not in ("in_scale", "out_scale")]
    if missing:
        raise ValueError(f"weights missing {missing}")
    return coder


def _cfg_from_lens(lens: dict) -> CoderConfig:
    arch_name = lens.get("architecture", "standard")
    names = lens_names()
    if arch_name not in names:
        raise ValueError(f"SAE Lens architecture {arch_name!r} is not supported; supported: {', '.join(names)}")
    norm = lens.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise ValueError(f"normalize_activations={norm!r} is not supported: fold the scaling into the weights "
                         "first (SAE Lens: sae.fold_activation_norm_scaling_factor)")
    cls, transcoder, skip = names[arch_name]
    fields = cls.lens_config(lens)
    meta = lens.get("metadata") or {}
    hook = meta.get("hook_name") or lens.get("hook_name") or lens.get("hook_point")
    model = meta.get("model_name") or lens.get("model_name")
    d_in, d_sae = int(lens["d_in"]), int(lens["d_sae"])
    d_out = int(lens.get("d_out", d_in))
    kw = dict(d_in=d_in, d_sae=d_sae, hooks_in=(hook,) if hook else (), models=(model,) if model else (),
              apply_b_dec_to_input=bool(lens.get("apply_b_dec_to_input", True)))
    if transcoder:
        out = meta.get("hook_name_out")
        kw.update(d_out=d_out, skip=skip, hooks_out=(out,) if out else ("transcoder_output",))
    return cls.config_cls(**kw, **fields)
