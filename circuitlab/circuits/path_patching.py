"""Exact edge patching (path patching): the ground truth for edge scores.

Patching edge u -> v gives v's input its base value plus (u(x_source) - u(x_base)); every other
component keeps computing from its own inputs, so the change flows on from v to the metric
(Wang et al. 2022's path patching with the receiver set {v}). A patch may hold several edges
(e.g. one sender into every query of a layer); edges into the same receiver add before its
norm. Each receiver's new input is its norm applied to the live residual plus the change
(projected per head for q/k/v), so a patch spanning several layers stays exact. K patches share
one forward pass that restarts at their earliest receiver layer (upstream is the base run).
Patches whose only receiver is the logits need no forward pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from circuitlab.circuits.edges import Readers, input_change, project, receiver_hook, sender_hooks, writes_from_cache
from circuitlab.circuits.graph import ComponentGraph, component_graph
from circuitlab.circuits.scores import EdgeScores, make_scores
from circuitlab.engine.cache import capture
from circuitlab.engine.forward import Restart, final_logits, gather_positions, run_to_final
from circuitlab.engine.patching import chunk_size_for
from circuitlab.engine.sites import hook_name
from circuitlab.methods.registry import edge_method
from circuitlab.result import Cost

Edge = tuple[int, int]


class _Setup:
    """Base-run state shared by all patches: writes, residuals, final residual, baseline."""

    def __init__(self, model, task, direction, graph, readers):
        self.model, self.task, self.graph, self.readers = model, task, graph, readers
        self.base, src = task.base_and_source(direction)
        L = model.n_layers
        resid = [hook_name("resid_pre", l) for l in range(L)] + [readers.mlp_resid(l) for l in range(L)]
        c = capture(model, self.base, sender_hooks(model) + resid)
        self.resid = {k: c[k] for k in resid}
        src_writes = writes_from_cache(model, readers, capture(model, src, sender_hooks(model)))
        self.delta = src_writes - writes_from_cache(model, readers, c)
        B = self.base.shape[0]
        self.rows = torch.arange(B, device=self.base.device)
        with torch.no_grad():
            self.final = run_to_final(model, self.base)
            self.baseline_pp = self._metric(self.final)

    def _metric(self, final: torch.Tensor) -> torch.Tensor:
        k = final.shape[0] // self.base.shape[0]
        rows = self.rows.repeat(k)
        m = self.task.metric
        return m.per_prompt(final_logits(self.model, gather_positions(final, m.positions, rows)), rows)

    def receiver_delta(self, edges: Sequence[Edge], pos: Optional[int]) -> dict[int, torch.Tensor]:
        """{receiver: summed sender change [B, T, d]} of one patch (only at ``pos`` if given)."""
        out: dict[int, torch.Tensor] = {}
        for i, j in edges:
            d = self.delta[:, :, i]
            if pos is not None:
                d = torch.zeros_like(d).index_copy_(1, torch.tensor([pos], device=d.device), d[:, pos : pos + 1])
            out[j] = out[j] + d if j in out else d
        return out

    def hooks(self, entries: list[tuple[int, int, torch.Tensor]], K: int):
        """Hooks for one pass of K patches: ``entries`` (row block, receiver, summed change).

        Each receiver's new input is computed from the *live* residual of this pass, so a patch
        whose edges reach receivers in several layers stays exact (an earlier receiver's change
        flows into the later receiver's residual before the later edge's change is added)."""
        B = self.base.shape[0]
        R, g = self.readers, self.graph
        live: dict[str, torch.Tensor] = {}
        by_hook: dict[str, list] = {}
        for k, j, d in entries:
            r = g.receivers[j]
            by_hook.setdefault(receiver_hook(r), []).append((k, r, d))

        def record(name):
            def fn(x):
                live[name] = x.view(K, B, *x.shape[1:])
            return fn

        def apply(entries_here):
            def fn(act):
                a = act.view(K, B, *act.shape[1:]).clone()
                for k, r, d in entries_here:
                    if r.kind == "logits":
                        a[k] += d.to(a.dtype)
                    elif r.kind == "mlp":
                        resid = live[R.mlp_resid(r.layer)][k]
                        a[k] += input_change(R.mlp_norm[r.layer], resid, d[:, :, None].to(a.dtype))[:, :, 0]
                    else:
                        resid = live[hook_name("resid_pre", r.layer)][k]
                        x = input_change(R.attn_norm[r.layer], resid, d[:, :, None].to(a.dtype))[:, :, 0]
                        a[k, :, :, r.head] += project(R, r.layer, r.kind, r.head, x)
                return a.view(act.shape)
            return fn

        layers = sorted({r.layer for e in by_hook.values() for _, r, _ in e if r.kind != "logits"})
        hooks = []
        for l in layers:
            hooks.append((hook_name("resid_pre", l), record(hook_name("resid_pre", l))))
            if R.mlp_resid(l) != hook_name("resid_pre", l):
                hooks.append((R.mlp_resid(l), record(R.mlp_resid(l))))
        return hooks + [(name, apply(e)) for name, e in by_hook.items()]


def patch_edges(model, task, patches: Sequence[Sequence[Edge] | Edge], direction: str = "denoising",
                positions: Optional[Sequence[Optional[int]]] = None, graph: Optional[ComponentGraph] = None,
                max_patches_per_pass: Optional[int] = None, progress: bool = False,
                _setup: Optional[_Setup] = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-prompt metric under each patch (a set of (sender, receiver) edges, optionally at one
    position each: ``positions[i]``). Returns (per_prompt [patches, B], baseline [B], passes)."""
    graph = graph or component_graph(model)
    S = _setup or _Setup(model, task, direction, graph, Readers.of(model))
    patches = [[p] if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], int) else list(p) for p in patches]
    for p in patches:
        for i, j in p:
            if not bool(graph.mask[i, j]):
                raise ValueError(f"{graph.edge_label(i, j)} is not an edge")
    positions = list(positions) if positions is not None else [None] * len(patches)
    B, T = S.base.shape
    L = model.n_layers
    acc = torch.promote_types(torch.float32, model.dtype)
    out = torch.empty(len(patches), B, dtype=acc, device=S.base.device)
    layer_of = [min(graph.receivers[j].layer for _, j in p) for p in patches]
    logit_only = [i for i, l in enumerate(layer_of) if l >= L]
    for i in logit_only:  # no forward pass: the change reaches the final residual directly
        d = sum(S.receiver_delta(patches[i], positions[i]).values())
        with torch.no_grad():
            out[i] = S._metric(S.final + d).to(acc)
    rest = sorted((i for i in range(len(patches)) if layer_of[i] < L), key=lambda i: (layer_of[i], i))
    K = chunk_size_for(model, B, T, task.metric.positions.shape[1], max_patches_per_pass, None)
    passes = 0
    chunks = [rest[a : a + K] for a in range(0, len(rest), K)]
    for chunk in tqdm(chunks, desc="edge patching", disable=not progress, leave=False):
        k = len(chunk)
        entries = [(row, j, d) for row, i in enumerate(chunk)
                   for j, d in S.receiver_delta(patches[i], positions[i]).items()]
        hooks = S.hooks(entries, k)
        layer0 = min(layer_of[i] for i in chunk) if model.fast_restart else 0
        restart = Restart(layer0, S.resid[hook_name("resid_pre", layer0)].repeat(k, 1, 1)) if layer0 > 0 else None
        with torch.no_grad():
            final = run_to_final(model, S.base.repeat(k, 1), hooks, restart)
            out[torch.tensor(chunk, device=out.device)] = S._metric(final).view(k, B).to(acc)
        passes += 1
    return out, S.baseline_pp.to(acc), passes


