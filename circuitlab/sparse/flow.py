"""Feature flow: the features of different layers' coders matched by the cosine similarity of their
directions, with no data ("Analyze Feature Flow", Laptev et al. 2025).

Why data-free: a residual SAE at layer L and one at L+1 read the same stream, so a feature that
survives a block keeps (nearly) its direction; the cosine of two decoder rows says whether two
latents write the same thing, for every pair of latents at once, without running the model. A
coder of a module between them (a transcoder's or an MLP-output SAE's decoder writes into the same
stream) says whether the block created or changed the feature. From the best match of each
feature among its predecessors the paper sorts features into:

- ``persisting``: a predecessor in the previous residual coder, none in the modules between;
- ``processed``: a predecessor in the previous residual coder and one in a module;
- ``created``: no residual predecessor, but a module writes it;
- ``emerging``: no predecessor above the threshold anywhere;

and a feature with no successor in the next residual coder is ``vanishing``. A chain of best
matches is the feature's *flow*; :func:`flow_steering` adds its directions at every layer of
the flow through engine interventions. :func:`activation_matches` and :func:`agreement` check
the cosine matches against the correlation of the two latents' activations on text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch

from circuitlab.sparse.base import SparseCoder

SPACES = ("decoder", "encoder", "decoder-encoder")
"""How two coders' latents are compared: decoder rows (what each writes, the paper's default),
encoder columns (what each reads), or the first coder's decoder against the second's encoder
(what the later coder reads of what the earlier one wrote)."""
CATEGORIES = ("persisting", "processed", "created", "emerging")
"""A feature's category from its best predecessors (see the module docstring)."""
ROLES = ("resid", "attn", "mlp")
"""Where a coder writes: the residual stream itself, or a module's output added to it."""

# hook family -> (role, depth offset); depth 2L + offset orders the sites inside block L
_SITES = {"resid_pre": ("resid", 0), "attn_out": ("attn", 1), "resid_mid": ("resid", 1),
          "mlp_out": ("mlp", 2), "resid_post": ("resid", 2)}


@dataclass
class FlowConfig:
    """How features are matched and which matches count."""

    threshold: float = 0.5
    """Cosine similarity at or above which two latents are the same feature. Random directions in
    d dimensions have cosines of about 1/sqrt(d) (0.09 at d=128, 0.04 at d=576); the best of
    thousands reaches 3-4 times that, so 0.5 leaves chance matches out for d >= 128."""
    top_k: int = 3
    """Matches kept per latent (the flow graph's edges are those at or above ``threshold``)."""
    space: str = "decoder"
    """Directions compared (one of :data:`SPACES`)."""
    chunk: int = 2048
    """Latents per block of the similarity matrix (bounds memory for large coders)."""

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"FlowConfig.threshold must be a cosine in (0, 1], not {self.threshold!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"FlowConfig.top_k must be a whole number >= 1, not {self.top_k!r}")
        if self.space not in SPACES:
            raise ValueError(f"FlowConfig.space {self.space!r} is unknown; choose one of {', '.join(SPACES)}")
        if self.chunk < 1:
            raise ValueError(f"FlowConfig.chunk must be >= 1, not {self.chunk!r}")


@dataclass
class Matches:
    """For every latent of one coder, its best latents in another and their scores."""

    index: torch.Tensor
    """[n, k] long: the other coder's latents, best first."""
    score: torch.Tensor
    """[n, k] float: cosine similarity (or activation correlation) of each match."""

    @property
    def best(self) -> torch.Tensor:
        """[n] the best match of each latent."""
        return self.index[:, 0]


# ------------------------------------------------------------------ directions and cosine matching

def _single_site(coder: SparseCoder, what: str) -> None:
    cfg = coder.cfg
    if cfg.n_sources != 1 or cfg.n_targets_ != 1:
        raise ValueError(f"{what} is a crosscoder ({cfg.n_sources} sources, {cfg.n_targets_} targets); feature flow "
                         "matches single-site coders (SAEs, transcoders); compare a crosscoder's sources with "
                         "circuitlab.sparse.source_shares")


