"""``decompose``: split a run's activations into what comes from chosen sources and the rest.

Why: CD-T answers "how much of this activation, and of the answer, comes from these
components" in one pass over the model per batch of source sets, with no patched reruns; the
two parts sum to the run's own activations and logits at every layer, so nothing is lost or
double counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from circuitlab.engine.sites import hook_name, parse_hook
from circuitlab.methods.cdt.rules import Rules
from circuitlab.methods.cdt.sources import SOURCE_FAMILIES, Inject, check_in_model, source_sets
from circuitlab.methods.cdt.walk import Frame, Run, metric_relevance, unembed, walk
from circuitlab.validate import check_choice


@dataclass
class Decomposition:
    """Relevant and irrelevant parts of one run's activations for S source sets.

    ``relevant[h][s] + irrelevant[h][s]`` is the run's activation at hook ``h`` for every set
    ``s``; the logits likewise."""

    sources: list[list[str]]
    """The source sets (node labels), axis 0 of every tensor."""
    relevant: dict[str, torch.Tensor]
    """Hook name -> [S, B, T, ...]: the part coming from each source set."""
    irrelevant: dict[str, torch.Tensor]
    """Hook name -> [S, B, T, ...]: the rest."""
    logits_relevant: torch.Tensor
    """[S, B, k, vocab] at ``logit_positions``."""
    logits_irrelevant: torch.Tensor
    logit_positions: torch.Tensor
    """[B, k] positions the logits are at."""
    metric: Optional[torch.Tensor] = None
    """[S]: the metric's relevant part, metric(full) - metric(irrelevant) (when a metric was
    given): for a logit difference, the logit difference of the relevant logits."""
    rules: Rules = field(default_factory=Rules)
    meta: dict[str, Any] = field(default_factory=dict)

    def share(self, hook: str) -> torch.Tensor:
        """[S, B, T]: |relevant| / (|relevant| + |irrelevant|) (vector norms) at ``hook``."""
        r = self.relevant[hook].flatten(3).norm(dim=-1)
        i = self.irrelevant[hook].flatten(3).norm(dim=-1)
        return r / (r + i).clamp_min(torch.finfo(r.dtype).tiny)

    def plot(self, source_set: int = 0, prompt: int = 0, site: str = "resid_post", tokens: Optional[list[str]] = None):
        """Plotly heatmap of the relevant share of ``site`` by layer and position for one
        source set and prompt (record that site when decomposing)."""
        import plotly.graph_objects as go

        layers = sorted(p[1] for p in map(parse_hook, self.relevant) if p is not None and p[0] == site)
        if not layers:
            raise ValueError(f"no {site!r} records; decompose with record=({site!r},)")
        z = torch.stack([self.share(hook_name(site, l))[source_set, prompt] for l in layers]).cpu().numpy()
        x = tokens if tokens is not None else [str(t) for t in range(z.shape[1])]
        fig = go.Figure(go.Heatmap(z=z, x=x, y=[f"L{l}" for l in layers], zmin=0, zmax=1,
                                   colorscale="Viridis", colorbar={"title": "relevant share"}))
        fig.update_layout(title=f"CD-T: share of {site} from {', '.join(self.sources[source_set])}",
                          xaxis_title="position", yaxis_title="layer")
        return fig


def decompose(model, tokens, sources, reference=None, metric=None, record: Sequence[str] = ("resid_post",),
              rules: Optional[Rules] = None, logit_positions: Optional[torch.Tensor] = None,
              roles: Optional[dict[str, torch.Tensor]] = None) -> Decomposition:
    """Contextual decomposition of ``model`` on ``tokens`` [B, T] relative to ``sources``.

    ``sources``: one label, a list of labels (one set), or a list of lists (several sets,
    decomposed together). ``reference``: None (each source's whole activation is relevant),
    tokens [B, T] (its activation minus its activation on those tokens is relevant, e.g. the
    clean-minus-corrupted difference) or 'mean' (minus its mean over the batch). ``metric``
    (e.g. ``task.metric``): also its relevant part, with logits at its positions. ``record``:
    site families whose parts are kept for every layer ('all': every family the walk passes).
    """
    from circuitlab.api import exclusive

    rules = rules or Rules()
    frame = Frame.of(model)
    if isinstance(tokens, str):
        tokens = model.to_tokens(tokens)
    tokens = torch.as_tensor(tokens, device=model.device)
    if tokens.dim() == 1:
        tokens = tokens[None]
    B, T = tokens.shape
    sets = source_sets(sources)
    for node in (n for s in sets for n in s):
        check_in_model(model, node, T, roles or {})
    record = SOURCE_FAMILIES if record == "all" else tuple(record)
    for r in record:
        check_choice("record", r, SOURCE_FAMILIES)
    hooks = sorted({n.hook for s in sets for n in s})
    with exclusive(model), torch.no_grad():
        run = Run.of(model, frame, tokens, hooks)
        refs = _references(model, frame, run, hooks, reference, tokens.shape)
        taps = Inject.of(model, sets, B, T, roles or {}, tokens.device, refs, record, actual=run.acts)
        pair = walk(frame, run, len(sets), taps, rules, taps.start)
        if metric is not None:
            logit_positions = metric.positions
        logits = unembed(frame, run, pair, logit_positions, taps, rules)
        rel_metric = metric_relevance(metric, logits) if metric is not None else None
    positions = logit_positions if logit_positions is not None else torch.arange(T, device=tokens.device).expand(B, T)
    return Decomposition([[str(n) for n in s] for s in sets], {k: v[0] for k, v in taps.kept.items()},
                         {k: v[1].contiguous() for k, v in taps.kept.items()}, logits[0], logits[1].contiguous(),
                         positions, rel_metric, rules,
                         {"reference": reference if reference is None or isinstance(reference, str) else "tokens"})


def _references(model, frame: Frame, run: Run, hooks: list[str], reference, shape) -> dict[str, torch.Tensor]:
    """Reference activation of each source hook (empty: the reference is 0); reference tokens
    are run with the same hooks as the decomposed run (equal prompts, equal values)."""
    if reference is None:
        return {}
    if isinstance(reference, str):
        check_choice("reference", reference, ("mean",))
        return {h: run.acts[h].mean(0, keepdim=True) for h in hooks}
    ref = torch.as_tensor(reference, device=model.device)
    if ref.dim() == 1:
        ref = ref[None]
    if tuple(ref.shape) != tuple(shape):
        raise ValueError(f"reference tokens have shape {tuple(ref.shape)} but tokens have {tuple(shape)}; give "
                         "reference prompts of the same length (e.g. task.corrupt_tokens with task.clean_tokens)")
    return Run.of(model, frame, ref, hooks).acts
