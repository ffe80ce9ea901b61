"""Neuronpedia / circuit-tracer graph JSON (schema_version 1, as written by circuit-tracer 0.5.0).

The file holds the *pruned* graph: nodes kept by pruning (embeddings and logits always), the
kept edges between them, and ``qParams.supernodes`` ([[label, node_id, ...], ...]). Node ids:
feature ``{layer}_{feature}_{pos}``, error ``0_{layer}_{pos}``, embedding ``E_{token}_{pos}``,
logit ``{n_layers+1}_{token}_{pos}``; other node fields follow circuit-tracer 0.5.0's
``frontend.graph_models.Node`` (``feature`` of a feature node is the Cantor pairing of layer
and feature index, ``jsNodeId`` as there). A ``graph-metadata.json`` index is written alongside
so circuit-tracer's local server lists the graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from circuitlab.graphs.graph import Graph
from circuitlab.graphs.prune import Pruned, prune
from circuitlab.io import atomic_write

SCHEMA_VERSION = 1
CIRCUIT_TRACER_VERSION = "0.5.0"
"""The circuit-tracer release whose graph-file models this exporter follows."""


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def node_record(graph: Graph, i: int, influence: Optional[float] = None, clerp: str = "") -> dict:
    """One node in circuit-tracer 0.5.0's ``Node`` shape."""
    k = graph.kind(i)
    base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": clerp,
            "influence": influence, "activation": None}
    if k == "feature":
        l, p, f, a = graph.feature_info(i)
        return {**base, "node_id": f"{l}_{f}_{p}", "feature": _cantor(l, f), "layer": str(l), "ctx_idx": p,
                "feature_type": "cross layer transcoder", "jsNodeId": f"{l}_{f}-0", "activation": a}
    if k == "error":
        l, p = divmod(i - graph.error_start, graph.n_pos)
        return {**base, "node_id": f"0_{l}_{p}", "feature": -1, "layer": str(l), "ctx_idx": p,
                "feature_type": "mlp reconstruction error", "jsNodeId": f"{l}_{p}-0"}
    if k == "token":
        p = i - graph.token_start
        v = int(graph.tokens[p])
        return {**base, "node_id": f"E_{v}_{p}", "feature": p, "layer": "E", "ctx_idx": p,
                "feature_type": "embedding", "jsNodeId": f"E_{v}-{p}"}
    j = i - graph.logit_start
    v, prob = int(graph.logit_tokens[j]), float(graph.logit_probs[j])
    layer, pos = str(graph.n_layers + 1), graph.n_pos - 1
    return {**base, "node_id": f"{layer}_{v}_{pos}", "feature": v, "layer": layer, "ctx_idx": pos,
            "feature_type": "logit", "token_prob": prob, "is_target_logit": j == 0, "jsNodeId": f"L_{v}-{pos}",
            "clerp": f'Output "{graph.logit_strs[j]}" (p={prob:.3f})', "influence": None}


def to_neuronpedia(graph: Graph, slug: str, pruned: Optional[Pruned] = None, node_threshold: float = 0.8,
                   edge_threshold: float = 0.98, supernodes: Sequence[Sequence[str]] = (),
                   labels: Optional[dict[str, str]] = None, max_nodes: int = 5000) -> dict:
    """The graph JSON as a dict. ``supernodes``: [label, node_id, ...] lists; ``labels``:
    node_id -> feature description (``clerp``). Raises if more than ``max_nodes`` survive pruning
    (tighten the thresholds: one 73-token graph once produced a 1.7 GB file)."""
    pr = pruned or prune(graph, node_threshold, edge_threshold)
    labels = {**graph.meta.get("labels", {}), **(labels or {})}
    kept = pr.node_mask.nonzero()[:, 0].tolist()
    if len(kept) > max_nodes:
        raise ValueError(f"{len(kept)} nodes survive pruning (> max_nodes={max_nodes}); lower node_threshold")
    recs = {}
    for i in kept:
        nid = graph.node_id(i)
        recs[i] = node_record(graph, i, float(pr.cumulative[i]) if graph.kind(i) != "logit" else None,
                              labels.get(nid, ""))
    dst, src = pr.edge_mask.nonzero(as_tuple=True)
    links = [{"source": recs[s]["node_id"], "target": recs[d]["node_id"], "weight": float(graph.adjacency[d, s])}
             for d, s in zip(dst.tolist(), src.tolist()) if s in recs and d in recs]
    connected = {e["source"] for e in links} | {e["target"] for e in links}
    nodes = [r for r in recs.values() if r["node_id"] in connected or r["feature_type"] in ("embedding", "logit")]
    ids = {r["node_id"] for r in nodes}
    sn = [[str(s[0])] + [n for n in s[1:] if n in ids] for s in supernodes]
    meta = {"slug": slug, "scan": graph.scan, "transcoder_list": [], "prompt_tokens": list(graph.token_strs),
            "prompt": graph.prompt, "node_threshold": node_threshold, "schema_version": SCHEMA_VERSION}
    qp = {"pinnedIds": [], "supernodes": [s for s in sn if len(s) > 1], "linkType": "both", "clickedId": "",
          "sg_pos": ""}
    return {"metadata": meta, "qParams": qp, "nodes": nodes, "links": links}


def write_neuronpedia(graph: Graph, out_dir: str | Path, slug: str, **kw) -> Path:
    """Write ``out_dir/{slug}.json`` and update ``out_dir/graph-metadata.json`` (atomically)."""
    out_dir = Path(out_dir)
    data = to_neuronpedia(graph, slug, **kw)
    path = out_dir / f"{slug}.json"
    text = json.dumps(data, indent=1)
    atomic_write(path, lambda p: Path(p).write_text(text))
    index = out_dir / "graph-metadata.json"
    graphs = json.loads(index.read_text()).get("graphs", []) if index.exists() else []
    graphs = [g for g in graphs if g.get("slug") != slug] + [data["metadata"]]
    atomic_write(index, lambda p: Path(p).write_text(json.dumps({"graphs": graphs}, indent=2)))
    return path


def check_schema(data: dict) -> None:
    """Raise ValueError unless ``data`` has circuit-tracer 0.5.0's graph-file fields and types."""
    need = {"metadata": {"slug": str, "scan": str, "transcoder_list": list, "prompt_tokens": list, "prompt": str},
            "qParams": {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str, "sg_pos": str}}
    for part, fields in need.items():
        if part not in data:
            raise ValueError(f"missing {part}")
        for k, t in fields.items():
            if not isinstance(data[part].get(k), t):
                raise ValueError(f"{part}.{k} must be {t.__name__}")
    if data["metadata"].get("schema_version") != SCHEMA_VERSION:
        raise ValueError("schema_version must be 1")
    node_fields = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str, "jsNodeId": str}
    ids = set()
    for n in data["nodes"]:
        for k, t in node_fields.items():
            if not isinstance(n.get(k), t):
                raise ValueError(f"node {n.get('node_id')}: {k} must be {t.__name__}")
        ids.add(n["node_id"])
    for e in data["links"]:
        if e["source"] not in ids or e["target"] not in ids or not isinstance(e["weight"], float):
            raise ValueError(f"bad link {e}")
    for s in data["qParams"]["supernodes"]:
        if not all(isinstance(x, str) for x in s) or any(x not in ids for x in s[1:]):
            raise ValueError(f"bad supernode {s}")