def directions(coder: SparseCoder, which: str = "decoder") -> torch.Tensor:
    """[d_sae, d] unit vectors (float32, CPU): each latent's decoder row ('decoder', what it writes)
    or encoder column ('encoder', what it reads; a tied coder reads with its decoder)."""
    _single_site(coder, "the coder")
    if which == "decoder" or (which == "encoder" and coder.tied):
        w = coder.W_dec
    elif which == "encoder":
        w = coder.W_enc_t
    else:
        raise ValueError(f"directions(which={which!r}): choose 'decoder' or 'encoder'")
    w = w.detach().float().cpu()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _pair_directions(a: SparseCoder, b: SparseCoder, space: str) -> tuple[torch.Tensor, torch.Tensor]:
    if space not in SPACES:
        raise ValueError(f"space {space!r} is unknown; choose one of {', '.join(SPACES)}")
    wa = directions(a, "encoder" if space == "encoder" else "decoder")
    wb = directions(b, "decoder" if space == "decoder" else "encoder")
    if wa.shape[1] != wb.shape[1]:
        raise ValueError(f"the coders' {space} directions have widths {wa.shape[1]} and {wb.shape[1]}; feature "
                         "flow compares coders of one model (same d_model)")
    return wa, wb


def cosine_matrix(a: SparseCoder, b: SparseCoder, space: str = "decoder") -> torch.Tensor:
    """[d_sae(a), d_sae(b)] cosine similarity of every pair of latents (see :data:`SPACES`)."""
    wa, wb = _pair_directions(a, b, space)
    return wa @ wb.T


def cosine_matches(a: SparseCoder, b: SparseCoder, k: int = 1, space: str = "decoder",
                   chunk: int = 2048) -> Matches:
    """Each latent of ``a``'s ``k`` most similar latents of ``b`` (blocks of ``chunk`` rows, so a
    pair of large coders never holds its whole similarity matrix)."""
    wa, wb = _pair_directions(a, b, space)
    k = min(k, wb.shape[0])
    idx, val = [], []
    for i in range(0, wa.shape[0], chunk):
        top = (wa[i:i + chunk] @ wb.T).topk(k, dim=1)
        idx.append(top.indices)
        val.append(top.values)
    return Matches(torch.cat(idx), torch.cat(val))


# ------------------------------------------------------------------ stages and the flow graph

@dataclass(frozen=True)
class Stage:
    """A coder's place in the forward pass."""

    name: str
    role: str
    """'resid' (a residual-stream SAE), 'attn' or 'mlp' (writes a module's output: a transcoder,
    an attention- or MLP-output SAE)."""
    layer: int
    depth: int
    """Order of the written site: ``2 * layer`` + 0 (resid_pre), 1 (attn_out, resid_mid),
    2 (mlp_out, resid_post)."""

    @property
    def label(self) -> str:
        """Short label: ``R3`` (residual coder after block 3; ``R3.pre`` / ``R3.mid`` before it /
        between its attention and MLP), ``M3`` (its MLP), ``A3`` (its attention)."""
        tail = {0: ".pre", 1: ".mid"}.get(self.depth - 2 * self.layer, "") if self.role == "resid" else ""
        return f"{self.role[0].upper()}{self.layer}{tail}"


def stage_of(name: str, coder: SparseCoder) -> Stage:
    """Where ``coder`` writes (its output hook), as a :class:`Stage`."""
    from circuitlab.engine.sites import parse_hook

    _single_site(coder, name)
    hook = coder.hook_out
    parsed = parse_hook(hook) if hook else None
    if parsed is None or parsed[0] not in _SITES or parsed[1] is None:
        raise ValueError(f"coder {name!r} writes {hook or 'no named hook'!r}; feature flow needs coders writing the "
                         f"residual stream or a module's output ({', '.join(_SITES)})")
    family, layer = parsed
    role, offset = _SITES[family]
    return Stage(name, role, layer, 2 * layer + offset)


