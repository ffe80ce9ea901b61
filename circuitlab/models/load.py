"""``circuitlab.load``: a bundled zoo name, a local Hugging Face folder, or a hub name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from circuitlab.models.checks import check_decomposition, check_fast_paths
from circuitlab.models.model import Model


def load(
    name: str,
    device: Optional[str | torch.device] = None,
    dtype: torch.dtype | str = torch.float32,
    device_map: Optional[str | dict] = None,
    check: bool = True,
) -> Model:
    """Load a model wrapped in TransformerLens 4's TransformerBridge.

    ``name`` is a bundled zoo model (``circuitlab zoo list``), a local folder holding a Hugging
    Face model (config.json + safetensors + tokenizer), or a hub id (needs a network or a filled
    HF cache). ``device`` defaults to CUDA when present; ``device_map`` is passed through to
    place layers on several GPUs. ``check`` verifies the residual decomposition on a short input.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if device is None and device_map is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = _resolve(name)
    _check_weights_file(path)
    own_tok = _own_tokenizer(path)
    try:
        bridge = TransformerBridge.boot_transformers(
            str(path), device=device, dtype=dtype, device_map=device_map, tokenizer=own_tok
        )
    except OSError as e:
        raise OSError(
            f"could not load model {name!r}: {e}. Pass a bundled zoo name "
            f"({', '.join(_zoo_names()) or 'none installed'}), a local Hugging Face folder, or a "
            "hub id with network access (or HF_HUB_OFFLINE=1 and a filled cache)."
        ) from e
    bridge.eval()
    if own_tok is not None:
        bridge.tokenizer = own_tok
    model = _describe(bridge, str(name))
    if own_tok is not None:
        model.tokenizer = own_tok
    if check:
        check_decomposition(model)
        check_fast_paths(model)
    return model


def _own_tokenizer(path):
    """A folder's own tokenizer.json when its config asks for the generic fast tokenizer.

    transformers 5 picks the tokenizer class from the model type (Qwen2Tokenizer for a Qwen2
    config), which rebuilds a BPE pipeline and ignores a word-level tokenizer.json."""
    import json

    if not isinstance(path, Path) or not (path / "tokenizer.json").exists():
        return None
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    if cfg.get("tokenizer_class") not in ("PreTrainedTokenizerFast", "TokenizersBackend"):
        return None
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


def _zoo_names() -> list[str]:
    try:
        from circuitlab.zoo import list_models

        return list_models()
    except Exception:  # the zoo may be absent in a partial install
        return []


def _resolve(name: str) -> Path | str:
    from circuitlab.models import fetch

    if name in fetch.REAL_MODELS:
        if not fetch.is_fetched(name):
            raise fetch.not_fetched_error(name)
        return fetch.model_folder(name)
    if name in _zoo_names():
        from circuitlab.zoo import model_dir

        return Path(model_dir(name))
    p = Path(os.path.expanduser(str(name)))
    if p.exists():
        if not (p / "config.json").exists():
            raise FileNotFoundError(
                f"{p} has no config.json: point load() at a Hugging Face model folder "
                "(config.json, model.safetensors, tokenizer files)"
            )
        return p
    if "/" not in str(name) and not str(name).startswith((".", "~")):
        zoo = _zoo_names()
        if zoo:
            raise ValueError(
                f"unknown model {name!r}: not a bundled zoo model ({', '.join(zoo)}), a fetchable "
                f"model ({', '.join(fetch.REAL_MODELS)}) nor a local folder; for a hub model pass "
                "its full id, e.g. 'openai-community/gpt2'"
            )
    return str(name)


def _check_weights_file(path: Path | str) -> None:
    """Fail early and clearly on corrupted or pickle-only weights (we never unpickle)."""
    if not isinstance(path, Path):
        return
    st = sorted(path.glob("*.safetensors"))
    if not st:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise ValueError(
                f"{path} holds only pickle weights (.bin/.pt); circuitlab never unpickles. "
                "Convert them to safetensors (model.save_pretrained(dir, safe_serialization=True))."
            )
        raise FileNotFoundError(f"{path} has no .safetensors weights file")
    from safetensors import safe_open

    for f in st:
        try:
            with safe_open(str(f), framework="pt") as h:
                h.keys()
        except Exception as e:
            raise ValueError(
                f"weights file {f} is corrupted or not safetensors ({e}); re-download or "
                "re-export it with save_pretrained(..., safe_serialization=True)"
            ) from e


def _describe(bridge, name: str) -> Model:
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    norm = str(getattr(cfg, "normalization_type", "LN") or "LN")
    norm = "RMS" if "RMS" in norm.upper() else "LN"
    owner, attr = _find_layer_list(bridge)
    return Model(
        bridge=bridge,
        tokenizer=bridge.tokenizer,
        name=name,
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_mlp=int(getattr(cfg, "d_mlp", 0) or 0),
        d_vocab=int(cfg.d_vocab),
        norm=norm,
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        post_attn_norm=hasattr(bridge.blocks[0], "ln1_post"),
        layers=getattr(owner, attr) if owner is not None else None,
        layers_owner=owner,
        layers_attr=attr,
    )


def _find_layer_list(bridge):
    """The Hugging Face module attribute that holds the block ModuleList (e.g. transformer.h)."""
    blocks = list(bridge.blocks)
    for module in bridge.original_model.modules():
        for attr, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == len(blocks):
                if all(a is b for a, b in zip(child, blocks)):
                    return module, attr
    return None, ""
