"""``circuitlab.load``: a fetched or bundled model, a local Hugging Face folder, a
TransformerLens short name or a hub id, in any floating dtype; checked before use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from circuitlab.models.adapters import adapter_for
from circuitlab.models.checks import check_decomposition, check_fast_paths
from circuitlab.models.model import Model


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}
"""dtype names ``load`` accepts (as strings or the torch dtypes themselves)."""


def load(
    name: str,
    device: Optional[str | torch.device] = None,
    dtype: torch.dtype | str = torch.float32,
    device_map: Optional[str | dict] = None,
    check: bool = True,
    revision: Optional[str] = None,
) -> Model:
    """Load a model wrapped in TransformerLens 4's TransformerBridge.

    ``name`` is a fetched real model (``circuitlab models list``), a bundled zoo model
    (``circuitlab zoo list``), a local folder holding a Hugging Face model (config.json +
    safetensors + tokenizer), a TransformerLens short name ("gpt2-small", "pythia-70m",
    "gemma-2-2b"; see :func:`resolve_name`) or a hub id (needs a network or a filled HF cache).
    ``revision``: a hub branch, tag or commit, e.g. a training checkpoint ("step1000" for
    Pythia). ``dtype``: 'float32', 'bfloat16', 'float16' or 'float64' (load checks then allow
    that dtype's rounding). ``device`` defaults to CUDA when present; ``device_map`` is passed
    through to place layers on several GPUs. ``check`` verifies the residual decomposition
    and the forward-pass shortcuts on a short input.
    """
    from transformer_lens.model_bridge import TransformerBridge

    dtype = parse_dtype(dtype)
    device = _check_device(device)
    if device is None and device_map is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = _resolve(name)
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ValueError(f"revision must be a hub branch, tag or commit string (e.g. 'step1000'), got {revision!r}")
    if revision is not None and isinstance(path, Path):
        raise ValueError(f"revision={revision!r} selects a hub version, but {name!r} is a local "
                         "folder; drop revision or pass a hub id")
    if isinstance(path, Path):
        _check_weights_file(path)
        _check_architecture(path)
    own_tok = _own_tokenizer(path)
    try:
        bridge = TransformerBridge.boot_transformers(
            str(path), device=device, dtype=dtype, device_map=device_map, tokenizer=own_tok,
            revision=revision,
        )
    except OSError as e:
        raise _load_error(name, path, revision, e) from e
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


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch floating dtype from a name ('bfloat16', 'bf16', 'float16', ...) or a dtype."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype {dtype} is not a floating-point dtype; use one of "
                             f"{', '.join(_DTYPE_NAMES)}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key in DTYPES:
            return DTYPES[key]
    raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPE_NAMES)} "
                     f"(or aliases {', '.join(k for k in DTYPES if k not in _DTYPE_NAMES)})")


_DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")


def _check_device(device):
    """Parse ``device`` and refuse an accelerator this machine does not have."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r} ({e}); use 'cpu', 'cuda', 'cuda:1' or 'mps'") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here (no GPU, or a "
                             "CPU-only torch build); use device='cpu' or leave device unset")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA "
                             "device(s) are visible")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r} but Apple MPS is not available here; use device='cpu'")
    return device


def _load_error(name: str, path, revision: Optional[str], e: Exception) -> OSError:
    from circuitlab.models import fetch

    if isinstance(path, Path):
        return OSError(f"could not load model {name!r} from {path}: {e}")
    rev = f" at revision {revision!r}" if revision else ""
    alias = f" ({name!r} is TransformerLens' name for it)" if str(path) != str(name) else ""
    fetched = _fetched()
    return OSError(
        f"could not load hub model {path!r}{rev}{alias}: {e}\n"
        "The Hugging Face hub is unreachable or the model is not in the local HF cache. Offline, "
        f"use a fetched model ({', '.join(fetched) or 'none fetched yet'}; available: "
        f"{', '.join(fetch.REAL_MODELS)}, get one with `circuitlab models fetch NAME`), a bundled "
        f"zoo model ({', '.join(_zoo_names()) or 'none installed'}), or a local Hugging Face "
        "folder; or fill the HF cache on a networked machine and set HF_HUB_OFFLINE=1."
    )


