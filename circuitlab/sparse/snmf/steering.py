"""The causal test of a factor: add its direction to the MLP and watch the concept's tokens.

Why: a factor that reads well from its contexts may still do nothing the model uses. Following
Shafran et al. (2025), a factor's unit direction is added at its own MLP site (the hidden
activations, which the MLP's output weights carry to its output, or the output itself) at every
position of neutral text, with strength ``alpha`` times the site's typical activation norm, and
the test reads

- the change of log p(concept), the log of the next-token probability summed over the concept's
  token ids, averaged over positions, and
- the KL divergence of the steered next-token distribution from the unsteered one (how much the
  edit disturbs the model at all),

for the factor, the difference-of-means direction of the same concept (the supervised baseline)
and random unit directions (the floor). Comparing methods at equal KL separates "moves the
concept" from "moves everything". Edits go through engine interventions; strength 0 leaves the
model exactly as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from circuitlab.data import DEFAULT, Document
from circuitlab.engine.interventions import DirectionTarget, Intervention, intervene
from circuitlab.engine.forward import final_logits, run_to_final
from circuitlab.engine.sites import hook_name
from circuitlab.sparse.snmf.activations import Activations, check_site, concept_tokens, diff_means
from circuitlab.sparse.snmf.factorize import Factorization


@dataclass
class SteeringConfig:
    """How a steering test runs."""

    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    """Multiples of ``scale`` added along each unit direction (0 = the unsteered model)."""
    n_docs: int = 16
    """Held-out documents of the data source used as neutral text."""
    ctx_len: int = 32
    """Tokens per neutral document."""
    n_random: int = 3
    """Random unit directions averaged for the floor."""
    seed: int = 0
    """Seed of the random directions."""

    def __post_init__(self) -> None:
        s = tuple(float(x) for x in self.strengths)
        if not s or not all(math.isfinite(x) for x in s):
            raise ValueError(f"strengths must be a non-empty list of finite numbers, got {self.strengths!r}")
        self.strengths = s
        for name in ("n_docs", "ctx_len", "n_random"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or (name == "ctx_len" and v < 2):
                raise ValueError(f"{name} must be an int >= {2 if name == 'ctx_len' else 1}, got {v!r}")


@dataclass
class SteeringTest:
    """Concept log-probability change and KL per direction and strength."""

    strengths: list[float]
    """The multiples of ``scale`` tested."""
    scale: float
    """Norm of the added vector at strength 1 (the site's rms activation norm)."""
    concept: list[int]
    """Token ids of the concept."""
    concept_text: list[str]
    """The same tokens as strings."""
    delta_logp: dict[str, list[float]] = field(default_factory=dict)
    """Direction name -> change of mean log p(concept) at each strength."""
    kl: dict[str, list[float]] = field(default_factory=dict)
    """Direction name -> mean KL(unsteered || steered) at each strength."""
    base_logp: float = 0.0
    """Mean log p(concept) of the unsteered model."""
    cosines: dict[str, float] = field(default_factory=dict)
    """Cosine of each named direction with the factor's (how alike factor and baseline are)."""
    label: str = ""

    def at_kl(self, target: float) -> dict[str, Optional[float]]:
        """Each direction's concept log-probability change where its KL first reaches
        ``target`` (linear between the tested strengths, from strength 0 up); None where no
        tested strength disturbs the model that much. Compares methods at equal disturbance."""
        order = sorted(range(len(self.strengths)), key=lambda j: self.strengths[j])
        out: dict[str, Optional[float]] = {}
        for name in self.delta_logp:
            pts = [(0.0, 0.0)] + [(self.kl[name][j], self.delta_logp[name][j]) for j in order
                                  if self.strengths[j] > 0]
            out[name] = None
            for (k0, d0), (k1, d1) in zip(pts, pts[1:]):
                if k0 <= target <= k1 and k1 > k0:
                    out[name] = d0 + (d1 - d0) * (target - k0) / (k1 - k0)
                    break
        return out

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("label", "strengths", "scale", "concept", "concept_text", "base_logp",
                                              "delta_logp", "kl", "cosines")}

    def figure(self):
        """Plotly: concept log-probability change against strength, and against KL."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from circuitlab.webpage import plot_text

        fig = make_subplots(rows=1, cols=2, subplot_titles=("by strength", "by disturbance (KL)"))
        for i, (name, dl) in enumerate(self.delta_logp.items()):
            color = ("#d62728", "#1f77b4", "#7f7f7f", "#2ca02c")[i % 4]
            fig.add_trace(go.Scatter(x=self.strengths, y=dl, name=plot_text(name), mode="lines+markers",
                                     line=dict(color=color), legendgroup=name), 1, 1)
            fig.add_trace(go.Scatter(x=self.kl[name], y=dl, name=plot_text(name), mode="lines+markers",
                                     line=dict(color=color), legendgroup=name, showlegend=False), 1, 2)
        fig.update_xaxes(title_text=f"strength (x {self.scale:.3g})", row=1, col=1)
        fig.update_xaxes(title_text="KL(unsteered || steered), nats", row=1, col=2)
        fig.update_yaxes(title_text="change of log p(concept)", row=1, col=1)
        concept = plot_text(", ".join(self.concept_text))
        fig.update_layout(title=plot_text(self.label) + f"<br><sub>concept: {concept}</sub>", height=380)
        return fig


def site_width(model, site: str) -> int:
    """Entries of one activation vector at an MLP site."""
    return model.d_mlp if site == "neurons" else model.d_model


def factor_steering(model, acts: Activations, fact: Factorization, factor: int,
                    cfg: Optional[SteeringConfig] = None, data: str = DEFAULT,
                    concept: Optional[Sequence[int]] = None) -> SteeringTest:
    """The steering test of one factor: its direction against the difference of means of its
    concept (default: :func:`concept_tokens` of its coefficients) and random directions, at
    the site it was fitted on, with strengths in units of the site's rms activation norm."""
    cfg = cfg if cfg is not None else SteeringConfig()
    if not isinstance(factor, int) or not 0 <= factor < fact.Y.shape[0]:
        raise ValueError(f"factor {factor!r} is outside 0..{fact.Y.shape[0] - 1}")
    ids = list(concept) if concept is not None else concept_tokens(acts, fact.Z[:, factor])
    directions = {f"SNMF factor {factor}": fact.Y[factor], "difference of means": diff_means(acts, ids),
                  f"random (mean of {cfg.n_random})": random_directions(fact.Y.shape[1], cfg.n_random, cfg.seed)}
    test = steering_test(model, acts.layer, acts.site, directions, ids, rms_norm(acts.A), cfg, data=data,
                         label=f"factor {factor} at {acts.hook}")
    u = fact.Y[factor].float()
    dm = directions["difference of means"]
    test.cosines["difference of means"] = float(u @ dm / (u.norm() * dm.norm()).clamp_min(1e-30))
    return test