@dataclass
class EdgePatchingOptions:
    """Options of exact edge patching."""

    edges: Optional[Sequence[str | Edge]] = None
    """Edges to patch, as labels ('L0.H1->L1.mlp') or (sender, receiver) indices (None: all)."""
    per_position: bool = False
    """Patch each edge at each position separately ([pos, sender, receiver] scores)."""
    graph: Optional[ComponentGraph] = None
    """The component graph (None: the model's full graph)."""
    max_patches_per_pass: Optional[int] = None
    """Most patched copies of the batch in one pass (None: chosen from free memory)."""
    progress: bool = False
    """Show a progress bar over passes."""


@edge_method("path", EdgePatchingOptions, order=2)
def edge_patching(model, task, direction: str = "denoising", edges: Optional[Sequence[str | Edge]] = None,
                  per_position: bool = False, graph: Optional[ComponentGraph] = None,
                  max_patches_per_pass: Optional[int] = None, progress: bool = False) -> EdgeScores:
    """Exact effect of patching each edge alone (all edges by default): the metric under the patch
    minus the base run's metric. ``per_position`` patches each edge at each position separately."""
    t0 = time.perf_counter()
    graph = graph or component_graph(model)
    idx = graph.edges() if edges is None else [graph.edge_index(e) if isinstance(e, str) else tuple(e) for e in edges]
    T = task.clean_tokens.shape[1]
    if per_position:
        patches = [e for _ in range(T) for e in idx]
        pos = [t for t in range(T) for _ in idx]
    else:
        patches, pos = idx, None
    pp, base, passes = patch_edges(model, task, patches, direction, pos, graph, max_patches_per_pass, progress)
    m = task.metric
    baseline = float(m.reduce(base[None])[0])
    eff = (m.reduce(pp) - baseline).cpu()
    shape = (T, *graph.mask.shape) if per_position else tuple(graph.mask.shape)
    values = torch.zeros(shape, dtype=eff.dtype)
    si = torch.tensor([i for i, _ in idx], dtype=torch.long)
    ri = torch.tensor([j for _, j in idx], dtype=torch.long)
    if per_position:
        values[:, si, ri] = eff.view(T, len(idx))
    else:
        values[si, ri] = eff
    return make_scores(graph, values, "path", direction, task, baseline, list(range(T)) if per_position else None,
                       Cost(passes + 3, 0, time.perf_counter() - t0), {"patched_edges": len(idx)})


def path_patch(model, task, edges: Sequence[str], direction: str = "denoising") -> float:
    """The metric change from patching a set of edges together, e.g. one sender into several
    receivers: ``path_patch(m, task, ["L0.H0->L1.H0.k", "L0.H0->L1.H1.k"])``."""
    graph = component_graph(model)
    pp, base, _ = patch_edges(model, task, [[graph.edge_index(e) for e in edges]], direction, graph=graph)
    m = task.metric
    return float(m.reduce(pp)[0] - m.reduce(base[None])[0])
