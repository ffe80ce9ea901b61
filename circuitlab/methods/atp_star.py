"""AtP* (Kramar et al. 2024): AtP with the QK fix, GradDrop ranking, and a false-negative check.

- Values: signed AtP estimates, with query/key nodes computed by the QK fix (qk_fix.py).
- ``extras['rank_score']``: GradDrop's unsigned score c_GD(n) = 1/(L-1) sum_l |I_l(n)|, where
  I_l is the estimate with the gradient through layer l's residual contribution (attention and
  MLP outputs of block l) set to zero: one forward pass, L backward passes. Use it to decide
  what to verify first.
- ``verify(...)``: exact patching of the top-ranked nodes, then random-subset patching of the
  rest to bound the largest effect the ranking may have missed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.gradients import GradGates, forward_for_grads
from circuitlab.engine.patching import patch_nodes
from circuitlab.engine.sites import hook_name
from circuitlab.methods import qk_fix
from circuitlab.methods.attribution import make_result, node_values, prepare, reduce_to_nodes
from circuitlab.methods.registry import NodeOptions, node_method
from circuitlab.result import Result


@dataclass
class AtPStarOptions(NodeOptions):
    """Options of AtP*."""

    graddrop: bool = True
    """Compute GradDrop's ranking score (``extras['rank_score']``, L more backward passes);
    without it AtP* costs what AtP costs."""


def _scores(model, grid, acts, grads, source, all_pos: bool) -> dict[str, torch.Tensor]:
    fam = grid.family
    if fam not in ("q", "k"):
        return {h: reduce_to_nodes(fam, (source[h] - acts[h].detach()) * grads[h])
                for h in sorted({n.hook for n in grid.nodes})}
    out = {}
    for l in sorted({n.layer for n in grid.nodes}):
        qn, kn = qk_fix.rotated_names(model, l)
        pat = hook_name("pattern", l)
        A, G = acts[pat].detach().float(), grads[pat].float()
        s = qk_fix.score_rule(model, l)
        if fam == "q":
            sc = qk_fix.query_effects(acts[qn].detach(), source[qn], acts[kn].detach(), A, G, s)
        elif all_pos:
            sc = qk_fix.all_keys_effect(acts[qn].detach(), acts[kn].detach(), source[kn], A, G, s)
        else:
            sc = qk_fix.key_effects(acts[qn].detach(), acts[kn].detach(), source[kn], A, G, s)
        out[hook_name(fam, l)] = sc
    return out


def _hooks_needed(model, grid) -> tuple[list[str], list[str]]:
    """(hooks whose gradient the estimate reads, hooks whose source value it reads)."""
    if grid.family in ("q", "k"):
        layers = sorted({n.layer for n in grid.nodes})
        return ([hook_name("pattern", l) for l in layers],
                [h for l in layers for h in qk_fix.rotated_names(model, l)])
    names = sorted({n.hook for n in grid.nodes})
    return names, names


def atp_star_sites(model, task, sites: Sequence[str], direction: str = "denoising",
                   positions: Optional[Sequence[int | str]] = None, layers: Optional[Sequence[int]] = None,
                   graddrop: bool = True) -> dict[str, Result]:
    """AtP* over several site families from ONE source capture, one forward and one backward
    pass (plus GradDrop's L backward passes): the estimate of a whole node set costs what one
    family costs. Each family's Result reports the shared cost; ``meta['shared_pass']`` lists
    the families that shared it."""
    t0 = time.perf_counter()
    sites = list(dict.fromkeys(sites))
    grids = {}
    for s in sites:
        base, src, grids[s] = prepare(model, task, s, direction, positions, layers)
    needed = {s: _hooks_needed(model, g) for s, g in grids.items()}
    grad_names = list(dict.fromkeys(h for s in sites for h in needed[s][0]))
    value_names = list(dict.fromkeys(h for s in sites for h in needed[s][1]))
    source = capture(model, src, value_names)
    gates = GradGates()
    gate_names = [hook_name(s, l) for l in range(model.n_layers) for s in ("attn_out", "mlp_out")]
    run = forward_for_grads(model, base, task.metric, list(dict.fromkeys(grad_names + value_names)),
                            gates.hooks(gate_names) if graddrop else ())
    acts = run.acts

    def estimates(grads) -> dict[str, torch.Tensor]:
        return {s: node_values(g.nodes, _scores(model, g, acts, grads, source, s.endswith("_all")),
                               task.roles, base.shape[0]) for s, g in grids.items()}

    est = estimates(run.grads(retain=graddrop))
    extras: dict[str, dict] = {s: {} for s in sites}
    bwd = 1
    if graddrop:
        total = {s: torch.zeros(len(g.nodes)) for s, g in grids.items()}
        for l in range(model.n_layers):
            gates.scale = {hook_name("attn_out", l): 0.0, hook_name("mlp_out", l): 0.0}
            for s, I_l in estimates(run.grads(retain=l < model.n_layers - 1)).items():
                total[s] += I_l.abs()
            bwd += 1
        gates.scale = {}
        for s in sites:
            extras[s]["rank_score"] = total[s] / max(1, model.n_layers - 1)
    baseline = float(run.value.detach())
    meta = {"shared_pass": sites} if len(sites) > 1 else {}
    return {s: make_result(grids[s], est[s], "atp*", s, direction, task, baseline, t0, 2, bwd, extras[s], dict(meta))
            for s in sites}


@node_method("atp*", AtPStarOptions, order=2, several=atp_star_sites)
def atp_star(model, task, sites: str = "heads", direction: str = "denoising",
             positions: Optional[Sequence[int | str]] = None, layers: Optional[Sequence[int]] = None,
             graddrop: bool = True) -> Result:
    """AtP*: AtP with the QK fix for query/key nodes and GradDrop's ranking score."""
    return atp_star_sites(model, task, [sites], direction, positions, layers, graddrop)[sites]


def verify(model, task, estimate: Result, n_verify: int = 20, samples: int = 64, p: float = 0.1,
           delta: float = 0.05, seed: int = 0, max_patches_per_pass: Optional[int] = None) -> dict:
    """Exact-patch the ``n_verify`` top-ranked nodes of ``estimate`` (by rank_score, else |value|),
    then bound the largest missed effect among the rest by patching ``samples`` random subsets
    (each node in with probability ``p``): c(n) = E[I(S) | n in S] - E[I(S) | n not in S], and
    bound = max_n |c(n)| + z_{1-delta/2} * se(n). Results are stored in ``estimate.meta``."""
    from circuitlab.engine.sites import Node

    base, src = task.base_and_source(estimate.direction)
    nodes = [Node.parse(l) for l in estimate.labels]
    rank = estimate.extras.get("rank_score", estimate.values.abs()).flatten()
    order = rank.argsort(descending=True).tolist()
    top, rest = order[:n_verify], order[n_verify:]
    source = capture(model, src, sorted({n.hook for n in nodes}))
    m = task.metric
    run = patch_nodes(model, base, source, [nodes[i] for i in top], m, task.roles, max_patches_per_pass)
    baseline = m.reduce(run.baseline[None])[0]
    verified = {estimate.labels[i]: float(v) for i, v in zip(top, m.reduce(run.per_prompt) - baseline)}
    out = {"verified": verified, "n_verify": n_verify, "samples": samples, "p": p, "delta": delta,
           "forward_passes": run.forward_passes}
    if rest and samples > 1:
        g = torch.Generator().manual_seed(seed)
        member = torch.rand(samples, len(rest), generator=g) < p
        subsets = [[nodes[rest[j]] for j in member[s].nonzero().flatten().tolist()] for s in range(samples)]
        sub = patch_nodes(model, base, source, subsets, m, task.roles, max_patches_per_pass)
        effect = (m.reduce(sub.per_prompt) - baseline).cpu().double()  # [samples]
        inn = member.double()
        n_in, n_out = inn.sum(0).clamp(min=1), (1 - inn).sum(0).clamp(min=1)
        mean_in = (inn * effect[:, None]).sum(0) / n_in
        mean_out = ((1 - inn) * effect[:, None]).sum(0) / n_out
        var_in = (inn * (effect[:, None] - mean_in) ** 2).sum(0) / (n_in - 1).clamp(min=1)
        var_out = ((1 - inn) * (effect[:, None] - mean_out) ** 2).sum(0) / (n_out - 1).clamp(min=1)
        c = mean_in - mean_out
        se = (var_in / n_in + var_out / n_out).sqrt()
        z = math.sqrt(2) * torch.erfinv(torch.tensor(1 - delta)).item()
        bound = c.abs() + z * se
        worst = int(bound.argmax())
        largest = int(c.abs().argmax())
        out.update({"missed_effect_bound": float(bound.max()),
                    "largest_subset_effect_node": estimate.labels[rest[largest]],
                    "largest_subset_effect": float(c[largest]), "bound_node": estimate.labels[rest[worst]],
                    "forward_passes": out["forward_passes"] + sub.forward_passes})
    estimate.meta["verification"] = out
    return out
