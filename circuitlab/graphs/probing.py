"""Probe prompting end to end (Birardi 2025; docs/methods.md section 3).

seed prompt + target -> attribution graph -> pruned graph -> features within the top
``cumulative`` influence -> concept probes -> activation signatures -> classes -> supernodes ->
sub-graph scores, comparison with two clustering baselines, entity-swap transfer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch

from circuitlab.graphs.attribute import GraphConfig, attribute
from circuitlab.graphs.baselines import coherence, cosine_clusters, layer_influence_clusters
from circuitlab.graphs.classify import ClassifyConfig, FeatureGroup, build_supernodes, classify
from circuitlab.graphs.graph import Graph
from circuitlab.graphs.probes import Concept, default_concepts, default_swaps
from circuitlab.graphs.prune import prune, pruned_graph, scores, subgraph_scores
from circuitlab.graphs.signatures import feature_activations, signatures
from circuitlab.graphs.transcoders import as_transcoders


@dataclass
class ProbeConfig:
    """Probe prompting settings."""

    cumulative: float = 0.95
    """Keep pruned-graph features within this cumulative influence."""
    max_features: int = 80
    """At most this many (layer, feature) units are probed (highest influence first)."""
    node_threshold: float = 0.8
    """Pruning: keep nodes covering this share of influence on the logits."""
    edge_threshold: float = 0.98
    """Pruning: keep edges covering this share of edge influence."""
    n_swaps: int = 5
    """Entity swaps for the transfer test."""
    n_probes: int = 6
    """Probe prompts per concept when concepts come from the zoo world or the real lexicon."""
    transfer_overlap: float = 0.7
    """A feature transfers when its activation overlap is at least this on above-median positions."""
    graph: GraphConfig = field(default_factory=GraphConfig)
    """How the attribution graph is built (when no graph is passed)."""
    rules: ClassifyConfig = field(default_factory=ClassifyConfig)
    """Thresholds of the feature classes (Semantic, Say X, Relationship, ...)."""


@dataclass
class ProbeResult:
    """Everything probe prompting found for one seed prompt."""

    prompt: str
    target: str
    features: list[tuple[int, int]]
    influence: list[float]
    classes: list[str]
    rules: list[str]
    supernodes: list[FeatureGroup]
    scores: dict
    """full / pruned / probe-subgraph replacement and completeness."""
    coherence: dict
    """method -> {groups, peak_consistency, activation_similarity}."""
    transfer: dict
    """overall rate, by layer, by class (entity swaps)."""
    concepts: list[str] = field(default_factory=list)
    graph: Optional[Graph] = field(default=None, repr=False)

    def node_groups(self) -> list[tuple[str, list[int]]]:
        """Supernodes as (label, graph node indices) for pages and exports."""
        out = []
        for sn in self.supernodes:
            members = set(sn.features)
            nodes = [i for i in range(self.graph.n_features)
                     if (self.graph.feature_info(i)[0], self.graph.feature_info(i)[2]) in members]
            out.append((sn.label, nodes))
        return out

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "target": self.target, "concepts": self.concepts,
                "features": [{"layer": l, "feature": f, "influence": v, "class": c, "rule": r}
                             for (l, f), v, c, r in zip(self.features, self.influence, self.classes, self.rules)],
                "supernodes": [asdict(s) for s in self.supernodes], "scores": self.scores,
                "coherence": self.coherence, "transfer": self.transfer}

    def table(self) -> list[list]:
        rows = [["grouping", "groups", "peak-token consistency", "activation similarity"]]
        for k, v in self.coherence.items():
            rows.append([k, v["groups"], v["peak_consistency"], v["activation_similarity"]])
        return rows


def _units(graph: Graph, cfg: ProbeConfig):
    """(layer, feature) units of the pruned graph within the cumulative influence, by influence."""
    pr = prune(graph, cfg.node_threshold, cfg.edge_threshold)
    infl: dict[tuple[int, int], float] = {}
    for i in pr.kept_features(graph):
        if float(pr.cumulative[i]) > cfg.cumulative:
            continue
        l, _, f, _ = graph.feature_info(i)
        infl[(l, f)] = infl.get((l, f), 0.0) + float(pr.node_influence[i])
    units = sorted(infl, key=lambda u: -infl[u])[: cfg.max_features]
    return pr, units, [infl[u] for u in units]


def transfer_rates(model, transcoders, prompt: str, units, classes, swaps: Sequence[str], overlap: float) -> dict:
    """Entity-swap transfer: share of (feature, swap) pairs whose activation overlap (weighted
    Jaccard on positions where the original activation is above its median) is >= ``overlap``."""
    if not swaps or not units:
        return {"overall": float("nan"), "by_layer": {}, "by_class": {}, "n_swaps": 0}
    runs = feature_activations(model, transcoders, [prompt] + list(swaps), units)
    a = runs[0][1][1:].clamp_min(0)
    ok = torch.zeros(len(units))
    for _, b in runs[1:]:
        b = b[1:].clamp_min(0)
        n = min(len(a), len(b))
        for i in range(len(units)):
            x, y = a[-n:, i], b[-n:, i]
            m = x > x.median()
            if not m.any():
                m = x > 0
            den = torch.maximum(x[m], y[m]).sum()
            ov = float(torch.minimum(x[m], y[m]).sum() / den) if den > 0 else 0.0
            ok[i] += ov >= overlap
    rate = ok / len(swaps)

    def mean_by(keys):
        acc: dict = {}
        for k, r in zip(keys, rate.tolist()):
            acc.setdefault(k, []).append(r)
        return {str(k): sum(v) / len(v) for k, v in sorted(acc.items())}

    return {"overall": float(rate.mean()), "by_layer": mean_by([l for l, _ in units]), "by_class": mean_by(classes),
            "n_swaps": len(swaps), "per_feature": rate.tolist()}


def probe_prompting(model, transcoders, prompt: str, target: Optional[str] = None,
                    concepts: Optional[Sequence[Concept]] = None, swaps: Optional[Sequence[str]] = None,
                    cfg: Optional[ProbeConfig] = None, graph: Optional[Graph] = None) -> ProbeResult:
    """Run probe prompting on ``prompt`` for ``target`` (default: the top token). Concepts and
    swap prompts default to the model's own (``probes.default_concepts`` / ``default_swaps``: the
    zoo world on zoo models, the real-language lexicon on others); the config to
    ``ProbeConfig()``."""
    cfg = cfg or ProbeConfig()
    tcs = as_transcoders(transcoders)
    g = graph if graph is not None else attribute(model, tcs, prompt, target, cfg.graph)
    target = target or g.logit_strs[0]
    if concepts is None:
        concepts = default_concepts(model, prompt, target, cfg.n_probes)
    concepts = list(concepts)
    if not concepts:
        raise ValueError(f"no concepts for {prompt!r}: it names no country or landmark this model's concepts "
                         "know (the zoo world on zoo models, circuitlab.tasks.real.lexicon otherwise); pass "
                         "concepts=[Concept(label, category, probes=[...]), ...] (CLI: --concepts FILE)")
    pr, units, infl = _units(g, cfg)
    if not units:
        raise ValueError("no features survive pruning; lower the thresholds or raise max_feature_nodes")
    sigs = signatures(model, tcs, units, concepts, prompt)
    cls_rules = [classify(s, model.n_layers, cfg.rules) for s in sigs]
    classes = [c for c, _ in cls_rules]
    sns = build_supernodes(sigs, classes, concepts, target)
    # scores: full, pruned and the probe-prompting sub-graph
    members = {u for sn in sns for u in sn.features}
    sub_nodes = [i for i in pr.kept_features(g) if (g.feature_info(i)[0], g.feature_info(i)[2]) in members]
    sc = {"full": scores(g).as_dict(), "pruned": scores(pruned_graph(g, pr), "pruned").as_dict(),
          "probe_subgraph": subgraph_scores(g, sub_nodes, "sub").as_dict()}
    # coherence of probe groups vs baselines, on the grouped features, same number of groups
    idx = {u: i for i, u in enumerate(units)}
    grouped = [idx[u] for sn in sns for u in sn.features]
    probe_groups = [[grouped.index(idx[u]) for u in sn.features] for sn in sns]
    k = len(probe_groups)
    peaks = [sigs[i].main_peak for i in grouped]
    patterns = torch.stack([sigs[i].vector for i in grouped]) if grouped else torch.zeros(0, 1)
    seed_acts = (feature_activations(model, tcs, [prompt], [units[i] for i in grouped])[0][1][1:].t()
                 if grouped else None)
    coh = {"probe prompting": coherence(probe_groups, peaks, patterns)}
    if grouped:
        coh["cosine clustering"] = coherence(cosine_clusters(seed_acts, k), peaks, patterns)
        coh["layer+influence clustering"] = coherence(
            layer_influence_clusters([units[i][0] for i in grouped], [infl[i] for i in grouped], k), peaks, patterns)
    swaps = list(swaps) if swaps is not None else [p for _, p in default_swaps(model, prompt, cfg.n_swaps)]
    tr = transfer_rates(model, tcs, prompt, units, classes, swaps, cfg.transfer_overlap)
    return ProbeResult(prompt=prompt, target=target, features=units, influence=infl, classes=classes,
                       rules=[r for _, r in cls_rules], supernodes=sns, scores=sc, coherence=coh, transfer=tr,
                       concepts=[c.label for c in concepts], graph=g)


def ratio(a: float, b: float) -> float:
    """a / b, nan when undefined."""
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else float("nan")
