"""Node method ``cdt``: each node's CD-T relevance to the task metric, as a patching estimate.

Why in patching units: exact patching, AtP and the other node methods report the change of the
metric when a node takes another value, and ``cl.compare`` lines results up by node. CD-T gives
that change as the node's relevance: the run is decomposed with the node's *difference* from
the value it would be patched to as the relevant part, and the metric loses that part's
relevance when the node takes the other value.

``linearise_at="base"`` (default) decomposes the run being patched (the corrupted prompts when
denoising), so the estimate is minus the relevance of (base value - reference value), the same
base point AtP takes its gradient at; ``"source"`` decomposes the other run, with the relevance
of (source value - base value). ``reference`` sets what the node is compared with: the other
run's value ("source": the estimate of exact patching), 0 ("zero": of zero ablation) or its mean
over the prompts ("mean": of mean ablation).

``mode="propagate"`` walks one decomposition per node (nodes batched along the source axis;
the rules in full, including the bias shares); ``mode="linear"`` takes the relevance to first
order in every node at once, from one backward pass through the walk (biases then carry no
relevance: a share has no derivative at zero relevance, so this is the first-order relevance
with ``bias="irrelevant"``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from circuitlab.engine.forward import metric_per_prompt
from circuitlab.engine.patching import _free_memory, node_positions
from circuitlab.methods.attribution import make_result, node_values, prepare, reduce_to_nodes
from circuitlab.methods.cdt.rules import ACTIVATION_RULES, BIAS_RULES, Pair, Rules
from circuitlab.methods.cdt.sources import Inject, check_source_family
from circuitlab.methods.cdt.walk import Frame, Run, Taps, compute_dtype, metric_relevance, unembed, walk
from circuitlab.methods.registry import NodeOptions, node_method
from circuitlab.result import Result
from circuitlab.validate import check_choice, check_positive_int

MODES = ("propagate", "linear")
REFERENCES = ("source", "zero", "mean")
LINEARISE_AT = ("base", "source")


@dataclass
class CDTOptions(NodeOptions):
    """Options of CD-T node relevance (see circuitlab.methods.cdt.node)."""

    mode: str = "propagate"
    """'propagate': one decomposition per node, the rules in full; 'linear': first-order
    relevance of every node from one backward pass through the decomposition."""
    reference: str = "source"
    """What a node is compared with: 'source' (its value on the other prompts, as patching),
    'zero' (zero ablation) or 'mean' (its mean over the prompts)."""
    linearise_at: str = "base"
    """Which run is decomposed: 'base' (the patched run, as AtP) or 'source' (needs
    reference='source')."""
    bias: str = "share"
    """How biases are split: 'share' (by each part's magnitude, the paper's rule) or
    'irrelevant'; see circuitlab.methods.cdt.rules. Ignored by mode='linear'."""
    activation: str = "share"
    """How MLP nonlinearities are split: 'share' (f(x) * part / x) or 'difference'
    (f(x) - f(irrelevant) is relevant)."""
    max_sources_per_pass: Optional[int] = None
    """Most nodes decomposed together in one walk (None: as many as a quarter of free memory
    holds, at most 256 on a GPU and 32 on a CPU); mode='propagate' only."""

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("reference", self.reference, REFERENCES)
        check_choice("linearise_at", self.linearise_at, LINEARISE_AT)
        check_choice("bias", self.bias, BIAS_RULES)
        check_choice("activation", self.activation, ACTIVATION_RULES)
        if self.linearise_at == "source" and self.reference != "source":
            raise ValueError(f"linearise_at='source' compares each node with its base value, so it needs "
                             f"reference='source' (got reference={self.reference!r}); use linearise_at='base'")
        if self.max_sources_per_pass is not None:
            check_positive_int("max_sources_per_pass", self.max_sources_per_pass)


@node_method("cdt", CDTOptions, order=5)
def cdt(model, task, sites: str = "resid_pre", direction: str = "denoising",
        positions: Optional[Sequence[int | str]] = None, layers: Optional[Sequence[int]] = None,
        mode: str = "propagate", reference: str = "source", linearise_at: str = "base", bias: str = "share",
        activation: str = "share", max_sources_per_pass: Optional[int] = None) -> Result:
    """CD-T: each node's contextual-decomposition relevance to the metric, as the estimated
    change of the metric when the node takes its reference value (see circuitlab.methods.cdt)."""
    CDTOptions(layers, mode, reference, linearise_at, bias, activation, max_sources_per_pass)
    t0 = time.perf_counter()
    rules = Rules(bias, activation)
    base, src, grid = prepare(model, task, sites, direction, positions, layers)
    check_source_family(grid.family)
    frame = Frame.of(model)
    hooks = sorted({n.hook for n in grid.nodes})
    at_base = linearise_at == "base"
    run = Run.of(model, frame, base if at_base else src, hooks)
    refs = _references(model, frame, run, hooks, reference, src if at_base else base)
    sign = 1.0 if at_base else -1.0  # the estimate is -sign * relevance of (run - reference)
    if mode == "propagate":
        values, passes = _propagate(model, frame, run, grid.nodes, task, refs, rules, max_sources_per_pass)
        values, bwd = -sign * values, 0
    else:
        values, passes, bwd = _linear(model, frame, run, grid, task, refs, rules, sign), 1, 1
    baseline = float(task.metric.reduce(metric_per_prompt(model, base, task.metric)[None])[0])
    fwd = 2 + (reference == "source")
    meta = {"mode": mode, "reference": reference, "linearise_at": linearise_at, "bias": bias,
            "activation": activation, "walks": passes, "positions": positions}
    return make_result(grid, values.cpu(), "cdt", sites, direction, task, baseline, t0, fwd, bwd, meta=meta)


def _references(model, frame: Frame, run: Run, hooks: list[str], reference: str,
                other: torch.Tensor) -> dict[str, torch.Tensor]:
    """The value each node hook is compared with (absent: 0). The other run is captured with
    the same hooks as the decomposed one, so that equal prompts give equal values bit for bit
    (bias shares react to differences at float precision)."""
    if reference == "zero":
        return {}
    if reference == "mean":
        return {h: run.acts[h].mean(0, keepdim=True) for h in hooks}
    return Run.of(model, frame, other, hooks).acts


def _chunk(model, B: int, T: int, k: int, cap: Optional[int]) -> int:
    """Sources per walk: what fits in a quarter of free memory (at most 256 on a GPU, 32 on a
    CPU, where larger batches only add memory traffic)."""
    if cap is not None:
        return cap
    elem = torch.finfo(compute_dtype(model)).bits // 8
    per = 2 * B * T * elem * (8 * model.d_model + 4 * model.d_mlp + 3 * model.n_heads * model.d_head)
    per += 4 * B * k * model.d_vocab * elem
    dev = model.device
    return int(max(1, min(256 if dev.type == "cuda" else 32, _free_memory(dev) // 4 // max(per, 1))))


def _first_position(node, roles: dict, B: int, device) -> int:
    """The earliest position ``node`` is at in any prompt (0 for all positions)."""
    pos = node_positions(node, roles, B, device)
    return 0 if pos is None else int(pos.min())


def _propagate(model, frame: Frame, run: Run, nodes, task, refs, rules: Rules, cap) -> tuple[torch.Tensor, int]:
    """Metric relevance of each node's (value - reference) [nodes], one source set per node,
    nodes of nearby layers walked together."""
    B, T = run.tokens.shape
    metric = task.metric
    first = [_first_position(n, task.roles, B, run.tokens.device) for n in nodes]
    order = sorted(range(len(nodes)), key=lambda i: (nodes[i].layer, first[i]))
    size = _chunk(model, B, T, metric.positions.shape[1], cap)
    out = torch.empty(len(nodes), dtype=compute_dtype(model))
    walks = 0
    with torch.no_grad():
        for c in range(0, len(order), size):
            idx = order[c: c + size]
            taps = Inject.of(model, [[nodes[i]] for i in idx], B, T, task.roles, run.tokens.device, refs,
                             window=True, actual=run.acts)
            pair = walk(frame, run, len(idx), taps, rules, taps.start)
            rel = metric_relevance(metric, unembed(frame, run, pair, metric.positions, taps, rules))
            out[idx] = rel.to(out.dtype).cpu()
            walks += 1
    return out, walks


class _Leaves(Taps):
    """Zero perturbations at chosen sites, moved from the irrelevant to the relevant part, whose
    gradients are the first-order relevance per unit of each activation."""

    def __init__(self, sites: set[tuple[str, int]]):
        self.sites, self.leaves = sites, {}

    def point(self, site: str, layer: int, pair: Pair) -> Pair:
        if (site, layer) not in self.sites:
            return pair
        e = torch.zeros_like(pair[0], requires_grad=True)
        self.leaves[(site, layer)] = e
        return pair[0] + e, pair[1] - e


def _linear(model, frame: Frame, run: Run, grid, task, refs, rules: Rules, sign: float) -> torch.Tensor:
    """First-order relevance of every node: sign * (reference - run value) . d(relevance)/d(part)."""
    from circuitlab.engine.sites import hook_name

    sites = {(n.family, n.layer) for n in grid.nodes}
    taps = _Leaves(sites)
    with torch.enable_grad():
        pair = walk(frame, run, 1, taps, rules, min(l for _, l in sites))
        rel = metric_relevance(task.metric, unembed(frame, run, pair, task.metric.positions, taps, rules))
        keys = list(taps.leaves)
        grads = torch.autograd.grad(rel.sum(), [taps.leaves[k] for k in keys], allow_unused=True)
    scores = {}
    for (family, layer), g in zip(keys, grads):
        h = hook_name(family, layer)
        act = run.acts[h].to(compute_dtype(model))
        ref = refs.get(h)
        diff = (torch.zeros_like(act) if ref is None else ref.to(act.dtype)) - act
        g = torch.zeros_like(act) if g is None else g[0]
        scores[h] = reduce_to_nodes(family, sign * diff * g)
    return node_values(grid.nodes, scores, task.roles, run.tokens.shape[0])
