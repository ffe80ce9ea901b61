"""The attribution graph: nodes, adjacency, bias terms; sub-graphs; save and load.

Node order (circuit-tracer's): [selected features, error nodes (layer-major, L*T), token
embeddings (T), logits (K)]. ``adjacency[t, s]`` is the direct effect of source s on target t
in the local replacement model; rows exist for features and logits. Active features that were
not selected (cap, sub-graph) are merged into the error node of their (layer, position), so
``adjacency[t].sum() + bias[t] == preact[t]`` holds for every target of every (sub-)graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from circuitlab.io import atomic_folder, check_format, format_tag



@dataclass
class Graph:
    """An attribution graph for one prompt."""

    prompt: str
    tokens: torch.Tensor
    """[T] input token ids."""
    token_strs: list[str]
    n_layers: int
    active_features: torch.Tensor
    """[n_active, 3] (layer, pos, feature) of every active feature."""
    activations: torch.Tensor
    """[n_active] their activations."""
    selected: torch.Tensor
    """[n_sel] indices into ``active_features``: the feature nodes, in node order."""
    logit_tokens: torch.Tensor
    """[K] vocabulary ids of the logit targets."""
    logit_strs: list[str]
    logit_probs: torch.Tensor
    """[K] their probabilities (the influence weights)."""
    adjacency: torch.Tensor
    """[N, N] rows = targets, columns = sources."""
    bias: torch.Tensor
    """[N] bias contribution to each target (computed in a frozen run with every source removed)."""
    preact: torch.Tensor
    """[N] each target's pre-activation (features) or demeaned logit (logits); 0 elsewhere."""
    scan: str = "transcoders"
    """Which transcoders built the graph (Neuronpedia's ``scan``)."""
    model_name: str = ""
    meta: dict = field(default_factory=dict)
    """Config, timing, cost (forward/backward passes), feature labels ``labels`` {node_id: text}."""

    # ---------------------------------------------------------------- layout
    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.selected.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_start + self.n_logits

    def kind(self, i: int) -> str:
        """'feature', 'error', 'token' or 'logit'."""
        if i < self.error_start:
            return "feature"
        if i < self.token_start:
            return "error"
        if i < self.logit_start:
            return "token"
        return "logit"

    def error_index(self, layer: int, pos: int) -> int:
        return self.error_start + layer * self.n_pos + pos

    def feature_info(self, i: int) -> tuple[int, int, int, float]:
        """(layer, pos, feature, activation) of feature node ``i``."""
        a = int(self.selected[i])
        l, p, f = (int(v) for v in self.active_features[a])
        return l, p, f, float(self.activations[a])

    def node_layer_pos(self, i: int) -> tuple[int, int]:
        """(layer, position) for plotting: tokens at layer -1, logits at n_layers."""
        k = self.kind(i)
        if k == "feature":
            l, p, _, _ = self.feature_info(i)
            return l, p
        if k == "error":
            return divmod(i - self.error_start, self.n_pos)
        if k == "token":
            return -1, i - self.token_start
        return self.n_layers, self.n_pos - 1

    def node_id(self, i: int) -> str:
        """Neuronpedia node ids: feature ``{layer}_{feature}_{pos}``, error ``0_{layer}_{pos}``,
        embedding ``E_{token}_{pos}``, logit ``{n_layers+1}_{token}_{pos}``."""
        k = self.kind(i)
        if k == "feature":
            l, p, f, _ = self.feature_info(i)
            return f"{l}_{f}_{p}"
        if k == "error":
            l, p = divmod(i - self.error_start, self.n_pos)
            return f"0_{l}_{p}"
        if k == "token":
            p = i - self.token_start
            return f"E_{int(self.tokens[p])}_{p}"
        j = i - self.logit_start
        return f"{self.n_layers + 1}_{int(self.logit_tokens[j])}_{self.n_pos - 1}"

    def label(self, i: int) -> str:
        """A short human label (feature labels from ``meta['labels']`` where set)."""
        k = self.kind(i)
        if k == "feature":
            l, p, f, a = self.feature_info(i)
            return self.meta.get("labels", {}).get(self.node_id(i), f"L{l} F{f} @{p} '{self.token_strs[p]}'")
        if k == "error":
            l, p = divmod(i - self.error_start, self.n_pos)
            return f"error L{l} @{p}"
        if k == "token":
            p = i - self.token_start
            return f"token '{self.token_strs[p]}' @{p}"
        j = i - self.logit_start
        return f"logit '{self.logit_strs[j]}' (p={float(self.logit_probs[j]):.3f})"

    def logit_weights(self) -> torch.Tensor:
        """[N] the logit probabilities on logit nodes, 0 elsewhere."""
        w = torch.zeros(self.n_nodes, dtype=self.adjacency.dtype)
        w[self.logit_start:] = self.logit_probs.to(w.dtype)
        return w

    # ---------------------------------------------------------------- sub-graphs
    def subgraph(self, keep: Sequence[int] | torch.Tensor) -> "Graph":
        """The graph with only feature nodes ``keep`` (node indices < n_features); every other
        feature is merged into the error node of its (layer, position): its outgoing edges are
        added to that error node's and its incoming edges dropped."""
        keep = torch.as_tensor(sorted(set(int(k) for k in keep)), dtype=torch.long)
        if keep.numel() and (keep.min() < 0 or keep.max() >= self.n_features):
            raise ValueError(f"feature node indices must lie in [0, {self.n_features})")
        dropped = torch.ones(self.n_features, dtype=torch.bool)
        dropped[keep] = False
        drop = dropped.nonzero()[:, 0]
        rest = torch.arange(self.n_features, self.n_nodes)
        order = torch.cat([keep, rest])
        A = self.adjacency[order]
        B = A[:, order].clone()
        lp = self.active_features[self.selected[drop]].long()
        err = (keep.numel() + lp[:, 0] * self.n_pos + lp[:, 1]).tolist()  # each dropped feature's error column
        for i, e in zip(drop.tolist(), err):  # in node order, one column at a time: the same sums on every device
            B[:, e] += A[:, i]
        return Graph(prompt=self.prompt, tokens=self.tokens, token_strs=self.token_strs, n_layers=self.n_layers,
                     active_features=self.active_features, activations=self.activations, selected=self.selected[keep],
                     logit_tokens=self.logit_tokens, logit_strs=self.logit_strs, logit_probs=self.logit_probs,
                     adjacency=B, bias=self.bias[order].clone(), preact=self.preact[order].clone(), scan=self.scan,
                     model_name=self.model_name, meta=dict(self.meta))

    def find_feature(self, layer: int, pos: int, feature: int) -> Optional[int]:
        """Node index of a feature, or None."""
        for i in range(self.n_features):
            l, p, f, _ = self.feature_info(i)
            if (l, p, f) == (layer, pos, feature):
                return i
        return None

    # ---------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """``path/graph.safetensors`` + ``path/graph.json``, all-or-nothing: a failed save leaves
        the previous graph in ``path`` whole."""
        from safetensors.torch import save_file

        path = Path(path)
        t = {k: getattr(self, k).detach().contiguous().cpu() for k in
             ("tokens", "active_features", "activations", "selected", "logit_tokens", "logit_probs", "adjacency",
              "bias", "preact")}
        meta = {"format": format_tag("graph"), "prompt": self.prompt, "token_strs": self.token_strs,
                "n_layers": self.n_layers,
                "logit_strs": self.logit_strs, "scan": self.scan, "model_name": self.model_name, "meta": self.meta}
        text = json.dumps(meta, indent=1)
        with atomic_folder(path) as tmp:
            save_file(t, str(tmp / "graph.safetensors"))
            (tmp / "graph.json").write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Graph":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "graph.json").exists() or not (path / "graph.safetensors").exists():
            raise FileNotFoundError(f"{path} is not a saved graph: expected graph.json and graph.safetensors")
        meta = json.loads((path / "graph.json").read_text())
        check_format(meta, "graph", path, "graph", also=("circuitlab-graph/1",))
        t = load_file(str(path / "graph.safetensors"))
        return cls(prompt=meta["prompt"], token_strs=meta["token_strs"], n_layers=meta["n_layers"],
                   logit_strs=meta["logit_strs"], scan=meta["scan"], model_name=meta["model_name"],
                   meta=meta["meta"], **t)