def rms_norm(A: torch.Tensor) -> float:
    """Root-mean-square row norm of activations: the unit of steering strength."""
    return float(A.double().pow(2).sum(1).mean().sqrt())


def random_directions(d: int, n: int, seed: int = 0) -> torch.Tensor:
    """[n, d] random unit directions (Gaussian, normalised): the steering floor."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n, d, generator=g)
    return r / r.norm(dim=1, keepdim=True)


@torch.no_grad()
def steering_test(model, layer: int, site: str, directions: dict[str, torch.Tensor | Sequence[torch.Tensor]],
                  concept: Sequence[int], scale: float, cfg: Optional[SteeringConfig] = None,
                  docs: Optional[Sequence[Document]] = None, data: str = DEFAULT, label: str = "") -> SteeringTest:
    """Add ``strength * scale`` along each unit direction at ``site`` of block ``layer`` (every
    position of the neutral text) and measure the concept's log-probability change and the KL.

    ``directions``: name -> a [d] direction, or several (averaged: the random floor). ``docs``:
    neutral text (default ``cfg.n_docs`` held-out documents of ``data``)."""
    from circuitlab.api import exclusive
    from circuitlab.data import heldout, pad_documents

    cfg = cfg if cfg is not None else SteeringConfig()
    check_site(model, layer, site)
    concept = [int(c) for c in concept]
    if not concept:
        raise ValueError("concept is empty; give the token ids whose probability the steering should move")
    if not all(0 <= c < model.d_vocab for c in concept):
        raise ValueError(f"concept token ids {concept} must lie in 0..{model.d_vocab - 1}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0 (the norm added at strength 1), got {scale!r}")
    if not directions:
        raise ValueError("directions is empty; name at least one direction to test")
    groups = {name: _unit_rows(name, v) for name, v in directions.items()}
    width = site_width(model, site)
    bad = [f"{name} ({rows.shape[1]})" for name, rows in groups.items() if rows.shape[1] != width]
    if bad:
        raise ValueError(f"directions {', '.join(bad)} do not have the {width} entries of site {site!r}; give "
                         "directions in that site's space")
    docs = list(docs) if docs is not None else heldout(data, cfg.n_docs, ctx_len=cfg.ctx_len)
    toks, lengths = pad_documents(model.tokenizer, docs, cfg.ctx_len)
    toks = toks.to(model.device)
    real = torch.arange(toks.shape[1], device=toks.device)[None] < lengths.to(toks.device)[:, None]
    hook = hook_name(site, layer)
    cidx = torch.tensor(concept, device=toks.device)
    with exclusive(model):
        base = _log_probs(model, toks, [])
        base_logp = float(base[..., cidx].logsumexp(-1)[real].mean())
        test = SteeringTest(list(cfg.strengths), float(scale), concept,
                            model.tokenizer.convert_ids_to_tokens(concept), base_logp=base_logp, label=label)
        for name, rows in groups.items():
            dl, kl = [], []
            for s in cfg.strengths:
                d_sum = k_sum = 0.0
                for u in rows:
                    ivs = [Intervention(DirectionTarget(hook, u.to(model.device)), "add", s * scale)]
                    lp = _log_probs(model, toks, ivs)
                    d_sum += float(lp[..., cidx].logsumexp(-1)[real].mean()) - base_logp
                    k_sum += float((base.exp() * (base - lp)).sum(-1)[real].mean())
                dl.append(d_sum / len(rows))
                kl.append(max(k_sum / len(rows), 0.0))
            test.delta_logp[name] = dl
            test.kl[name] = kl
    return test


def _unit_rows(name: str, v) -> torch.Tensor:
    rows = torch.stack(list(v)) if not isinstance(v, torch.Tensor) else (v[None] if v.dim() == 1 else v)
    rows = rows.detach().float().cpu()
    norms = rows.norm(dim=1, keepdim=True)
    if rows.dim() != 2 or not torch.isfinite(rows).all() or bool((norms == 0).any()):
        raise ValueError(f"direction {name!r} must be finite, non-zero [d] vectors, got shape {tuple(rows.shape)}")
    return rows / norms


def _log_probs(model, toks: torch.Tensor, interventions) -> torch.Tensor:
    """[batch, pos, vocab] next-token log-probabilities (float32) with ``interventions`` active."""
    with intervene(model, interventions):
        return final_logits(model, run_to_final(model, toks)).float().log_softmax(-1)
