"""Patching and attributing to coder latents: exact patching, AtP, AtP*, RelP and IG on ``latents`` nodes.

The coders are spliced into the model with their error term (``circuitlab.sparse.splice``),
so the unpatched model is unchanged and each latent is a node ``Node(l, 'latents', unit=i)``
(label ``L2.F9@5``) that the engine's batched patching and gradient runs address like any
other site. ``cl.patch`` keeps its site grids; this is the entry point for latents.

Each coder's site splits exactly into its latents' share ``f @ W_dec`` and an *error term*
``e = site - f @ W_dec`` (reconstruction error, decoder bias and a transcoder's skip path), so
every method also scores the error term at each position (``extras['error']``, [coder, pos]).
The gradient estimators are the component methods' on these nodes:

- ``atp``: (f_source - f_base) . dmetric/df at the base run;
- ``atp*``: AtP values (the QK fix concerns query/key nodes, which latents are not) and
  GradDrop's ``extras['rank_score']``: the mean over layers l of |AtP| with the gradient through
  block l's attention and MLP outputs set to zero. A transcoder's latents are part of their
  block's MLP output, so (like heads) their estimate with their own block dropped is zero;
- ``relp``: AtP with the LRP rules of ``circuitlab.methods.relp_rules`` in the backward pass. The
  decoder is linear (LRP-0) and the TopK/ReLU/JumpReLU gates pass the plain gradient, which for
  these piecewise-linear gates is the identity rule with the gate held fixed; because latents
  plus error rebuild the site exactly, a splice passes relevance to its input unchanged, so
  the latents and error of a coder sum to the relevance of the site itself;
- ``ig``: ``variant='inputs'`` interpolates the token embeddings (one batched pass);
  ``variant='activations'`` interpolates one coder's site at a time, latents and error term
  together at every position (as sparse feature circuits do), so over a coder the scores sum
  to the exact effect of patching its whole site as the steps grow.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.forward import metric_per_prompt
from circuitlab.engine.gradients import GradGates, forward_for_grads
from circuitlab.engine.patching import node_positions, patch_nodes
from circuitlab.engine.sites import VECTOR_FAMILIES, Node, hook_name, parse_hook
from circuitlab.result import Cost, Result
from circuitlab.sparse.splice import site_layer, splice

LATENT_METHODS = ("exact", "atp", "atp*", "relp", "ig")
"""Methods that score latent nodes (names as in the node-method registry)."""


def latent_nodes(coders: Sequence, positions: Sequence[int | str], units: Optional[Sequence[int]] = None) -> list[Node]:
    """Nodes for each coder's latents (all, or ``units``) at each position, layer-major."""
    nodes = []
    for c in coders:
        layer = site_layer(c.hook_out)
        for p in positions:
            for u in (range(c.d_sae) if units is None else units):
                nodes.append(Node(layer, "latents", unit=int(u), pos=p))
    return nodes


def latent_options(method: str, **given) -> dict:
    """The options of ``method`` for latents: its registered options dataclass with the ``given``
    values (None: the default) set, keeping those the latent implementation takes (``layers``
    is not one: the coders decide the layers).

    An option another method declares is refused, naming the method it belongs to, as is a
    registered option that latents do not support."""
    import inspect

    from circuitlab.methods.registry import NODE_METHODS
    from circuitlab.validate import check_choice

    check_choice("method for latents", method, LATENT_METHODS)
    entry = NODE_METHODS[method]
    given = {k: v for k, v in given.items() if v is not None}
    for k in given:
        if k not in entry.option_names:
            owners = [n for n in LATENT_METHODS if k in NODE_METHODS[n].option_names]
            raise ValueError(f"option {k}={given[k]!r} is not an option of method {method!r} (it is one of "
                             f"{', '.join(map(repr, owners))}); drop it or choose that method")
    opts = entry.options(**given)  # the dataclass's own checks (an unknown IG rule ...) run here
    takes = list(inspect.signature(_ESTIMATORS[method]).parameters)[5:] if method in _ESTIMATORS else []
    for k in given:
        if k not in takes:
            raise ValueError(f"option {k!r} of method {method!r} is not available on latents; leave it unset")
    return {k: getattr(opts, k) for k in takes}


