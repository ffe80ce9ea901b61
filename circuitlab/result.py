"""The one result type every method returns: comparable, saveable, plottable."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch


@dataclass
class Cost:
    """What a result cost to compute."""

    forward_passes: int = 0
    """Forward passes run (a pass over a batch of K patched copies counts once)."""
    backward_passes: int = 0
    seconds: float = 0.0


@dataclass
class Result:
    """Per-node effects of one method on one task.

    ``values`` is a grid (e.g. [layer, pos, head]) of effects: the metric under the
    intervention minus ``baseline`` (the unpatched run's metric). ``labels`` names the nodes
    in ``values.flatten()`` order.
    """

    values: torch.Tensor
    labels: list[str]
    dims: tuple[str, ...]
    """Axis names of ``values``, e.g. ('layer', 'pos', 'head')."""
    method: str
    sites: str
    direction: str
    """'denoising' (clean into corrupted) or 'noising' (corrupted into clean)."""
    metric: str
    baseline: float
    """Metric value of the unpatched base run (corrupted for denoising, clean for noising)."""
    cost: Cost = field(default_factory=Cost)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Further tensors, e.g. 'rank_score' (AtP* GradDrop) or 'per_prompt'."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def patched(self) -> torch.Tensor:
        """Raw metric values under each intervention (what TransformerLens' patching returns)."""
        return self.values + self.baseline

    @property
    def flat(self) -> torch.Tensor:
        return self.values.flatten()

    def top(self, k: int = 10, by_abs: bool = True) -> list[tuple[str, float]]:
        v = self.flat
        idx = (v.abs() if by_abs else v).argsort(descending=True)[:k]
        return [(self.labels[i], float(v[i])) for i in idx.tolist()]

    def to_frame(self):
        """A pandas DataFrame, one row per node (node, value, and its grid coordinates)."""
        import pandas as pd

        grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in self.values.shape], indexing="ij"), -1)
        rows = {"node": self.labels, "value": self.flat.tolist()}
        for i, d in enumerate(self.dims):
            rows[d] = grid.reshape(-1, len(self.dims))[:, i].tolist()
        for k, t in self.extras.items():
            if t.numel() == self.values.numel():
                rows[k] = t.flatten().tolist()
        return pd.DataFrame(rows)

    def plot(self, title: Optional[str] = None):
        from circuitlab.viz.heatmap import result_heatmap

        return result_heatmap(self, title)

    def save(self, path: str | Path) -> Path:
        """Write ``path``.safetensors (tensors) and ``path``.json (everything else), atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"values": self.values.detach().cpu().contiguous()}
        tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in self.extras.items()})
        info = {
            "format": "circuitlab.result/1", "labels": self.labels, "dims": list(self.dims),
            "method": self.method, "sites": self.sites, "direction": self.direction,
            "metric": self.metric, "baseline": self.baseline, "cost": vars(self.cost), "meta": self.meta,
        }
        st = path.with_suffix(".safetensors")
        atomic_write(st, lambda p: save_file(tensors, str(p)))
        atomic_write(path.with_suffix(".json"), lambda p: Path(p).write_text(json.dumps(info, indent=1, default=str)))
        return path.with_suffix(".json")

    @staticmethod
    def load(path: str | Path) -> "Result":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        try:
            tensors = load_file(str(path.with_suffix(".safetensors")))
        except (SafetensorError, OSError, Exception) as e:
            raise ValueError(f"{path.with_suffix('.safetensors')} is not a readable safetensors file ({e})") from e
        info = json.loads(path.with_suffix(".json").read_text())
        if info.get("format") != "circuitlab.result/1":
            raise ValueError(f"{path.with_suffix('.json')} is not a circuitlab result file")
        extras = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
        return Result(tensors["values"], info["labels"], tuple(info["dims"]), info["method"], info["sites"],
                      info["direction"], info["metric"], info["baseline"], Cost(**info["cost"]), extras, info["meta"])

    def __repr__(self) -> str:
        top = ", ".join(f"{l}={v:+.3g}" for l, v in self.top(3))
        return (f"Result({self.method} {self.sites} {self.direction}, {self.metric}, grid "
                f"{tuple(self.values.shape)} {self.dims}, baseline {self.baseline:.4g}; top: {top})")


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
