"""Edge attribution patching (EAP) and EAP-IG: every edge from one gradient run.

score(u -> v) = (u(x_source) - u(x_base)) . dL/d(input of v) at the base run, summed over
positions (or kept per position). Denoising: base = corrupted, source = clean; noising the
reverse -- the same convention as node AtP, so each is compared with exact edge patching in the
same direction. One forward pass per input for the writes, one forward and one backward for all
receiver gradients (see circuitlab.circuits.edges for how a receiver's input gradient is formed).

EAP-IG (Hanna et al. 2024, the "inputs" variant): the gradient is averaged over ``steps``
points whose token embeddings interpolate from the base to the source prompt, alpha in
{1/m, ..., 1}; the m points run as batched copies, so it costs m forward+backward equivalents.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from circuitlab.circuits.edges import Readers, receiver_grads, sender_writes
from circuitlab.circuits.graph import ComponentGraph, component_graph
from circuitlab.circuits.scores import EdgeScores, make_scores
from circuitlab.engine.cache import capture
from circuitlab.engine.forward import metric_per_prompt
from circuitlab.engine.sites import hook_name
from circuitlab.methods.registry import edge_method
from circuitlab.result import Cost


@dataclass
class EAPOptions:
    """Options of EAP."""

    per_position: bool = False
    """Keep one score per edge and position ([pos, sender, receiver]) instead of their sum."""
    graph: Optional[ComponentGraph] = None
    """The component graph to score (None: the model's full graph)."""


@dataclass
class EAPIGOptions(EAPOptions):
    """Options of EAP-IG."""

    steps: int = 8
    """m, the interpolation points between the base and the source embeddings."""


def _contract(delta: torch.Tensor, grads: torch.Tensor, per_position: bool) -> torch.Tensor:
    """[B,T,S,d] . [B,T,R,d] -> [S,R] (or [T,S,R]); summed over prompts (and positions)."""
    acc = torch.promote_types(delta.dtype, torch.float32)
    eq = "btsd,btrd->tsr" if per_position else "btsd,btrd->sr"
    return torch.einsum(eq, delta.to(acc), grads.to(acc))


@edge_method("eap", EAPOptions, order=0)
def eap(model, task, direction: str = "denoising", per_position: bool = False,
        graph: Optional[ComponentGraph] = None) -> EdgeScores:
    """EAP scores of every edge of ``model``'s component graph on ``task``."""
    t0 = time.perf_counter()
    graph = graph or component_graph(model)
    readers = Readers.of(model)
    base, src = task.base_and_source(direction)
    delta = sender_writes(model, src, readers) - sender_writes(model, base, readers)
    rg = receiver_grads(model, graph, base, task.metric, readers)
    values = _contract(delta, rg.grads, per_position)
    T = base.shape[1]
    return make_scores(graph, values, "eap", direction, task, rg.value, list(range(T)) if per_position else None,
                       Cost(3, 1, time.perf_counter() - t0))


@edge_method("eap-ig", EAPIGOptions, order=1)
def eap_ig(model, task, direction: str = "denoising", steps: int = 8, per_position: bool = False,
           graph: Optional[ComponentGraph] = None) -> EdgeScores:
    """EAP-IG (inputs variant): gradients averaged over ``steps`` interpolated embeddings."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t0 = time.perf_counter()
    graph = graph or component_graph(model)
    readers = Readers.of(model)
    base, src = task.base_and_source(direction)
    B, T = base.shape
    delta = sender_writes(model, src, readers) - sender_writes(model, base, readers)
    embed = hook_name("embed")
    e_base = capture(model, base, [embed])[embed]
    e_src = capture(model, src, [embed])[embed]
    alphas = (torch.arange(1, steps + 1, device=base.device, dtype=e_base.dtype) / steps).repeat_interleave(B)

    def interpolate(x):
        a = alphas.view(-1, 1, 1).to(x.dtype)
        return e_base.repeat(steps, 1, 1) + a * (e_src - e_base).repeat(steps, 1, 1)

    rg = receiver_grads(model, graph, base, task.metric, readers, copies=steps, embed_hook=interpolate)
    grads = rg.grads.view(steps, B, *rg.grads.shape[1:]).mean(0)
    values = _contract(delta, grads, per_position)
    baseline = float(task.metric.reduce(metric_per_prompt(model, base, task.metric)[None])[0])
    return make_scores(graph, values, "eap-ig", direction, task, baseline, list(range(T)) if per_position else None,
                       Cost(5 + steps, steps, time.perf_counter() - t0), {"steps": steps, "variant": "inputs"})
