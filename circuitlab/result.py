"""Result types: patching effects (``Result``), direct effects read off one run
(``DirectEffects``: DLA, logit lens) and head-detector scores (``HeadScores``); all saveable,
plottable and tabulated the same way, but compared only with their own kind."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch

from circuitlab.io import atomic_files, check_format, format_tag, result_files


@dataclass
class Cost:
    """What a result cost to compute."""

    forward_passes: int = 0
    """Forward passes run (a pass over a batch of K patched copies counts once)."""
    backward_passes: int = 0
    seconds: float = 0.0


class NodeValues:
    """What every per-node result shares: a grid of values with a label per node.

    Subclasses are dataclasses with at least ``values`` (the grid), ``labels`` (the nodes in
    ``values.flatten()`` order), ``dims`` (axis names), ``cost``, ``extras`` (further tensors)
    and ``meta``; what the values *mean* is the subclass's: patching effects (:class:`Result`),
    direct effects read off one run (:class:`DirectEffects`) or head-detector scores
    (:class:`HeadScores`)."""

    values: torch.Tensor
    labels: list[str]
    dims: tuple[str, ...]
    cost: Cost
    extras: dict[str, torch.Tensor]
    meta: dict[str, Any]

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

        return result_heatmap(self, title or self.title())

    def title(self) -> str:
        """Default plot title."""
        return type(self).__name__

    def save(self, path: str | Path) -> Path:
        """Write ``path``.safetensors (tensors) and ``path``.json (everything else); return the
        .json path. Only a ``.json`` or ``.safetensors`` ending is taken as a suffix, so
        ``ioi_lr0.1`` and ``ioi_lr0.2`` are two results. Both files are staged first and then
        renamed into place; a failed save leaves the previous pair whole, and both carry one
        ``save_id`` so ``load`` refuses a pair from two different saves."""
        from safetensors.torch import save_file

        js, st = result_files(path)
        save_id = uuid.uuid4().hex
        tensors = {"values": self.values.detach().cpu().contiguous()}
        tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in self.extras.items()})
        info: dict[str, Any] = {"format": format_tag("result")}
        if type(self) is not Result:
            info["type"] = type(self).__name__
        for f in fields(self):  # type: ignore[arg-type]
            if f.name not in ("values", "extras"):
                v = getattr(self, f.name)
                info[f.name] = vars(v) if isinstance(v, Cost) else list(v) if isinstance(v, tuple) else v
        info["save_id"] = save_id
        text = json.dumps(info, indent=1, default=str)
        with atomic_files(st, js) as (tmp_st, tmp_js):
            save_file(tensors, str(tmp_st), metadata={"save_id": save_id})
            tmp_js.write_text(text)
        return js

    @staticmethod
    def load(path: str | Path) -> "NodeValues":
        """Read a result saved by :meth:`save` (as the type it was saved as)."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        js, st = result_files(path)
        try:
            tensors = load_file(str(st))
            with safe_open(str(st), framework="pt") as f:
                st_id = (f.metadata() or {}).get("save_id")
        except (SafetensorError, OSError, Exception) as e:
            raise ValueError(f"{st} is not a readable safetensors file ({e})") from e
        info = json.loads(js.read_text())
        check_format(info, "result", js)
        if info.get("save_id") != st_id:
            raise ValueError(f"{js} and {st} come from two different saves (an interrupted save or a file "
                             "copied from elsewhere): save the result again")
        types = {c.__name__: c for c in (Result, DirectEffects, HeadScores)}
        cls = types.get(info.get("type", "Result"))
        if cls is None:
            raise ValueError(f"{js} holds a {info['type']!r} result, which this version cannot read")
        extras = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
        kw = {f.name: info[f.name] for f in fields(cls) if f.name in info and f.name not in ("values", "extras")}
        kw.update(dims=tuple(info["dims"]), cost=Cost(**info["cost"]))
        return cls(values=tensors["values"], extras=extras, **kw)

    def _top_text(self) -> str:
        return ", ".join(f"{l}={v:+.3g}" for l, v in self.top(3))


@dataclass
class Result(NodeValues):
    """Per-node patching effects of one method on one task.

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

    def title(self) -> str:
        return f"{self.method} · {self.sites} · {self.direction} · {self.metric}"

    def __repr__(self) -> str:
        return (f"Result({self.method} {self.sites} {self.direction}, {self.metric}, grid "
                f"{tuple(self.values.shape)} {self.dims}, baseline {self.baseline:.4g}; top: {self._top_text()})")


@dataclass
class DirectEffects(NodeValues):
    """Direct effects on the logit difference read off one run, with nothing patched.

    DLA (``method='dla'``): each component's share of the answer-minus-wrong logit difference
    through the final norm (frozen) and the unembedding; the components and ``extras`` sum to
    ``baseline``. Logit lens (``method='logit_lens'``): the logit difference each layer's
    residual stream would give if it were the last. Neither counts what a component does
    through later layers, so these values are not patching effects."""

    values: torch.Tensor
    labels: list[str]
    dims: tuple[str, ...]
    """Axis names of ``values``, e.g. ('layer', 'head')."""
    method: str
    """'dla' or 'logit_lens'."""
    by: str
    """How DLA groups components ('layer', 'head', 'neuron', 'source'); 'resid' for the lens."""
    tokens: str
    """Which prompts were run: 'clean' or 'corrupt'."""
    metric: str
    """What the values are shares of ('logit_diff')."""
    baseline: float
    """The run's real logit difference (mean over prompts): what DLA's components sum to and
    what the lens's last layer reads."""
    cost: Cost = field(default_factory=Cost)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """DLA: every component outside the grid (embeddings, biases, ...), so that all sum to
    ``baseline``."""
    meta: dict[str, Any] = field(default_factory=dict)

    def title(self) -> str:
        return f"{self.method} by {self.by} · {self.tokens} prompts · {self.metric}"

    def __repr__(self) -> str:
        return (f"DirectEffects({self.method} by {self.by}, {self.tokens} prompts, {self.metric} {self.baseline:.4g}, "
                f"grid {tuple(self.values.shape)} {self.dims}; top: {self._top_text()})")


@dataclass
class HeadScores(NodeValues):
    """How strongly each head behaves as each kind of head (previous-token, duplicate-token,
    induction, copying): attention on repeated random tokens and a weight-based copying score,
    not an effect on any task's metric."""

    values: torch.Tensor
    """[kind, layer, head] scores."""
    labels: list[str]
    """``kind:L{layer}.H{head}`` per entry."""
    dims: tuple[str, ...] = ("kind", "layer", "head")
    method: str = "head_detectors"
    cost: Cost = field(default_factory=Cost)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    """'kinds' (the names along the first axis) and 'repeat_length'."""

    @property
    def kinds(self) -> list[str]:
        return list(self.meta["kinds"])

    def title(self) -> str:
        return "head detectors: " + ", ".join(self.kinds)

    def __repr__(self) -> str:
        return f"HeadScores({', '.join(self.kinds)}; grid {tuple(self.values.shape)}; top: {self._top_text()})"
