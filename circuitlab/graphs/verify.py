"""Check a graph by intervention in the frozen replacement model (circuit-tracer's test).

Doubling a source (adding its vector once more: a token embedding, an error vector, or a
feature's ``a_f W_dec[f]``) in the frozen model (cached norm scales and attention patterns, MLP
outputs constant) changes each target's pre-activation by exactly its adjacency entry.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from circuitlab.graphs.graph import Graph
from circuitlab.graphs.replacement import CleanRun, Target, clean_run, frozen_run
from circuitlab.graphs.transcoders import as_transcoders


def target_nodes(graph: Graph) -> list[int]:
    """Node indices with incoming edges computed (feature and logit nodes)."""
    return list(range(graph.n_features)) + list(range(graph.logit_start, graph.n_nodes))


def node_target(graph: Graph, i: int) -> Target:
    if graph.kind(i) == "feature":
        l, p, f, _ = graph.feature_info(i)
        return Target("feature", l, p, f)
    return Target("logit", token=int(graph.logit_tokens[i - graph.logit_start]))


def error_vector(graph: Graph, clean: CleanRun, transcoders, layer: int, pos: int) -> torch.Tensor:
    """The error node's vector: true error plus every active feature merged into it."""
    v = clean.errors[layer, pos].clone()
    chosen = set(graph.selected.tolist())
    tc = transcoders[layer]
    for a, (l, p, f) in enumerate(graph.active_features.tolist()):
        if l == layer and p == pos and a not in chosen:
            v += float(graph.activations[a]) * tc.W_dec[f].float()
    return v


def intervention_effects(model, transcoders, graph: Graph, sources: Sequence[int],
                         clean: Optional[CleanRun] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(measured, predicted): [n_targets, n_sources] change of each target node's pre-activation
    when source node s is doubled in the frozen model, and the adjacency entries."""
    tcs = as_transcoders(transcoders)
    if clean is None:
        excl = graph.meta.get("config", {}).get("exclude_bos", True)
        clean = clean_run(model, tcs, graph.tokens.to(model.device), exclude_bos=excl)
    R = len(sources) + 1
    T, d = clean.embed.shape
    embed = clean.embed[None].repeat(R, 1, 1)
    delta = [torch.zeros(R, T, d, device=clean.embed.device) for _ in range(model.n_layers)]
    for r, s in enumerate(sources, start=1):
        k = graph.kind(s)
        if k == "token":
            p = s - graph.token_start
            embed[r, p] += clean.embed[p]
        elif k == "error":
            l, p = divmod(s - graph.error_start, graph.n_pos)
            delta[l][r, p] += error_vector(graph, clean, tcs, l, p)
        elif k == "feature":
            l, p, f, a = graph.feature_info(s)
            delta[l][r, p] += a * tcs[l].W_dec[f].float()
        else:
            raise ValueError("logit nodes are not sources")
    tn = target_nodes(graph)
    vals = frozen_run(model, tcs, clean, [node_target(graph, i) for i in tn], embed=embed, mlp_delta=delta)
    measured = (vals[1:] - vals[:1]).t().cpu()
    predicted = graph.adjacency[tn][:, list(sources)]
    return measured, predicted
