"""Resumable training state as safetensors + JSON (never pickle).

Why one file: the model weights, the AdamW moments and the JSON bookkeeping (step, tokens,
loss curve, elapsed time) live in a single ``state.safetensors`` (JSON in its metadata), so
one ``os.replace`` switches atomically from the previous state to the next one; a run
killed mid-write leaves the previous state intact. ``state.json`` is a human-readable copy
of the metadata, written after the tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

STATE_FILE = "state.safetensors"
"""Name of the state file inside the training work directory."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_state(work_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
               meta: dict[str, Any]) -> None:
    """Write model parameters, optimizer moments and ``meta`` atomically."""
    work_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    params = list(model.named_parameters())
    for i, (name, p) in enumerate(params):
        tensors[f"model/{name}"] = p.detach().contiguous().clone()
        for key, val in opt.state.get(p, {}).items():
            if torch.is_tensor(val):
                tensors[f"opt/{i}/{key}"] = val.detach().reshape(-1).contiguous().clone()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    full = dict(meta, param_names=[n for n, _ in params], param_groups=groups)
    text = json.dumps(full)
    tmp = work_dir / (STATE_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"state": text})
    os.replace(tmp, work_dir / STATE_FILE)
    _atomic_write_text(work_dir / "state.json", json.dumps(full, indent=1))


def load_state(work_dir: Path, model: torch.nn.Module,
               opt: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore into ``model`` and ``opt``; returns the metadata, or None if no state."""
    path = work_dir / STATE_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
        params = list(model.named_parameters())
        if meta["param_names"] != [n for n, _ in params]:
            raise ValueError(f"{path} was written for a different architecture; delete it "
                             "or pass resume=False to start over")
        keys = set(f.keys())
        with torch.no_grad():
            for i, (name, p) in enumerate(params):
                p.copy_(f.get_tensor(f"model/{name}"))
                st = {}
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    k = f"opt/{i}/{key}"
                    if k in keys:
                        t = f.get_tensor(k)
                        st[key] = t.reshape(()) if key == "step" else t.reshape(p.shape)
                if st:
                    opt.state[p] = st
    for g, saved in zip(opt.param_groups, meta["param_groups"]):
        for k, v in saved.items():
            g[k] = tuple(v) if isinstance(v, list) else v
    return meta