@dataclass
class Link:
    """Matches from the latents of a later stage back to an earlier one."""

    source: str
    """The earlier stage (predecessors)."""
    target: str
    """The later stage, whose every latent has a row in ``matches``."""
    matches: Matches

    def same_index(self) -> float:
        """Share of latents whose best match has their own index: about 1/d_sae for coders
        trained apart, near 1 for coders that started from the same random initialisation (see
        :func:`check_shared_init`)."""
        best = self.matches.best
        return float((best == torch.arange(len(best))).double().mean())


@dataclass
class FlowGraph:
    """Feature flow through a chain of coders: predecessor and successor matches, categories."""

    stages: dict[str, Stage]
    chain: list[str]
    """The coders in forward order whose features flow into each other (residual SAEs when there
    are two or more; otherwise every coder, e.g. a model's transcoders)."""
    back: list[Link]
    """For each chain stage after the first: matches to the previous chain stage, then to each
    module stage in between."""
    forward: list[Link]
    """For each chain stage before the last: matches to the next chain stage."""
    config: FlowConfig
    sizes: dict[str, int] = field(default_factory=dict)
    """Latents per stage."""

    def links_into(self, name: str) -> list[Link]:
        return [ln for ln in self.back if ln.target == name]

    def categories(self, name: str) -> list[str]:
        """The category (:data:`CATEGORIES`) of every latent of chain stage ``name``; the first
        stage, with no predecessor coder, has none (an empty list)."""
        links = self.links_into(name)
        if not links:
            return []
        t = self.config.threshold
        resid = links[0].matches.score[:, 0] >= t
        module = torch.zeros_like(resid)
        for ln in links[1:]:
            module |= ln.matches.score[:, 0] >= t
        names = torch.full(resid.shape, 3)
        names[resid & ~module] = 0
        names[resid & module] = 1
        names[~resid & module] = 2
        return [CATEGORIES[i] for i in names.tolist()]

    def vanishing(self, name: str) -> torch.Tensor:
        """[d_sae] True for latents of chain stage ``name`` with no successor at or above the
        threshold in the next one (all False for the last stage, which has no next coder)."""
        for ln in self.forward:
            if ln.source == name:
                return ln.matches.score[:, 0] < self.config.threshold
        return torch.zeros(self.sizes[name], dtype=torch.bool)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per chain stage: how many latents fall in each category, and how many vanish."""
        out = {}
        for name in self.chain:
            cats = self.categories(name)
            c = {k: cats.count(k) for k in CATEGORIES} if cats else {}
            c["vanishing"] = int(self.vanishing(name).sum())
            out[name] = c
        return out

    def trace(self, name: str, latent: int, steps: Optional[int] = None) -> "Flow":
        """The flow of one feature: matches at or above the threshold followed backwards to the
        first chain stage (with the module latents that write each step) and forwards to the last,
        at most ``steps`` chain stages each way (None: all)."""
        if name not in self.stages:
            raise ValueError(f"no stage {name!r} in this flow graph; stages: {', '.join(self.stages)}")
        if not 0 <= latent < self.sizes[name]:
            raise ValueError(f"latent {latent} is outside {name!r} (0..{self.sizes[name] - 1})")
        if name not in self.chain:
            raise ValueError(f"{name!r} is a module stage; trace a feature of a chain stage: {', '.join(self.chain)}")
        t = self.config.threshold
        nodes, edges = {(name, latent)}, []
        frontier, pos = {latent}, self.chain.index(name)
        for step, p in enumerate(range(pos, 0, -1)):  # backwards
            if steps is not None and step >= steps:
                break
            nxt = set()
            for ln in self.links_into(self.chain[p]):
                for u in frontier:
                    for j, s in zip(ln.matches.index[u].tolist(), ln.matches.score[u].tolist()):
                        if s >= t:
                            nodes.add((ln.source, j))
                            edges.append(((ln.source, j), (ln.target, u), s))
                            if ln.source == self.chain[p - 1]:
                                nxt.add(j)
            frontier = nxt
        frontier = {latent}
        for step, ln in enumerate(self.forward[pos:]):  # forwards
            if steps is not None and step >= steps:
                break
            nxt = set()
            for u in frontier:
                for j, s in zip(ln.matches.index[u].tolist(), ln.matches.score[u].tolist()):
                    if s >= t:
                        nodes.add((ln.target, j))
                        edges.append(((ln.source, u), (ln.target, j), s))
                        nxt.add(j)
            frontier = nxt
        order = {n: self.stages[n].depth for n in self.stages}
        return Flow((name, latent), sorted(nodes, key=lambda n: (order[n[0]], n[1])),
                    sorted(set(edges), key=lambda e: (order[e[0][0]], -e[2])), self)

    def to_dict(self, per_latent: bool = True) -> dict:
        """JSON-ready summary: stages, counts and (``per_latent``) each latent's best matches."""
        from circuitlab.io import format_tag

        d = {"format": format_tag("feature_flow"), "threshold": self.config.threshold, "space": self.config.space,
             "top_k": self.config.top_k,
             "stages": {n: {"role": s.role, "layer": s.layer, "depth": s.depth, "latents": self.sizes[n]}
                        for n, s in self.stages.items()},
             "chain": list(self.chain), "counts": self.counts(),
             "summary": [{"source": ln.source, "target": ln.target,
                          "mean_best_cosine": round(float(ln.matches.score[:, 0].mean()), 4),
                          "same_index": round(ln.same_index(), 4)} for ln in self.back]}
        if per_latent:
            d["links"] = [{"source": ln.source, "target": ln.target, "direction": way,
                           "index": ln.matches.index.tolist(),
                           "score": [[round(v, 4) for v in r] for r in ln.matches.score.tolist()]}
                          for way, links in (("back", self.back), ("forward", self.forward)) for ln in links]
            d["categories"] = {n: self.categories(n) for n in self.chain}
        return d

    def counts_figure(self):
        """Plotly stacked bars: the categories of each chain stage's latents, and how many vanish."""
        import plotly.graph_objects as go

        counts = self.counts()
        x = [self.stages[n].label for n in self.chain]
        fig = go.Figure()
        for cat in (*CATEGORIES, "vanishing"):
            fig.add_trace(go.Bar(name=cat, x=x, y=[counts[n].get(cat, 0) for n in self.chain],
                                 offsetgroup="v" if cat == "vanishing" else "c"))
        fig.update_layout(barmode="stack", title=f"Feature flow categories (cosine >= {self.config.threshold:g}, "
                          f"{self.config.space} directions)", xaxis_title="coder", yaxis_title="latents")
        return fig

    def sankey(self):
        """Plotly sankey of the whole chain: each stage's latents split by whether they come from
        the previous residual coder, a module or nowhere, and whether they go on."""
        import plotly.graph_objects as go

        labels, src, dst, val = [], [], [], []

        def node(label: str) -> int:
            if label not in labels:
                labels.append(label)
            return labels.index(label)

        for name in self.chain:
            cats = self.categories(name)
            lab = self.stages[name].label
            van = self.vanishing(name)
            if cats:
                prev = self.stages[self.chain[self.chain.index(name) - 1]].label
                for cat in CATEGORIES:
                    n = cats.count(cat)
                    if not n:
                        continue
                    origin = {"persisting": f"{prev} (kept)", "processed": f"{prev} (kept)",
                              "created": f"modules -> {lab}", "emerging": f"new in {lab}"}[cat]
                    src.append(node(origin))
                    dst.append(node(f"{lab} {cat}"))
                    val.append(n)
                    nxt_from = f"{lab} {cat}"
                    kept = sum(1 for c, v in zip(cats, van.tolist()) if c == cat and not v)
                    if name != self.chain[-1]:
                        src.append(node(nxt_from))
                        dst.append(node(f"{lab} (kept)"))
                        val.append(kept)
                        if n - kept:
                            src.append(node(nxt_from))
                            dst.append(node(f"{lab} vanishing"))
                            val.append(n - kept)
            elif name != self.chain[-1]:
                src.append(node(f"{lab} all"))
                dst.append(node(f"{lab} (kept)"))
                val.append(int((~van).sum()))
                src.append(node(f"{lab} all"))
                dst.append(node(f"{lab} vanishing"))
                val.append(int(van.sum()))
        fig = go.Figure(go.Sankey(node=dict(label=labels, pad=12), link=dict(source=src, target=dst, value=val)))
        fig.update_layout(title="Feature flow through the chain of coders (latent counts)")
        return fig


