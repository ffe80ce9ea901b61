"""Agreement of an estimate with a reference (usually exact patching) over the same nodes.

Only results that mean the same kind of thing are compared: two patching results in one
direction, DLA with DLA, a logit lens with a lens, head scores with head scores."""

from __future__ import annotations

import torch

from circuitlab.result import DirectEffects, HeadScores, NodeValues, Result


def rank(x: torch.Tensor) -> torch.Tensor:
    """Rank of each entry (0 = smallest; ties broken by position): Spearman is Pearson of ranks."""
    r = torch.empty_like(x)
    r[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
    return r


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation; NaN where it is undefined (fewer than two values or a constant side)."""
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def cost_to_recall(order: torch.Tensor, truth: torch.Tensor, k: int) -> tuple[int, list[float]]:
    """Verifying nodes in ``order``, how many verifications recover the true top-k (by |truth|),
    and the recall after each verification."""
    true_top = set(truth.abs().argsort(descending=True)[:k].tolist())
    found, curve, needed = 0, [], len(order)
    for i, n in enumerate(order.tolist(), 1):
        found += n in true_top
        curve.append(found / k)
        if found == k and needed == len(order):
            needed = i
    return needed, curve


def kind(r: NodeValues) -> str:
    """What a result's values mean, in words (for the refusal messages of ``compare``)."""
    if isinstance(r, Result):
        return f"patching effects ({r.method}, {r.direction})"
    if isinstance(r, DirectEffects):
        return "the logit lens" if r.method == "logit_lens" else "DLA"
    if isinstance(r, HeadScores):
        return "head-detector scores"
    raise TypeError(f"compare takes results (Result, DirectEffects, HeadScores), not {type(r).__name__}")


def check_comparable(estimate: NodeValues, reference: NodeValues) -> None:
    """Refuse pairs whose values measure different things, naming the real difference."""
    a, b = kind(estimate), kind(reference)
    if isinstance(estimate, Result) and isinstance(reference, Result) or a == b:
        return  # patching results in two directions are refused by compare, naming the directions
    why = {
        "DLA": "DLA scores direct effects on the logit difference in one run (each component's write through "
               "the unembedding, nothing patched); compare DLA with DLA (e.g. clean against corrupt tokens), "
               "and patching estimates with exact patching",
        "the logit lens": "the logit lens reads the whole residual stream after each layer, not one node's "
                          "effect; compare a lens with a lens (e.g. clean against corrupt tokens)",
        "head-detector scores": "head-detector scores measure attention patterns on repeated random tokens and "
                                "OV copying, not effects on a task's metric; compare them with head-detector "
                                "scores of another model",
    }
    odd = a if a in why else b
    raise ValueError(f"cannot compare {a} with {b}: {why[odd]}")


def compare(estimate: NodeValues, reference: NodeValues, k: int = 10) -> dict:
    """Pearson; Spearman over all nodes and over nodes whose |reference| exceeds 1% of the
    largest; top-k recall; sign agreement (same 1% set); cost-to-recall of the true top-k when
    verifying in the estimate's order (rank_score if it has one, else |value|). Both must mean
    the same kind of thing (see :func:`check_comparable`)."""
    check_comparable(estimate, reference)
    if estimate.labels != reference.labels:
        raise ValueError("estimate and reference cover different nodes; run both on the same sites, "
                         f"positions and layers ({len(estimate.labels)} vs {len(reference.labels)} nodes)")
    if isinstance(estimate, Result) and estimate.direction != reference.direction:
        raise ValueError(f"direction mismatch: {estimate.direction} vs {reference.direction}; compare "
                         "estimates against exact patching in the same direction")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (how many top nodes to recall) must be a whole number >= 1, not {k!r}")
    e, r = estimate.flat.double(), reference.flat.double()
    if len(r) == 0:
        raise ValueError("the results have no nodes to compare")
    k = min(k, len(r))
    big = r.abs() > 0.01 * r.abs().max()
    order = estimate.extras.get("rank_score", estimate.values.abs()).flatten().argsort(descending=True)
    needed, curve = cost_to_recall(order, r, k)
    top_e = set(e.abs().argsort(descending=True)[:k].tolist())
    top_r = set(r.abs().argsort(descending=True)[:k].tolist())
    return {
        "pearson": pearson(e, r),
        "spearman": pearson(rank(e), rank(r)),
        "spearman_1pct": pearson(rank(e[big]), rank(r[big])) if int(big.sum()) > 2 else float("nan"),
        f"recall@{k}": len(top_e & top_r) / k,
        "sign_agreement": (float((torch.sign(e[big]) == torch.sign(r[big])).double().mean()) if big.any()
                           else float("nan")),
        "verifications_to_recall": needed,
        "recall_curve": curve,
        "n_nodes": len(r),
        "k": k,
    }
