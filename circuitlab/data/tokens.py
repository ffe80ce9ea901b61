"""Documents from a file of token ids (.npy or .safetensors), for corpora tokenized elsewhere.

Why two layouts: a 2-D array [documents, length] keeps the document boundaries it was made with
(each row is one document, truncated to ``ctx_len``); a 1-D array is one token stream, cut into
documents of ``ctx_len - 1`` tokens so that each fits ``ctx_len`` once BOS is put in front (a
trailing piece shorter than that is dropped). Ids are checked against the model's vocabulary
when they are tokenized for it (:func:`circuitlab.data.pad_documents`).
"""

from __future__ import annotations

from pathlib import Path

import torch

_DEFAULT_KEYS = ("input_ids", "tokens", "token_ids", "ids")


def load_ids(path: str | Path, key: str = "") -> torch.Tensor:
    """The integer tensor stored in ``path`` (for safetensors: ``key``, the only tensor, or a
    tensor named input_ids / tokens / token_ids / ids)."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".npy":
        import numpy as np

        if key:
            raise ValueError(f"tokens:{path}: a .npy file holds one array; drop the :{key} suffix")
        t = torch.from_numpy(np.load(path, allow_pickle=False))
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if not key:
                named = [k for k in _DEFAULT_KEYS if k in keys]
                if len(keys) == 1 or named:
                    key = keys[0] if len(keys) == 1 else named[0]
                else:
                    raise ValueError(f"tokens:{path} holds tensors {keys}; name one as tokens:{path}:NAME")
            if key not in keys:
                raise ValueError(f"tokens:{path} has no tensor {key!r} (it holds {keys})")
            t = f.get_tensor(key)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"tokens:{path}: token ids must be integers, found {t.dtype}")
    if t.dim() not in (1, 2) or t.numel() == 0:
        raise ValueError(f"tokens:{path}: expected a non-empty 1-D token stream or 2-D [documents, length] "
                         f"array, found shape {tuple(t.shape)}")
    if int(t.min()) < 0:
        raise ValueError(f"tokens:{path}: negative token id {int(t.min())}")
    return t.long()


def token_documents(path: str | Path, key: str = "", ctx_len: int = 64) -> torch.Tensor:
    """[documents, length] token ids: the rows of a 2-D file, or a 1-D stream cut into ctx_len - 1."""
    t = load_ids(path, key)
    if t.dim() == 2:
        return t
    size = max(1, ctx_len - 1)
    n = t.numel() // size
    if n == 0:
        raise ValueError(f"tokens:{path}: the stream holds {t.numel()} tokens, fewer than one document of "
                         f"{size} (ctx_len - 1)")
    return t[: n * size].view(n, size)
