"""Circuits (sets of nodes or edges) and how to choose them from scores.

A node circuit holds component labels (``embed``, ``L1.H3``, ``L2.mlp``), optionally at a
position (``L1.H3@4``, ``L1.H3@S2`` with a task role). An edge circuit holds edge labels
(``L0.H1->L1.H0.k``), optionally at a position. Node scores from any method (a ``Result`` of
``cl.patch`` over ``heads``/``heads_all``/``mlp_out``) and edge scores (``EdgeScores``) feed the
same selection functions: ``top_n``, ``threshold`` and ``greedy``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

from circuitlab.circuits.scores import EdgeScores
from circuitlab.result import DirectEffects, Result
from circuitlab.io import atomic_write, check_format, format_tag, result_files

Scores = Union[EdgeScores, Result, DirectEffects, dict]


@dataclass(frozen=True)
class Circuit:
    """A set of nodes or of edges; everything outside it is ablated when it is evaluated."""

    kind: str
    """'nodes' or 'edges'."""
    items: frozenset
    """Node labels ('L1.H3', 'L2.mlp', 'embed', optionally '@pos') or edge labels ('u->v[@pos]')."""

    def __post_init__(self) -> None:
        if self.kind not in ("nodes", "edges"):
            raise ValueError(f"a circuit holds 'nodes' or 'edges', not {self.kind!r}")
        object.__setattr__(self, "items", frozenset(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, label: str) -> bool:
        return label in self.items

    def nodes(self) -> set[str]:
        """Components touched: the nodes themselves, or the senders and receivers' components."""
        if self.kind == "nodes":
            return {i.split("@")[0] for i in self.items}
        out = set()
        for e in self.items:
            s, r = e.split("@")[0].split("->")
            out.add(s)
            out.add(receiver_component(r))
        return out

    def save(self, path: str | Path) -> Path:
        path = result_files(path)[0]
        text = json.dumps({"format": format_tag("circuit"), "kind": self.kind, "items": sorted(self.items)}, indent=1)
        atomic_write(path, lambda p: Path(p).write_text(text))
        return path

    @staticmethod
    def load(path: str | Path) -> "Circuit":
        path = result_files(path)[0]
        if not path.exists():
            raise FileNotFoundError(f"no circuit file {path}")
        info = json.loads(path.read_text())
        check_format(info, "circuit", path)
        return Circuit(info["kind"], frozenset(info["items"]))

    def __repr__(self) -> str:
        shown = sorted(self.items)[:6]
        return f"Circuit({self.kind}, {len(self)}: {', '.join(shown)}{' ...' if len(self) > 6 else ''})"


def receiver_component(receiver: str) -> str:
    """'L1.H0.q' -> 'L1.H0' (the head), 'L1.mlp' -> 'L1.mlp', 'logits' -> 'logits'."""
    m = re.fullmatch(r"(L\d+\.H\d+)\.[qkv]", receiver)
    return m.group(1) if m else receiver


_NODE = re.compile(r"(?:L(?P<l>\d+)\.(?:H(?P<h>\d+)|(?P<mlp>mlp_out|mlp))|(?P<embed>embed))(?:@(?P<pos>\w+))?")


def node_label(label: str) -> str:
    """A node-score label as a circuit node: 'L2.mlp_out@4' -> 'L2.mlp@4'; 'L1.H3' stays.
    Labels that are not components (resid_pre, q/k/v, neurons) raise ValueError."""
    m = _NODE.fullmatch(label)
    if not m:
        raise ValueError(f"{label!r} is not a circuit component; node circuits are built from heads "
                         "(sites 'heads' or 'heads_all'), 'mlp_out' and 'embed'")
    base = "embed" if m["embed"] else f"L{m['l']}.H{m['h']}" if m["h"] is not None else f"L{m['l']}.mlp"
    return base + (f"@{m['pos']}" if m["pos"] is not None else "")


def as_table(scores: Scores) -> tuple[str, list[str], torch.Tensor]:
    """(kind, labels, values) of edge scores, node scores (a Result, or DLA by head) or
    {label: value}."""
    if isinstance(scores, EdgeScores):
        labels, values = scores.labels_values()
        return "edges", labels, values.float()
    if isinstance(scores, (Result, DirectEffects)):
        return "nodes", [node_label(l) for l in scores.labels], scores.flat.float()
    if isinstance(scores, dict):
        labels = list(scores)
        kind = "edges" if labels and "->" in labels[0] else "nodes"
        if kind == "nodes":
            labels = [node_label(l) for l in labels]
        return kind, labels, torch.tensor([float(v) for v in scores.values()])
    raise TypeError(f"cannot select a circuit from {type(scores).__name__}; give EdgeScores, a Result, DLA or a dict")


def ranking(scores: Scores, by_abs: bool = True) -> tuple[str, list[str]]:
    """(kind, labels ordered from most to least important)."""
    kind, labels, v = as_table(scores)
    order = (v.abs() if by_abs else v).argsort(descending=True, stable=True).tolist()
    return kind, [labels[i] for i in order]


def top_n(scores: Scores, n: int, by_abs: bool = True) -> Circuit:
    """The ``n`` highest-scoring nodes or edges (by magnitude unless ``by_abs=False``)."""
    kind, ordered = ranking(scores, by_abs)
    return Circuit(kind, frozenset(ordered[: max(0, n)]))


def threshold(scores: Scores, t: float, by_abs: bool = True) -> Circuit:
    """Every node or edge whose score (magnitude) is at least ``t``."""
    kind, labels, v = as_table(scores)
    keep = (v.abs() if by_abs else v) >= t
    return Circuit(kind, frozenset(l for l, k in zip(labels, keep.tolist()) if k))


def greedy(scores: Scores, n: int, by_abs: bool = True) -> Circuit:
    """Connected greedy growth (Hanna et al. 2024): start at the logits and repeatedly add the
    highest-scoring edge whose receiver's component is already in the circuit, so every edge
    has a path to the logits. For node scores use :func:`circuitlab.circuits.evaluate.greedy_nodes`
    (greedy by measured faithfulness)."""
    kind, labels, v = as_table(scores)
    if kind != "edges":
        raise ValueError("greedy(...) grows connected edge circuits; for node scores use "
                         "circuitlab.circuits.evaluate.greedy_nodes (measured faithfulness)")
    import heapq

    key = (v.abs() if by_abs else v).tolist()
    by_component: dict[str, list[int]] = {}
    for i, l in enumerate(labels):
        r = l.split("@")[0].split("->")[1]
        by_component.setdefault(receiver_component(r), []).append(i)
    reached: set[str] = set()
    heap: list[tuple[float, int]] = []

    def reach(component: str) -> None:
        if component not in reached:
            reached.add(component)
            for i in by_component.get(component, []):
                heapq.heappush(heap, (-key[i], i))

    reach("logits")
    chosen: list[str] = []
    while heap and len(chosen) < n:
        _, i = heapq.heappop(heap)
        chosen.append(labels[i])
        reach(labels[i].split("->")[0])
    return Circuit("edges", frozenset(chosen))
