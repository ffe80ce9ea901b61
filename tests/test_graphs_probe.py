"""Probe prompting: probes from the zoo world, signatures, rules, supernodes, baselines, transfer; CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from circuitlab.graphs.attribute import GraphConfig
from circuitlab.graphs.baselines import (
    activation_similarity,
    cosine_clusters,
    layer_influence_clusters,
    peak_consistency,
)
from circuitlab.graphs.classify import ClassifyConfig, classify
from circuitlab.graphs.fit import FitConfig, fit_transcoders
from circuitlab.graphs.probes import Concept, swapped_prompts, world_concepts
from circuitlab.graphs.probing import ProbeConfig, probe_prompting
from circuitlab.graphs.signatures import ProbeStat, Signature

TRAIN = ["the capital of France is Paris", "the capital of Spain is Madrid", "Mary went to Paris",
         "John went to Madrid , then to the park", "when Mary and John went to the store , John gave a drink to"]
CONCEPTS = [Concept("France", "entity", probes=["France is in", "Mary went to France", "the store of France"]),
            Concept("capital", "relationship",
                    probes=["the capital of Spain is", "the capital of France", "a capital"]),
            Concept("Paris", "attribute", probes=["Mary went to Paris", "Paris is the capital", "the park in Paris"])]


def test_world_probes_are_in_distribution():
    from circuitlab.zoo import templates as T
    from circuitlab.zoo.world import all_words

    vocab = set(all_words()) | {"<bos>"}
    cs = world_concepts("<bos> The capital of France is", " Paris")
    assert [c.label for c in cs] == ["France", "capital", "Paris"]
    assert [c.category for c in cs] == ["entity", "relationship", "attribute"]
    for c in cs:
        assert len(c.probes) >= 4
        for p in c.probes:
            assert p.startswith("<bos> ") and set(p.split()) <= vocab
        if c.category != "relationship":
            assert all(c.label in p.split() for p in c.probes)
    train = [t for ts in T.FACT_TRAIN.values() for t in ts] + list(T.FACT_EXTRA_TRAIN)
    assert "Paris" not in " ".join(cs[0].probes)  # entity probes do not give the answer away
    from circuitlab.zoo.world import COUNTRIES

    filled = {"<bos> " + t.format(country=c.name, capital=c.capital, language=c.language, continent=c.continent)
              for t in train for c in COUNTRIES}
    assert set(cs[0].probes) <= filled and set(cs[1].probes) <= filled  # the zoo's own training phrasings
    sw = swapped_prompts("<bos> The capital of France is", 3)
    assert len(sw) == 3 and all(len(p.split()) == 6 and "France" not in p for _, p in sw)
    assert world_concepts("<bos> nothing here") == []


def _sig(layer, peaks, sparsity=0.9):
    s = Signature(layer, 0)
    s.stats = [ProbeStat("c", v, t, 1, False, sparsity, 0.0, 0.0, 0.0) for t, v in peaks]
    return s


def test_rules_in_order_and_depth_scaled():
    cfg = ClassifyConfig(functional={"is", ".", "of"})
    assert cfg.cutoffs(26) == (9, 13) and cfg.cutoffs(4) == (1, 2)
    assert classify(_sig(0, [("Paris", 1.0)] * 5), 4, cfg)[0] == "Semantic"
    assert classify(_sig(3, [("is", 2.0), ("of", 1.0), ("is", 1.5)]), 4, cfg)[0] == "Say X"
    assert classify(_sig(1, [("is", 2.0), ("of", 1.0), ("is", 1.5)]), 4, cfg)[0] != "Say X"  # not late
    assert classify(_sig(2, [("a", 1.0), ("b", 1.0)], sparsity=0.2), 4, cfg)[0] == "Relationship"
    assert classify(_sig(0, [("a", 1.0), ("b", 1.0)]), 4, cfg)[0] == "Semantic (concept)"
    assert classify(_sig(2, [("is", 1.0), ("x", 2.0), ("of", 1.0)]), 4, cfg)[0] == "review"
    loose = ClassifyConfig(functional={"is"}, peak_consistency=0.0, max_distinct_peaks=10)
    assert classify(_sig(2, [("is", 1.0), ("x", 2.0)]), 4, loose)[0] == "Semantic"


def test_baselines_and_metrics():
    X = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0, 1]])
    g = cosine_clusters(X, 3)
    assert sorted(map(sorted, g)) == [[0, 1], [2, 3], [4]]
    h = layer_influence_clusters([0, 0, 1, 1, 3], [1.0, 0.9, 0.1, 0.2, 0.5], 3)
    assert len(h) == 3 and sorted(i for grp in h for i in grp) == list(range(5))
    assert peak_consistency([[0, 1], [2, 3, 4]], ["a", "a", "b", "c", "b"]) == pytest.approx((1 + 2 / 3) / 2)
    assert activation_similarity([[0, 1]], X) == pytest.approx(float(torch.cosine_similarity(X[0], X[1], 0)))
    assert math.isnan(peak_consistency([[0], [1]], ["a", "b"]))


def test_probe_prompting_end_to_end(gpt2):
    tcs = fit_transcoders(gpt2, TRAIN, FitConfig(n_features=48, steps=120))
    r = probe_prompting(gpt2, tcs, "the capital of France is", concepts=CONCEPTS,
                        swaps=["the capital of Spain is", "the capital of France is"],
                        cfg=ProbeConfig(graph=GraphConfig(max_feature_nodes=100, batch_size=50)))
    members = [u for sn in r.supernodes for u in sn.features]
    assert members and len(members) == len(set(members))  # each feature in at most one supernode
    assert set(members) <= set(r.features)
    assert all(c in ("Semantic", "Say X", "Relationship", "Semantic (concept)", "review") for c in r.classes)
    for name in ("full", "pruned", "probe_subgraph"):
        assert 0 <= r.scores[name]["replacement"] <= 1 and 0 <= r.scores[name]["completeness"] <= 1
    k = r.coherence["probe prompting"]["groups"]
    assert k == len(r.supernodes)
    for name in ("cosine clustering", "layer+influence clustering"):
        assert r.coherence[name]["groups"] == k
    for v in r.coherence.values():
        for m in ("peak_consistency", "activation_similarity"):
            assert math.isnan(v[m]) or -1 <= v[m] <= 1
    assert 0 <= r.transfer["overall"] <= 1 and r.transfer["n_swaps"] == 2
    assert all(0 <= v <= 1 for v in r.transfer["by_layer"].values())
    json.dumps(r.to_dict())
    groups = r.node_groups()
    assert len(groups) == len(r.supernodes)
    with pytest.raises(ValueError):
        probe_prompting(gpt2, tcs, "when Mary and John went to the store", concepts=[], graph=r.graph)
