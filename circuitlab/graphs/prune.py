"""Influence, pruning and the replacement / completeness scores (docs/methods.md section 2).

A_hat = |A| with rows normalised to sum 1; influence on the logits B = A_hat + A_hat^2 + ...
(the graph is a DAG, so the series ends after at most depth terms). Node score: the logit-
probability-weighted influence; edge score A_hat[t, s] * (infl_t + w_t). Scores follow
circuit-tracer's ``compute_graph_scores``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from circuitlab.graphs.graph import Graph


def normalize(A: torch.Tensor) -> torch.Tensor:
    """|A| with each row summing to 1 (rows without inputs stay 0)."""
    n = A.abs()
    return n / n.sum(1, keepdim=True).clamp_min(1e-10)


def influence(A_hat: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """weights @ (A_hat + A_hat^2 + ...): each node's total influence on the weighted targets."""
    cur = weights @ A_hat
    total = cur.clone()
    for _ in range(max_iter):
        if not bool(cur.any()):
            return total
        cur = cur @ A_hat
        total += cur
    raise RuntimeError("influence did not converge: the adjacency matrix has a cycle")


def find_threshold(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The smallest score kept when keeping the top scores covering ``fraction`` of the total."""
    s = torch.sort(scores.flatten(), descending=True).values
    cum = torch.cumsum(s, 0) / s.sum().clamp_min(1e-30)
    i = min(int(torch.searchsorted(cum, torch.tensor(fraction, dtype=cum.dtype))), len(cum) - 1)
    return s[i]


@dataclass
class Pruned:
    """Which nodes and edges survive pruning."""

    node_mask: torch.Tensor
    """[N] bool."""
    edge_mask: torch.Tensor
    """[N, N] bool (rows targets, columns sources)."""
    node_influence: torch.Tensor
    """[N] influence of each node on the logits (full graph)."""
    cumulative: torch.Tensor
    """[N] cumulative share of influence at each node's rank (Neuronpedia's ``influence``)."""

    def kept_features(self, graph: Graph) -> list[int]:
        return [i for i in range(graph.n_features) if bool(self.node_mask[i])]


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Keep nodes covering ``node_threshold`` of influence (tokens and logits always), then edges
    covering ``edge_threshold`` of edge influence, then drop nodes left without edges."""
    if not (0 < node_threshold <= 1 and 0 < edge_threshold <= 1):
        raise ValueError("thresholds must lie in (0, 1]")
    A = graph.adjacency
    w = graph.logit_weights()
    n_fixed = graph.n_pos + graph.n_logits
    nf = graph.n_features
    infl = influence(normalize(A), w)
    node_mask = infl >= find_threshold(infl, node_threshold)
    node_mask[-n_fixed:] = True
    P = A.clone()
    P[~node_mask] = 0
    P[:, ~node_mask] = 0
    P_hat = normalize(P)
    p_infl = influence(P_hat, w) + w
    edge_scores = P_hat * p_infl[:, None]
    edge_mask = edge_scores >= find_threshold(edge_scores, edge_threshold)
    edge_mask &= edge_scores > 0
    while True:
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:-n_fixed] &= edge_mask[:, :-n_fixed].any(0)  # features and errors need an outgoing edge
        node_mask[:nf] &= edge_mask[:nf].any(1)  # features need an incoming edge
        if torch.equal(old, node_mask):
            break
    s, idx = torch.sort(infl, descending=True)
    cum = torch.zeros_like(infl)
    cum[idx] = torch.cumsum(s, 0) / s.sum().clamp_min(1e-30)
    return Pruned(node_mask, edge_mask, infl, cum)


@dataclass
class Scores:
    """How much of the graph's influence goes through features rather than error nodes."""

    replacement: float
    """I_tokens / (I_tokens + I_errors), influence on the logits."""
    completeness: float
    """sum_i (1 - error share of i's inputs) (infl_i + w_i) / sum_i (infl_i + w_i)."""
    graph: str = "full"
    """Which graph: 'full', 'pruned' or 'sub'."""
    n_features: int = 0

    def as_dict(self) -> dict:
        return {"replacement": self.replacement, "completeness": self.completeness, "graph": self.graph,
                "n_features": self.n_features}


def scores(graph: Graph, which: str = "full") -> Scores:
    """Replacement and completeness scores of ``graph`` (say which graph it is)."""
    A_hat = normalize(graph.adjacency)
    w = graph.logit_weights()
    infl = influence(A_hat, w)
    e0, e1, t1 = graph.error_start, graph.token_start, graph.logit_start
    tok, err = infl[e1:t1].sum(), infl[e0:e1].sum()
    replacement = float(tok / (tok + err).clamp_min(1e-30))
    non_err = 1 - A_hat[:, e0:e1].sum(1)
    out = infl + w
    completeness = float((non_err * out).sum() / out.sum().clamp_min(1e-30))
    return Scores(replacement, completeness, which, graph.n_features)


def subgraph_scores(graph: Graph, features: Sequence[int], which: str = "sub") -> Scores:
    """Scores of the sub-graph keeping feature nodes ``features`` (others merged into errors)."""
    return scores(graph.subgraph(features), which)


def pruned_graph(graph: Graph, pruned: Pruned) -> Graph:
    """The sub-graph of the features kept by pruning (dropped features merged into errors)."""
    return graph.subgraph(pruned.kept_features(graph))