def flow_graph(coders: Mapping[str, SparseCoder] | Sequence[SparseCoder], config: Optional[FlowConfig] = None,
               **options) -> FlowGraph:
    """Match every chain coder's latents to the previous chain coder and to the module coders
    written in between, and every chain coder's latents to the next one.

    ``coders``: name -> coder (or a list, named ``coder0``...), each a single-site coder of one
    model: residual SAEs (resid_pre / resid_mid / resid_post) form the chain when there are two or
    more; transcoders and attention/MLP-output SAEs are modules. With fewer than two residual
    SAEs every coder is a chain stage (a model's transcoders, layer by layer). ``options`` are
    :class:`FlowConfig` fields when ``config`` is not given."""
    cfg = config or FlowConfig(**options)
    if config is not None and options:
        raise ValueError("give either config=FlowConfig(...) or its fields as keywords, not both")
    if not isinstance(coders, Mapping):
        coders = {f"coder{i}": c for i, c in enumerate(coders)}
    if len(coders) < 2:
        raise ValueError(f"feature flow needs at least two coders, got {len(coders)}")
    stages = {n: stage_of(n, c) for n, c in coders.items()}
    order = sorted(stages, key=lambda n: (stages[n].depth, ROLES.index(stages[n].role), n))
    resid = [n for n in order if stages[n].role == "resid"]
    chain = resid if len(resid) >= 2 else order
    for a, b in zip(chain, chain[1:]):
        if stages[a].depth == stages[b].depth:
            raise ValueError(f"coders {a!r} and {b!r} write the same site; give one coder per site of the chain")
    widths = {c.W_dec.shape[1] for c in coders.values()}
    if len(widths) != 1:
        raise ValueError(f"the coders write vectors of different widths {sorted(widths)}; give coders of one model")
    back, forward = [], []
    for a, b in zip(chain, chain[1:]):
        back.append(Link(a, b, cosine_matches(coders[b], coders[a], cfg.top_k, cfg.space, cfg.chunk)))
        lo, hi = stages[a].depth, stages[b].depth
        for m in order:
            if m not in chain and lo < stages[m].depth <= hi:
                back.append(Link(m, b, cosine_matches(coders[b], coders[m], cfg.top_k, cfg.space, cfg.chunk)))
        forward.append(Link(a, b, cosine_matches(coders[a], coders[b], cfg.top_k, cfg.space, cfg.chunk)))
    sizes = {n: c.d_sae for n, c in coders.items()}
    graph = FlowGraph({n: stages[n] for n in order}, chain, back, forward, cfg, sizes)
    check_shared_init(graph)
    return graph


