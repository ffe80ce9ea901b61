"""Edge method ``cdt``: each sender -> receiver edge's CD-T relevance, on EAP's component graph.

score(u -> v) = (u(source) - u(base)) . d(relevance)/d(input of v): the relevance the CD-T
rules carry from sender u's write, seen by receiver v alone, to the metric, to first order in
the write. The derivative is taken through the decomposition itself (one backward pass through
the walk of circuitlab.methods.cdt.walk), so it holds what CD-T holds fixed: norm scales at the
full run, attention patterns (query and key receivers therefore score 0), and the MLP
activation's gain f(x)/x ('share') or its slope ('difference'). Decomposing each edge in full
would take one walk per edge; to first order all edges come from one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from circuitlab.circuits.edges import Readers, sender_writes
from circuitlab.circuits.graph import ComponentGraph, component_graph
from circuitlab.circuits.scores import EdgeScores, make_scores
from circuitlab.engine.forward import metric_per_prompt
from circuitlab.methods.cdt.node import LINEARISE_AT
from circuitlab.methods.cdt.rules import ACTIVATION_RULES, Rules
from circuitlab.methods.cdt.walk import Frame, Run, Taps, compute_dtype, metric_relevance, unembed, walk
from circuitlab.methods.registry import edge_method
from circuitlab.result import Cost
from circuitlab.validate import check_choice


@dataclass
class CDTEdgeOptions:
    """Options of CD-T edge relevance."""

    per_position: bool = False
    """Keep one score per edge and position ([pos, sender, receiver]) instead of their sum."""
    graph: Optional[ComponentGraph] = None
    """The component graph to score (None: the model's full graph)."""
    activation: str = "share"
    """How MLP nonlinearities pass relevance: 'share' (the gain f(x)/x) or 'difference'
    (f(x) - f(irrelevant), whose first order is the slope f'(x))."""
    linearise_at: str = "base"
    """Which run is decomposed: 'base' (the patched run, as EAP) or 'source'."""

    def __post_init__(self) -> None:
        check_choice("activation", self.activation, ACTIVATION_RULES)
        check_choice("linearise_at", self.linearise_at, LINEARISE_AT)


class _Receivers(Taps):
    """Zero perturbations of every value, MLP and logit receiver input."""

    def __init__(self, run: Run, kv_heads: int):
        self.run, self.kv, self.leaves = run, kv_heads, {}

    def receiver(self, kind: str, layer: Optional[int]):
        full = self.run.final
        shape = full.shape[:2] + ((self.kv,) if kind == "v" else ()) + full.shape[2:]
        e = torch.zeros(shape, dtype=full.dtype, device=full.device, requires_grad=True)
        self.leaves[(kind, layer)] = e
        return e


def receiver_relevance_grads(model, frame: Frame, run: Run, graph: ComponentGraph, metric,
                             rules: Rules) -> torch.Tensor:
    """[B, T, receivers, d]: d(metric relevance)/d(input of each receiver) through the walk."""
    taps = _Receivers(run, model.heads_in("v"))
    with torch.enable_grad():
        pair = walk(frame, run, 1, taps, rules)
        rel = metric_relevance(metric, unembed(frame, run, pair, metric.positions, taps, rules))
        keys = list(taps.leaves)
        grads = dict(zip(keys, torch.autograd.grad(rel.sum(), [taps.leaves[k] for k in keys], allow_unused=True)))
    full = run.final
    out = torch.zeros(full.shape[:2] + (len(graph.receivers),) + full.shape[2:], dtype=full.dtype, device=full.device)
    for j, r in enumerate(graph.receivers):
        if r.kind in ("q", "k"):
            continue  # patterns are the full run's: queries and keys carry no relevance
        g = grads.get((r.kind, None if r.kind == "logits" else r.layer))
        if g is not None:
            out[:, :, j] = g[:, :, r.head] if r.kind == "v" else g
    return out


@edge_method("cdt", CDTEdgeOptions, order=3)
def cdt_edges(model, task, direction: str = "denoising", per_position: bool = False,
              graph: Optional[ComponentGraph] = None, activation: str = "share",
              linearise_at: str = "base") -> EdgeScores:
    """CD-T relevance of every edge of ``model``'s component graph on ``task`` (first order)."""
    CDTEdgeOptions(per_position, graph, activation, linearise_at)
    t0 = time.perf_counter()
    graph = graph or component_graph(model)
    readers = Readers.of(model)
    frame = Frame.of(model)
    base, src = task.base_and_source(direction)
    run = Run.of(model, frame, base if linearise_at == "base" else src)
    grads = receiver_relevance_grads(model, frame, run, graph, task.metric, Rules("irrelevant", activation))
    delta = (sender_writes(model, src, readers) - sender_writes(model, base, readers)).to(grads.dtype)
    eq = "btsd,btrd->tsr" if per_position else "btsd,btrd->sr"
    values = torch.einsum(eq, delta, grads)
    baseline = float(task.metric.reduce(metric_per_prompt(model, base, task.metric)[None])[0])
    T = base.shape[1]
    return make_scores(graph, values, "cdt", direction, task, baseline, list(range(T)) if per_position else None,
                       Cost(4, 1, time.perf_counter() - t0), {"activation": activation, "linearise_at": linearise_at,
                                                               "dtype": str(compute_dtype(model))})
