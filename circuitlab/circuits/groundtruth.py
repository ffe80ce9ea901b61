"""Scoring methods against planted ground truth by precision and recall of true components.

A method *selects* the nodes or edges whose |score| is at least ``rel`` times the largest
|score| (default 10%): a scale-free rule that needs no knowledge of the truth. Precision = true
among selected / selected; recall = true among selected / true. Node methods are run on
``heads_all`` (the truth restricted to heads, since cl.patch scores heads not the embedding);
edge methods on the full component graph.
"""

from __future__ import annotations

from typing import Sequence

from circuitlab.circuits.circuit import Scores, as_table
from circuitlab.methods.registry import EDGE_METHODS, NODE_METHODS


def selected(scores: Scores, rel: float = 0.1) -> set[str]:
    _, labels, v = as_table(scores)
    a = v.abs()
    top = float(a.max()) if a.numel() else 0.0
    if top == 0.0:
        return set()
    return {l for l, x in zip(labels, a.tolist()) if x >= rel * top}


def precision_recall(scores: Scores, truth: Sequence[str], rel: float = 0.1) -> dict:
    sel, true = selected(scores, rel), set(truth)
    hit = len(sel & true)
    return {"precision": hit / len(sel) if sel else 0.0, "recall": hit / len(true) if true else 1.0,
            "selected": sorted(sel), "missed": sorted(true - sel), "false": sorted(sel - true)}


def score_planted(planted, model=None, task=None, directions: Sequence[str] = ("denoising", "noising"),
                  rel: float = 0.1) -> list[dict]:
    """Precision and recall of every node and edge method on a planted model, per direction."""
    import circuitlab as cl
    from circuitlab import circuits as cc

    model = model or planted.load()
    task = task or planted.task(model)
    rows = []
    for d in directions:
        for m in NODE_METHODS:
            r = cl.patch(model, task, "heads_all", method=m, direction=d, progress=False)
            rows.append({"model": planted.name, "level": "node", "method": m, "direction": d,
                         **precision_recall(r, planted.heads, rel)})
        for m in EDGE_METHODS:
            rows.append({"model": planted.name, "level": "edge", "method": m, "direction": d,
                         **precision_recall(cc.edges(model, task, m, d), planted.edges, rel)})
    return rows