SHARED_INIT = 0.2
"""Share of same-index best matches above which two coders are taken to share their initialisation."""


def check_shared_init(graph: FlowGraph) -> list[tuple[str, str, float]]:
    """Links whose best matches mostly keep the latent's own index, with a warning for them.

    Why: coders initialised from the same seed start with identical decoder rows; after a short
    training the rows keep part of that start, so latent i of one coder is most similar to latent
    i of the other whether or not they learned the same feature. Cosine matches between such
    coders measure the shared start, not shared features; train coders with different seeds."""
    import warnings

    found = [(ln.source, ln.target, ln.same_index()) for ln in graph.back]
    found = [f for f in found if f[2] > SHARED_INIT]
    if found:
        pairs = ", ".join(f"{a} -> {b} ({s:.0%})" for a, b, s in found)
        warnings.warn(f"cosine matches between coders that look initialised alike (share of latents whose best "
                      f"match has the same index: {pairs}); these matches reflect the shared initial decoder more "
                      "than shared features: train coders with different seeds", stacklevel=3)
    return found


@dataclass
class Flow:
    """One feature's flow: the latents linked to it and the similarity of each link."""

    start: tuple[str, int]
    nodes: list[tuple[str, int]]
    """(stage name, latent), in forward order."""
    edges: list[tuple[tuple[str, int], tuple[str, int], float]]
    """(earlier node, later node, cosine)."""
    graph: FlowGraph

    def path(self) -> list[tuple[str, int]]:
        """One latent per chain stage: the start and, each way, the best-scoring match of the
        previous step (the directions :func:`flow_steering` adds)."""
        g = self.graph
        out = [self.start]
        pos = g.chain.index(self.start[0])
        for direction in (-1, 1):
            cur = self.start
            for p in range(pos + direction, len(g.chain) if direction > 0 else -1, direction):
                cands = [(s, v if u == cur else u) for u, v, s in self.edges
                         if cur in (u, v) and (v if u == cur else u)[0] == g.chain[p]]
                if not cands:
                    break
                cur = max(cands)[1]
                out.append(cur)
        return sorted(out, key=lambda n: g.stages[n[0]].depth)

    def label(self, node: tuple[str, int]) -> str:
        return f"{self.graph.stages[node[0]].label}:{node[1]}"

    def figure(self, title: str = ""):
        """Plotly sankey of this flow (link width = cosine similarity)."""
        import plotly.graph_objects as go

        from circuitlab.webpage import plot_text

        idx = {n: i for i, n in enumerate(self.nodes)}
        labels = [plot_text(self.label(n)) for n in self.nodes]
        colours = ["#f94144" if n == self.start else ("#577590" if n[0] in self.graph.chain else "#90be6d")
                   for n in self.nodes]
        link = dict(source=[idx[u] for u, _, _ in self.edges], target=[idx[v] for _, v, _ in self.edges],
                    value=[max(s, 1e-3) for _, _, s in self.edges],
                    customdata=[f"{s:.3f}" for _, _, s in self.edges],
                    hovertemplate="cosine %{customdata}<extra></extra>")
        fig = go.Figure(go.Sankey(node=dict(label=labels, color=colours, pad=14), link=link))
        title = title or f"Flow of {self.label(self.start)} (residual: blue, modules: green)"
        fig.update_layout(title=plot_text(title))
        return fig

    def to_dict(self) -> dict:
        return {"start": self.label(self.start), "nodes": [self.label(n) for n in self.nodes],
                "edges": [[self.label(u), self.label(v), round(s, 4)] for u, v, s in self.edges],
                "path": [self.label(n) for n in self.path()]}