def patch_latents(model, task, coders: Sequence, method: str = "exact", direction: str = "denoising",
                  positions: Optional[Sequence[int | str]] = None, units: Optional[Sequence[int]] = None,
                  progress: bool = False, attention: Optional[str] = None, graddrop: Optional[bool] = None,
                  steps: Optional[int] = None, variant: Optional[str] = None,
                  rule: Optional[str] = None) -> Result:
    """Effect on ``task.metric`` of setting each latent to its source-run value, by ``method``
    (see the module docstring), with the error term's in ``extras['error']`` [coder, pos].

    Why one entry point: exact patching and every estimator see the same spliced model, nodes
    and labels, so their results compare directly (``cl.compare``). The method options are the
    registry's (``RelPOptions.attention``, ``AtPStarOptions.graddrop``, ``IGOptions.steps``,
    ``variant`` and ``rule``); None keeps the method's default."""
    opts = latent_options(method, attention=attention, graddrop=graddrop, steps=steps, variant=variant, rule=rule)
    coders = list(coders)
    if not coders:
        raise ValueError("patch_latents needs at least one coder (e.g. circuitlab.sparse.find_coder(model_name))")
    if units is None and len({c.d_sae for c in coders}) > 1:
        raise ValueError(f"coders of different sizes ({sorted({c.d_sae for c in coders})} latents) give no common "
                         "latent axis; give units=[...] or score each coder alone")
    for c in coders:
        bad = [u for u in (units or ()) if not 0 <= int(u) < c.d_sae]
        if bad:
            raise ValueError(f"units {bad} do not exist in the coder at {c.hook_out} (d_sae {c.d_sae}); "
                             f"give latent indices 0..{c.d_sae - 1}")
    t0 = time.perf_counter()
    base, src = task.base_and_source(direction)
    positions = list(range(base.shape[1])) if positions is None else list(positions)
    nodes = latent_nodes(coders, positions, units)
    n_units = len(nodes) // (len(coders) * len(positions))
    extras = {}
    if method == "exact":
        values, error, baseline, cost = _exact(model, task, base, src, coders, positions, units, progress)
    else:
        with splice(model, coders, error=True) as sp:
            sites = _Sites(coders, sp.latent_hooks)
            run = _ESTIMATORS[method](model, task, base, src, sites, **opts)
        B = base.shape[0]
        values = _gather(sites, positions, units, run.latent_scores, task.roles, B)
        error = _gather(sites, positions, None, run.error_scores, task.roles, B)[..., 0]
        if run.dropped:  # GradDrop: 1/(L-1) sum_l |I_l(node)|, I_l summed over prompts first
            ranks = sum(_gather(sites, positions, units, s, task.roles, B).abs() for s in run.dropped)
            extras["rank_score"] = ranks / max(1, model.n_layers - 1)
        baseline, cost = run.baseline, Cost(run.forward, run.backward)
    cost.seconds = time.perf_counter() - t0
    meta = {"positions": positions, "coders": [c.hook_out for c in coders], **opts}
    extras = {"error": error, **extras}
    return Result(values.reshape(len(coders), len(positions), n_units), [str(n) for n in nodes],
                  ("layer", "pos", "latent"), method, "latents", direction, task.metric.name, baseline, cost,
                  extras, meta)


@dataclasses.dataclass
class _Sites:
    """Where each spliced coder sits: its latents hook and the site it writes."""

    coders: list
    latents: list[str]
    """``hook_name('latents', layer)`` per coder."""

    @property
    def outputs(self) -> list[str]:
        return [c.hook_out for c in self.coders]

    @property
    def names(self) -> list[str]:
        return self.latents + self.outputs

    def error_delta(self, source: dict, base: dict) -> dict[str, torch.Tensor]:
        """Per latents hook: error term at the source minus at the base, [B, T, d_out]."""
        out = {}
        for c, lat, site in zip(self.coders, self.latents, self.outputs):
            latent_part = (source[lat] - base[lat]).to(c.W_dec.dtype) @ c.W_dec.detach()
            out[lat] = (source[site] - base[site]) - latent_part.to(source[site].dtype)
        return out