def _fetched() -> list:
    try:
        from circuitlab.models import fetch

        return [n for n in fetch.REAL_MODELS if fetch.is_fetched(n)]
    except Exception:  # a broken cache folder must not hide the real error
        return []


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
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise ValueError(f"model name must be a non-empty string or path, got {name!r}")
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
    if _looks_like_path(str(name)):
        raise FileNotFoundError(
            f"no such folder {os.path.abspath(p)!r} (from {str(name)!r}); a path is never looked up "
            "on the hub. Check the path, or pass a hub id as 'owner/name'"
        )
    hub = tl_official_name(str(name))
    if hub is not None:
        return hub
    if "/" not in str(name):
        raise ValueError(
            f"unknown model {name!r}: not a fetchable model ({', '.join(fetch.REAL_MODELS)}), a "
            f"bundled zoo model ({', '.join(_zoo_names()) or 'none installed'}), a TransformerLens "
            "short name (e.g. 'gpt2-small', 'pythia-70m', 'gemma-2-2b') nor a local folder; for "
            "a hub model pass its full id, e.g. 'openai-community/gpt2'"
        )
    return str(name)


def resolve_name(name: str) -> Path | str:
    """Where ``load(name)`` will read from: a local folder (fetched, zoo or given path) as a
    Path, or a hub id as a string. TransformerLens short names map to their hub ids
    ('gpt2-small' -> 'gpt2', 'pythia-70m' -> 'EleutherAI/pythia-70m'). Reads no network."""
    return _resolve(name)


def tl_official_name(name: str) -> Optional[str]:
    """The hub id TransformerLens gives a short name or official name (case-insensitive), or
    None. Uses TransformerLens' own alias table so names match its documentation."""
    try:
        from transformer_lens.supported_models import get_official_model_name
    except ImportError:  # an older or trimmed TransformerLens: no alias table
        return None
    try:
        return get_official_model_name(name)
    except (ValueError, KeyError):
        return None


def _looks_like_path(name: str) -> bool:
    """A name that can only mean a local path: hub ids are exactly 'owner/name'."""
    if name.startswith((".", "~", "/", "\\")) or "\\" in name or os.path.isabs(name):
        return True
    return name.count("/") > 1 or name.endswith("/")


_ENCODER_HEADS = ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification",
                  "ForQuestionAnswering", "ForMultipleChoice", "ForPreTraining")


def _check_architecture(path: Path) -> None:
    """Refuse, before loading weights, models circuitlab's methods cannot run on."""
    import json

    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path / 'config.json'} is not readable JSON ({e})") from e
    archs = cfg.get("architectures") or []
    arch = ", ".join(archs) or cfg.get("model_type", "?")
    kind = None
    if cfg.get("is_encoder_decoder"):
        kind = "an encoder-decoder model"
    elif archs and all(a.endswith(_ENCODER_HEADS) for a in archs):
        kind = "a bidirectional encoder (masked LM or classifier), not a causal LM"
    if kind:
        raise ValueError(
            f"{path} holds {kind} ({arch}, model_type {cfg.get('model_type')!r}); circuitlab "
            "works on decoder-only causal language models (GPT-2, Llama, Gemma, Qwen, GPT-NeoX, "
            "...) with a single stack of blocks"
        )


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
    if not hasattr(bridge, "blocks") or not hasattr(bridge, "unembed"):
        arch = type(bridge.original_model).__name__
        raise ValueError(
            f"model {name!r} ({arch}) loaded, but TransformerBridge exposes no single block stack "
            "with an unembedding for it (encoder-decoder, encoder-only or multimodal wrapper). "
            "circuitlab works on decoder-only causal language models; load the text decoder "
            "alone (e.g. a *ForCausalLM checkpoint)"
        )
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    adapter = adapter_for(bridge)
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
        norm=adapter.norm_kind,
        parallel_attn_mlp=adapter.parallel_attn_mlp,
        post_attn_norm=adapter.post_attn_norm,
        adapter=adapter,
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