# ------------------------------------------------------------------ flow-guided steering

def flow_steering(flow: Flow, coders: Mapping[str, SparseCoder], strength: float,
                  positions: Optional[Sequence[int]] = None, split: bool = True,
                  stages: Optional[Sequence[str]] = None, device=None) -> list:
    """Engine interventions adding a feature's decoder direction at every chain stage of its flow
    (:meth:`Flow.path`; only those in ``stages`` when given): ``strength`` times the unit
    direction at each site, or ``strength / n`` at each of the ``n`` sites with ``split`` (the
    same total as steering one layer). For ``circuitlab.engine.interventions.intervene`` /
    ``score`` / ``generate``.

    Why along the flow: a direction added at one layer is read and rewritten by later blocks; the
    paper finds that adding each layer's own version of the feature steers more reliably than
    one layer alone at the same total strength."""
    import math

    from circuitlab.engine.sites import parse_hook
    from circuitlab.methods.steering import SteeringVector, steer

    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number, got {strength!r}")
    path = [n for n in flow.path() if stages is None or n[0] in stages]
    if not path:
        raise ValueError(f"none of stages {list(stages or [])} is on the flow's path "
                         f"{[flow.label(n) for n in flow.path()]}")
    missing = [n for n, _ in path if n not in coders]
    if missing:
        raise ValueError(f"no coder given for stage(s) {missing}; pass the coders the flow graph was built from")
    each = strength / len(path) if split else strength
    out = []
    for name, latent in path:
        coder = coders[name]
        site, layer = parse_hook(coder.hook_out)
        u = directions(coder, "decoder")[latent]
        if device is not None:
            u = u.to(device)
        vec = SteeringVector(u, site, layer, {"method": "feature_flow", "feature": flow.label((name, latent))})
        out += steer(vec, each, positions)
    return out