@dataclasses.dataclass
class _Scores:
    """One estimator's per-element scores, keyed by latents hook."""

    latent_scores: dict[str, torch.Tensor]
    """[B, T, d_sae] per coder."""
    error_scores: dict[str, torch.Tensor]
    """[B, T, 1] per coder: the error term's score."""
    baseline: float
    forward: int
    backward: int
    dropped: list[dict[str, torch.Tensor]] = dataclasses.field(default_factory=list)
    """AtP* with GradDrop: the latent scores with each layer's gradient dropped, layer by layer."""


def _gather(sites: _Sites, positions, units, scores: dict, roles, n_prompts: int) -> torch.Tensor:
    """[coder, pos, unit] node values: each coder's [B, T, X] scores summed over prompts at each
    prompt's position (a role resolves per prompt), for ``units`` (None: all X)."""
    out = []
    for lat in sites.latents:
        S = scores[lat]
        rows = torch.arange(n_prompts, device=S.device)
        at = [S[rows, node_positions(Node(0, "latents", unit=0, pos=p), roles, n_prompts, S.device)].sum(0)
              for p in positions]
        t = torch.stack(at)
        out.append(t if units is None else t[:, list(units)])
    return torch.stack(out).to(torch.promote_types(torch.float32, out[0].dtype)).cpu()


def _products(sites: _Sites, delta: dict, d_err: dict, grads: dict) -> tuple[dict, dict]:
    """(latent scores Δf * g_f, error scores Δe . g_site) from gradients at the latents and sites."""
    lat = {h: delta[h] * grads[h] for h in sites.latents}
    err = {h: (d_err[h] * grads[o]).sum(-1, keepdim=True) for h, o in zip(sites.latents, sites.outputs)}
    return lat, err


def _endpoints(model, base, src, sites: _Sites, extra: Sequence[str] = ()) -> tuple[dict, dict]:
    with torch.no_grad():
        return capture(model, src, sites.names + list(extra)), capture(model, base, sites.names + list(extra))


def _gradient_estimate(model, task, base, src, sites: _Sites, extra_hooks: Sequence = ()) -> tuple:
    """(Δf, Δe, the gradient run at the base prompts) from one source capture and one forward
    pass; the backward passes are the caller's."""
    with torch.no_grad():
        source = capture(model, src, sites.names)
    run = forward_for_grads(model, base, task.metric, sites.names, extra_hooks)
    acts = {h: a.detach() for h, a in run.acts.items()}
    delta = {h: source[h] - acts[h] for h in sites.latents}
    return delta, sites.error_delta(source, acts), run


def _atp(model, task, base, src, sites: _Sites) -> _Scores:
    delta, d_err, run = _gradient_estimate(model, task, base, src, sites)
    lat, err = _products(sites, delta, d_err, run.grads())
    return _Scores(lat, err, float(run.value.detach()), 2, 1)


def _atp_star(model, task, base, src, sites: _Sites, graddrop: bool = True) -> _Scores:
    L = model.n_layers
    gates = GradGates()
    names = [hook_name(s, l) for l in range(L) for s in ("attn_out", "mlp_out")]
    delta, d_err, run = _gradient_estimate(model, task, base, src, sites, gates.hooks(names) if graddrop else ())
    lat, err = _products(sites, delta, d_err, run.grads(retain=graddrop))
    out = _Scores(lat, err, float(run.value.detach()), 2, 1)
    if graddrop:
        for l in range(L):
            gates.scale = {hook_name("attn_out", l): 0.0, hook_name("mlp_out", l): 0.0}
            out.dropped.append(_products(sites, delta, d_err, run.grads(retain=l < L - 1))[0])
        gates.scale = {}
        out.backward += L
    return out


def _relp(model, task, base, src, sites: _Sites, attention: str = "pattern") -> _Scores:
    from circuitlab.methods.relp_rules import final_norm_rule, relp_hooks

    with final_norm_rule(model):
        delta, d_err, run = _gradient_estimate(model, task, base, src, sites, relp_hooks(model, attention))
        lat, err = _products(sites, delta, d_err, run.grads())
    return _Scores(lat, err, float(run.value.detach()), 2, 1)


