"""EdgeScores: one value per edge (optionally per position), saveable like Result."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from circuitlab.circuits.graph import ComponentGraph
from circuitlab.result import Cost
from circuitlab.io import atomic_files, check_format, format_tag, result_files



@dataclass
class EdgeScores:
    """Edge effects of one method on one task: ``values[s, r]`` (or ``[pos, s, r]``) is the change
    of the reported metric when sender s's write, as seen by receiver r only, takes its source
    value (or its first-order estimate). Entries that are not edges are 0 and masked."""

    values: torch.Tensor
    """[senders, receivers] or [positions, senders, receivers]."""
    senders: list[str]
    """Sender labels ('embed', 'L0.H3', 'L1.mlp'), axis -2."""
    receivers: list[str]
    """Receiver labels ('L1.H0.q', 'L1.H0.k', 'L1.mlp', 'logits'), axis -1."""
    mask: torch.Tensor
    """[senders, receivers] bool: which entries are edges."""
    method: str
    """'eap', 'eap-ig' or 'path' (exact edge patching)."""
    direction: str
    """'denoising' (clean into corrupted) or 'noising'."""
    metric: str
    """Name of the task metric whose change the values are."""
    baseline: float
    """Metric of the unpatched base run (corrupted for denoising, clean for noising)."""
    positions: Optional[list[int]] = None
    """Absolute positions of axis 0 when scores are kept per position; None when summed."""
    cost: Cost = field(default_factory=Cost)
    """Forward/backward passes and seconds."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Method settings (e.g. EAP-IG steps)."""

    @property
    def per_position(self) -> bool:
        return self.values.dim() == 3

    @property
    def summed(self) -> torch.Tensor:
        """[senders, receivers] values summed over positions."""
        return self.values.sum(0) if self.per_position else self.values

    def edges(self) -> list[tuple[str, float]]:
        """(label, value) of every edge (summed over positions), graph order."""
        v = self.summed
        return [(f"{self.senders[i]}->{self.receivers[j]}", float(v[i, j])) for i, j in self.mask.nonzero().tolist()]

    def labels_values(self) -> tuple[list[str], torch.Tensor]:
        """Edge labels and values (per position labels 'u->v@t' when kept per position)."""
        idx = self.mask.nonzero()
        if not self.per_position:
            return ([f"{self.senders[i]}->{self.receivers[j]}" for i, j in idx.tolist()],
                    self.values[idx[:, 0], idx[:, 1]])
        labels, vals = [], []
        for p, t in enumerate(self.positions):
            labels += [f"{self.senders[i]}->{self.receivers[j]}@{t}" for i, j in idx.tolist()]
            vals.append(self.values[p, idx[:, 0], idx[:, 1]])
        return labels, torch.cat(vals)

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        labels, v = self.labels_values()
        order = v.abs().argsort(descending=True)[:k].tolist()
        return [(labels[i], float(v[i])) for i in order]

    def to_frame(self):
        import pandas as pd

        labels, v = self.labels_values()
        return pd.DataFrame({"edge": labels, "value": v.tolist()})

    def save(self, path: str | Path) -> Path:
        """``path``.safetensors (values, mask) and ``path``.json (the rest), written together or not at all."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"values": self.values.detach().cpu().contiguous(), "mask": self.mask.cpu().contiguous()}
        info = {"format": format_tag("edges"), "senders": self.senders, "receivers": self.receivers,
                "method": self.method,
                "direction": self.direction, "metric": self.metric, "baseline": self.baseline,
                "positions": self.positions, "cost": vars(self.cost), "meta": self.meta}
        js, st = result_files(path)
        with atomic_files(js, st) as (js_tmp, st_tmp):
            save_file(tensors, str(st_tmp))
            Path(js_tmp).write_text(json.dumps(info, indent=1, default=str))
        return js

    @staticmethod
    def load(path: str | Path) -> "EdgeScores":
        from safetensors.torch import load_file

        js, st = result_files(path)
        if not js.exists():
            raise FileNotFoundError(f"no edge-score file {js}")
        info = json.loads(js.read_text())
        check_format(info, "edges", js, "edge-score")
        try:
            t = load_file(str(st))
        except Exception as e:
            raise ValueError(f"{st} is not a readable safetensors file ({e})") from e
        return EdgeScores(t["values"], info["senders"], info["receivers"], t["mask"], info["method"],
                          info["direction"], info["metric"], info["baseline"], info["positions"],
                          Cost(**info["cost"]), info["meta"])

    def __repr__(self) -> str:
        top = ", ".join(f"{l}={v:+.3g}" for l, v in self.top(3))
        return (f"EdgeScores({self.method} {self.direction}, {self.metric}, {int(self.mask.sum())} edges"
                f"{' x %d positions' % len(self.positions) if self.per_position else ''}; top: {top})")


def make_scores(graph: ComponentGraph, values: torch.Tensor, method: str, direction: str, task,
                baseline: float, positions=None, cost: Cost | None = None, meta=None) -> EdgeScores:
    mask = graph.mask.to(values.device)
    values = values * mask if values.dim() == 2 else values * mask[None]
    return EdgeScores(values.detach().cpu(), [str(s) for s in graph.senders], [str(r) for r in graph.receivers],
                      graph.mask.clone(), method, direction, task.metric.name, float(baseline), positions,
                      cost or Cost(), meta or {})


def compare_edges(estimate: EdgeScores, reference: EdgeScores, ks: tuple[int, ...] = (10, 50)) -> dict:
    """Agreement of edge scores with a reference (usually exact edge patching) over all edges:
    Pearson, Spearman, and recall of the reference's top-k (by magnitude) in the estimate's top-k."""
    from circuitlab.agreement import pearson, rank

    if estimate.senders != reference.senders or estimate.receivers != reference.receivers:
        raise ValueError("edge scores come from different graphs")
    m = reference.mask
    a, b = estimate.summed[m].double(), reference.summed[m].double()
    out = {"edges": int(m.sum()), "pearson": pearson(a, b), "spearman": pearson(rank(a), rank(b))}
    for k in ks:
        k = min(k, len(a))
        ta = set(a.abs().argsort(descending=True)[:k].tolist())
        tb = set(b.abs().argsort(descending=True)[:k].tolist())
        out[f"recall@{k}"] = len(ta & tb) / k
    return out
