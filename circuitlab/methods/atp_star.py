"""AtP* (Kramar et al. 2024): AtP with the QK fix, GradDrop ranking, and a false-negative check.

- Values: signed AtP estimates, with query/key nodes computed by the QK fix (qk_fix.py).
- ``extras['rank_score']``: GradDrop's unsigned score c_GD(n) = 1/(L-1) sum_l |I_l(n)|, where
  I_l is the estimate with the gradient through layer l's residual contribution (attention and
  MLP outputs of block l) set to zero. Use it to decide what to verify first. It costs one
  backward pass per layer, each starting at that layer rather than at the output (about L/2
  full backward passes in all): cutting both branches of block l leaves the gradient entering
  the block equal to the one leaving it, so each point below loses exactly the backward image of
  their difference. Nodes whose place relative to the cut is not known (spliced latents, norm
  internals, resid_mid) fall back to L full backward passes with gates.
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
    """Compute GradDrop's ranking score (``extras['rank_score']``, one more backward pass per
    layer, each from that layer down); without it AtP* costs what AtP costs."""


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


_ABOVE_GATES = {"mlp_out", "resid_post"}
"""Block points whose gradient a gate at their own block leaves alone (the gate sits upstream)."""
_SKIP_ONLY = {"resid_pre", "attn_out"}
"""Block points that, with their block's gates shut, get only the skip connection's gradient
(the attention output is downstream of its own gate but upstream of the MLP's)."""
_INSIDE = {"heads", "q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "attn_in", "mlp_in", "mlp_pre",
           "mlp_pre_linear", "neurons"}
"""Block points every path from which to the output crosses a gate of their own block."""


def _places(model) -> dict[str, tuple[int, str]]:
    """(layer, point) of every hook whose position relative to GradDrop's gates is known;
    anything else (spliced latents, norm internals, resid_mid, whose hook does not sit on the
    skip connection in every bridge) GradDrop handles with gates."""
    from circuitlab.engine.sites import HOOKS

    out = {HOOKS["embed"]: (-1, "embed"), HOOKS["pos_embed"]: (-1, "embed")}
    for point in _ABOVE_GATES | _SKIP_ONLY | _INSIDE:
        for layer in range(model.n_layers):
            out[hook_name(point, layer)] = (layer, point)
    return out


def _dropped_grads(model, run, grads: dict[str, torch.Tensor], l: int, names: Sequence[str],
                   places: dict[str, tuple[int, str]]) -> dict[str, torch.Tensor]:
    """The gradients at ``names`` with the gradient through block ``l``'s attention and MLP
    outputs set to zero, from the full backward pass's gradients and one backward pass that
    starts at block l (not at the output).

    With both of block l's branches cut, the gradient entering block l's residual input is the
    one leaving its output, so each point below block l loses exactly the vector-Jacobian product
    of d = g(resid_pre_l) - g(resid_post_l) from resid_pre_l; points inside block l lose all of
    their gradient or keep only the skip connection's; points above keep theirs."""
    post = grads[hook_name("resid_post", l) if l == model.n_layers - 1 else hook_name("resid_pre", l + 1)]
    pre = hook_name("resid_pre", l)
    out = dict(grads)
    below = []
    for n in names:
        layer, point = places[n]
        if layer < l:
            below.append(n)
        elif layer == l and point in _SKIP_ONLY:
            out[n] = post.clone()
        elif layer == l and point in _INSIDE:
            out[n] = torch.zeros_like(grads[n])
    below = [n for n in dict.fromkeys(below) if n != pre]
    if below:
        d = grads[pre] - post
        vjp = torch.autograd.grad(run.acts[pre], [run.acts[n] for n in below], grad_outputs=d,
                                  retain_graph=True, allow_unused=True)
        for n, v in zip(below, vjp):
            if v is not None:
                out[n] = grads[n] - v.detach()
    return out


def atp_star_sites(model, task, sites: Sequence[str], direction: str = "denoising",
                   positions: Optional[Sequence[int | str]] = None, layers: Optional[Sequence[int]] = None,
                   graddrop: bool = True) -> dict[str, Result]:
    """AtP* over several site families from ONE source capture, one forward and one backward
    pass (plus GradDrop's per-layer backward passes): the estimate of a whole node set costs what one
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
    places = _places(model)
    fast = graddrop and all(h in places for h in grad_names)
    if fast:  # GradDrop from the residual stream's gradients: no gates, shorter backward passes
        L = model.n_layers
        resid = [hook_name("resid_pre", l) for l in range(L)] + [hook_name("resid_post", L - 1)]
        run = forward_for_grads(model, base, task.metric, list(dict.fromkeys(grad_names + value_names + resid)))
    else:
        gate_names = [hook_name(s, l) for l in range(model.n_layers) for s in ("attn_out", "mlp_out")]
        run = forward_for_grads(model, base, task.metric, list(dict.fromkeys(grad_names + value_names)),
                                gates.hooks(gate_names) if graddrop else ())
    acts = run.acts

    def estimates(grads) -> dict[str, torch.Tensor]:
        return {s: node_values(g.nodes, _scores(model, g, acts, grads, source, s.endswith("_all")),
                               task.roles, base.shape[0]) for s, g in grids.items()}

    grads = run.grads(retain=graddrop)
    est = estimates(grads)
    extras: dict[str, dict] = {s: {} for s in sites}
    bwd = 1
    if graddrop:
        total = {s: torch.zeros(len(g.nodes)) for s, g in grids.items()}
        for l in range(model.n_layers):
            if fast:
                dropped = _dropped_grads(model, run, grads, l, grad_names, places)
            else:
                gates.scale = {hook_name("attn_out", l): 0.0, hook_name("mlp_out", l): 0.0}
                dropped = run.grads(retain=l < model.n_layers - 1)
            for s, I_l in estimates(dropped).items():
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
