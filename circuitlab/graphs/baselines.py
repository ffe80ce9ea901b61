"""Baseline groupings and coherence metrics for probe prompting (step 7).

Baselines, each asked for the same number of groups as probe prompting:
- cosine: average-linkage agglomerative clustering of each feature's activation vector on the
  seed prompt (its activation at every position), cosine distance;
- layer_influence: k-means on (layer, log influence), both standardised.
Metrics, over groups of two or more features (singletons are trivially coherent):
- peak-token consistency: mean over groups of the share of members whose main peak token
  (over the probes) is the group's modal one;
- activation-pattern similarity: mean over groups of the mean pairwise cosine of members'
  probe activation patterns (peak activation on each probe).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch

Group = list[int]
"""Indices into the feature list."""


def _cosine_matrix(X: torch.Tensor) -> torch.Tensor:
    Xn = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return Xn @ Xn.t()


def cosine_clusters(vectors: torch.Tensor, k: int) -> list[Group]:
    """Average-linkage clustering into ``k`` groups by cosine distance of rows."""
    n = vectors.shape[0]
    k = max(1, min(k, n))
    D = 1 - _cosine_matrix(vectors.float())
    groups: list[Group] = [[i] for i in range(n)]
    while len(groups) > k:
        best, pair = None, (0, 1)
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                d = float(D[groups[a]][:, groups[b]].mean())
                if best is None or d < best:
                    best, pair = d, (a, b)
        a, b = pair
        groups[a] = groups[a] + groups[b]
        del groups[b]
    return groups


def layer_influence_clusters(layers: Sequence[int], influence: Sequence[float], k: int, iters: int = 50) -> list[Group]:
    """k-means on standardised (layer, log influence), deterministic initialisation."""
    n = len(layers)
    k = max(1, min(k, n))
    X = torch.tensor([[float(l), float(torch.tensor(max(v, 1e-12)).log())] for l, v in zip(layers, influence)])
    X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6) if n > 1 else X
    order = sorted(range(n), key=lambda i: (X[i, 0].item(), X[i, 1].item()))
    C = X[[order[int(j * (n - 1) / max(k - 1, 1))] for j in range(k)]].clone()
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(X, C).argmin(1)
        if torch.equal(new, assign) and _ > 0:
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                C[j] = X[assign == j].mean(0)
    return [g for g in ([i for i in range(n) if int(assign[i]) == j] for j in range(k)) if g]


def peak_consistency(groups: Sequence[Group], main_peaks: Sequence[str]) -> float:
    vals = []
    for g in groups:
        if len(g) < 2:
            continue
        c = Counter(main_peaks[i] for i in g).most_common(1)[0][1]
        vals.append(c / len(g))
    return sum(vals) / len(vals) if vals else float("nan")


def activation_similarity(groups: Sequence[Group], patterns: torch.Tensor) -> float:
    S = _cosine_matrix(patterns.float())
    vals = []
    for g in groups:
        if len(g) < 2:
            continue
        idx = torch.tensor(g)
        sub = S[idx][:, idx]
        m = len(g)
        vals.append(float((sub.sum() - sub.diagonal().sum()) / (m * (m - 1))))
    return sum(vals) / len(vals) if vals else float("nan")


def coherence(groups: Sequence[Group], main_peaks: Sequence[str], patterns: torch.Tensor) -> dict:
    return {"groups": len(groups), "multi_member_groups": sum(len(g) > 1 for g in groups),
            "peak_consistency": peak_consistency(groups, main_peaks),
            "activation_similarity": activation_similarity(groups, patterns)}