def _ig(model, task, base, src, sites: _Sites, steps: int = 16, variant: str = "inputs",
        rule: str = "right") -> _Scores:
    from circuitlab.methods.ig import _integrate, _interpolate, quadrature

    alphas, weights = quadrature(rule, steps)
    B, m = base.shape[0], task.metric
    alphas = alphas.to(base.device).repeat_interleave(B)
    embed = hook_name("embed")
    source, start = _endpoints(model, base, src, sites, [embed] if variant == "inputs" else [])
    delta = {h: source[h] - start[h] for h in sites.latents}
    d_err = sites.error_delta(source, start)
    grads: dict[str, torch.Tensor] = {}
    if variant == "inputs":
        hooks = [(embed, _interpolate(start[embed], source[embed], alphas))]
        g = forward_for_grads(model, base, m, sites.names, hooks, copies=steps).grads()
        grads = {h: _integrate(g[h], weights, B) for h in sites.names}
        passes = 1
    else:  # one coder's site at a time: latents and error term move together
        for lat, out in zip(sites.latents, sites.outputs):
            hooks = [(lat, _interpolate(start[lat], source[lat], alphas)), (out, _shift(d_err[lat], alphas))]
            g = forward_for_grads(model, base, m, [lat, out], hooks, copies=steps).grads()
            grads.update({h: _integrate(g[h], weights, B) for h in (lat, out)})
        passes = len(sites.latents)
    div = {h: d for h, (_, d) in grads.items()}
    lat_scores = {h: delta[h] * grads[h][0] / div[h] for h in sites.latents}
    err_scores = {h: (d_err[h] * grads[o][0]).sum(-1, keepdim=True) / div[o]
                  for h, o in zip(sites.latents, sites.outputs)}
    baseline = float(m.reduce(metric_per_prompt(model, base, m)[None])[0])
    return _Scores(lat_scores, err_scores, baseline, steps * passes + 3, steps * passes)


def _shift(delta: torch.Tensor, alphas: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Add alpha * delta to an activation batched as steps copies of the prompts."""
    def fn(x):
        copies = alphas.shape[0] // delta.shape[0]
        a = alphas.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return x + a * delta.repeat(copies, *([1] * (delta.dim() - 1))).to(x.dtype)

    return fn


_ESTIMATORS = {"atp": _atp, "atp*": _atp_star, "relp": _relp, "ig": _ig}


def _exact(model, task, base, src, coders, positions, units, progress) -> tuple:
    """(values, error [coder, pos], baseline, cost): one patched run per latent, and per error
    term (the site at its base value plus the change of its error term; NaN where the coder
    writes a site that is not a residual, attention or MLP output), batched by the engine.

    All coders stay spliced with their error terms, so a coder whose nodes are not patched
    changes nothing; each coder's nodes are swept in their own engine call, so its passes are
    the ones it has alone."""
    m = task.metric
    with splice(model, coders, error=True) as sp:
        sites = _Sites(list(coders), sp.latent_hooks)
        source, start = _endpoints(model, base, src, sites)
        d_err = sites.error_delta(source, start)
        values, error = [], torch.full((len(coders), len(positions)), float("nan"))
        passes, baseline = 2, None
        for i, (c, lat, out) in enumerate(zip(coders, sites.latents, sites.outputs)):
            nodes = latent_nodes([c], positions, units)
            patch_source, error_nodes = {lat: source[lat]}, []
            parsed = parse_hook(out)
            if parsed is not None and parsed[0] in VECTOR_FAMILIES:
                patch_source[out] = start[out] + d_err[lat]  # the base site with the source's error term
                error_nodes = [Node(parsed[1], parsed[0], pos=p) for p in positions]
            run = patch_nodes(model, base, patch_source, nodes + error_nodes, m, task.roles, progress=progress)
            b = float(m.reduce(run.baseline[None])[0])  # the same unpatched run for every coder
            baseline = b if baseline is None else baseline
            effects = (m.reduce(run.per_prompt) - b).cpu()
            values.append(effects[: len(nodes)])
            if error_nodes:
                error[i] = effects[len(nodes):]
            passes += run.forward_passes
    return torch.cat(values), error, baseline, Cost(forward_passes=passes)