# ------------------------------------------------------------------ activation-based matching

@torch.no_grad()
def coder_activations(model, coders: Mapping[str, SparseCoder], docs, ctx_len: int = 64,
                      batch_docs: int = 32, interventions: Sequence = (),
                      exclusions: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Latent activations of every coder on the same tokens of ``docs`` ({name: [n_tokens, d_sae]},
    float32, CPU) and the token ids [n_tokens], with engine ``interventions`` active. A token is
    kept when every coder would have used it (each coder's BOS, token-id and norm exclusions, as
    in training); with ``exclusions=False`` only padding and BOS are dropped, so two runs with
    different interventions keep the same tokens."""
    from circuitlab.engine.cache import capture
    from circuitlab.engine.interventions import intervention_hooks
    from circuitlab.sparse.store import Exclusion, keep_mask, tokenize_documents

    for n, c in coders.items():
        _single_site(c, n)
    hooks = list(dict.fromkeys(c.hook_in for c in coders.values()))
    acts: dict[str, list[torch.Tensor]] = {n: [] for n in coders}
    toks_out = []
    for i in range(0, len(docs), batch_docs):
        tokens, lengths = tokenize_documents(model.tokenizer, docs[i:i + batch_docs], ctx_len)
        got = capture(model, tokens.to(model.device), hooks, dtype=torch.float32, device="cpu",
                      hooks=intervention_hooks(model, interventions))
        keep = torch.ones(tokens.shape, dtype=torch.bool)
        for c in coders.values():
            ex = Exclusion.of(c.cfg) if exclusions else Exclusion()
            keep &= keep_mask(tokens, lengths, got[c.hook_in].norm(dim=-1), ex)
        for n, c in coders.items():
            x = got[c.hook_in][keep]
            dev = c.W_dec.device
            acts[n].append(c.encode(x.to(dev, c.W_dec.dtype)).float().cpu())
        toks_out.append(tokens[keep])
    return {n: torch.cat(v) for n, v in acts.items()}, torch.cat(toks_out)


def correlation_matches(fa: torch.Tensor, fb: torch.Tensor, k: int = 1, chunk: int = 2048) -> Matches:
    """Each latent (column) of ``fa``'s ``k`` best-correlated columns of ``fb`` (Pearson, over the
    rows, which must be the same tokens). A column that never varies (a dead latent) has
    correlation 0 with everything."""
    if fa.shape[0] != fb.shape[0]:
        raise ValueError(f"activations cover {fa.shape[0]} and {fb.shape[0]} tokens; give both coders' "
                         "activations on the same tokens (coder_activations)")

    def standard(f: torch.Tensor) -> torch.Tensor:  # statistics in float64, the big product in float32
        f = f.double()
        z = f - f.mean(0)
        sd = z.pow(2).mean(0).sqrt()
        return ((z / sd.clamp_min(1e-12)) * (sd > 1e-12)).float()

    za, zb = standard(fa), standard(fb)
    k = min(k, zb.shape[1])
    idx, val = [], []
    for i in range(0, za.shape[1], chunk):
        top = (za[:, i:i + chunk].T @ zb / za.shape[0]).topk(k, dim=1)
        idx.append(top.indices)
        val.append(top.values.float())
    return Matches(torch.cat(idx), torch.cat(val))


def pair_correlations(fa: torch.Tensor, fb: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over the rows of column ``ia[i]`` of ``fa`` with column ``ib[i]`` of ``fb``
    (0 where either never varies)."""
    a, b = fa[:, ia].double(), fb[:, ib].double()
    a, b = a - a.mean(0), b - b.mean(0)
    den = (a.pow(2).sum(0) * b.pow(2).sum(0)).sqrt()
    return torch.where(den > 1e-12, (a * b).sum(0) / den.clamp_min(1e-12), torch.zeros_like(den)).float()


def agreement(cosine: Matches, activation: Matches, alive: Optional[torch.Tensor] = None,
              threshold: Optional[float] = None) -> dict:
    """How often the data-free match is the activation match, over the latents in ``alive``
    (default all): ``top1`` (same best latent), ``in_topk`` (the activation match among the
    cosine top k); with ``threshold``, the same over latents whose cosine match reaches it
    (``confident_*``), and how many those are."""
    n = cosine.index.shape[0]
    alive = torch.ones(n, dtype=torch.bool) if alive is None else alive.bool()
    same = cosine.best == activation.best
    inside = (cosine.index == activation.best[:, None]).any(1)
    out = {"latents": int(alive.sum()), "top1": _frac(same, alive), "in_topk": _frac(inside, alive),
           "k": int(cosine.index.shape[1])}
    if threshold is not None:
        conf = alive & (cosine.score[:, 0] >= threshold)
        out.update(confident=int(conf.sum()), confident_top1=_frac(same, conf), confident_in_topk=_frac(inside, conf))
    return out


def _frac(hit: torch.Tensor, among: torch.Tensor) -> float:
    n = int(among.sum())
    return float((hit & among).sum()) / n if n else float("nan")


def compare_with_activations(model, coders: Mapping[str, SparseCoder], graph: FlowGraph, docs, ctx_len: int = 64,
                             min_fires: int = 5) -> list[dict]:
    """For each backward link of ``graph``: :func:`agreement` of its cosine matches with the
    activation-correlation matches on ``docs``, over the later coder's latents that fire on at
    least ``min_fires`` tokens; and the mean activation correlation of the cosine match
    (``corr_of_cosine_match``) beside that of the best-correlated latent (``corr_of_best_match``).
    Each pair is run on the tokens both coders use."""
    out = []
    for ln in graph.back:  # one pair at a time: memory holds two coders' activations, not all of them
        acts, _ = coder_activations(model, {"a": coders[ln.target], "b": coders[ln.source]}, docs, ctx_len)
        fa, fb = acts["a"], acts["b"]
        alive = (fa > 0).sum(0) >= min_fires
        am = correlation_matches(fa, fb, k=1)
        row = {"source": ln.source, "target": ln.target, "tokens": int(fa.shape[0])}
        row.update(agreement(ln.matches, am, alive, graph.config.threshold))
        # how good the data-free choice is in activation terms, next to the best possible
        ids = torch.arange(fa.shape[1])[alive]
        row["corr_of_cosine_match"] = float(pair_correlations(fa, fb, ids, ln.matches.best[alive]).mean())
        row["corr_of_best_match"] = float(am.score[alive, 0].mean())
        out.append(row)
    return out


def steering_response(model, coders: Mapping[str, SparseCoder], nodes: Sequence[tuple[str, int]], docs,
                      interventions: Sequence, ctx_len: int = 64) -> list[float]:
    """How much each latent ``(stage, latent)`` of ``nodes`` rises on average over the tokens of
    ``docs`` (BOS and padding left out) when ``interventions`` are active."""
    used = {n: coders[n] for n in dict.fromkeys(s for s, _ in nodes)}
    base, _ = coder_activations(model, used, docs, ctx_len, exclusions=False)
    steered, _ = coder_activations(model, used, docs, ctx_len, interventions=interventions, exclusions=False)
    return [float((steered[s][:, i] - base[s][:, i]).mean()) for s, i in nodes]
