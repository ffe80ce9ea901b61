"""``circuitlab graph`` and ``circuitlab probe`` (plugged into the main CLI)."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = {
    "graph": "examples:\n"
             "  circuitlab graph --prompt '<bos> The capital of France is' --target ' Paris' --out runs/graph\n"
             "  circuitlab graph --model gpt2-zoo --transcoders saes/gpt2-zoo/transcoders --prompt '<bos> ...' --out DIR\n"
             "  circuitlab graph --prompt '<bos> The capital of Spain is' --max-feature-nodes 500 --node-threshold 0.7 --out DIR",
    "probe": "examples:\n"
             "  circuitlab probe --prompt '<bos> The capital of France is' --target ' Paris' --out runs/probe\n"
             "  circuitlab probe --prompt '...' --concepts concepts.json --swap '<bos> The capital of Spain is' --out DIR\n"
             "  (concepts.json: [{\"label\": \"France\", \"category\": \"entity\", \"probes\": [\"<bos> ...\", ...]}, ...])",
}


def _common(p) -> None:
    p.add_argument("--model", default=None, help="zoo name, HF folder or hub id (default: the bundled GPT-2)")
    p.add_argument("--prompt", required=True, help="the prompt (zoo models: start with '<bos> ')")
    p.add_argument("--target", default=None, help="target token (one token, e.g. ' Paris'); default: top tokens")
    p.add_argument("--transcoders", default=None,
                   help="folder of per-layer transcoders (SAE Lens layout); default: the model's trained ones")
    p.add_argument("--fit-quick", action="store_true",
                   help="no trained transcoders: fit rough ones on zoo corpus text first (for trying things out)")
    p.add_argument("--max-feature-nodes", type=int, default=2000, help="feature targets visited (default 2000)")
    p.add_argument("--batch-size", type=int, default=32, help="targets per backward pass")
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    p.add_argument("--out", required=True, help="output folder")


def add_parser(sub, fmt) -> None:
    g = sub.add_parser("graph", help="attribution graph on transcoders -> JSON (Neuronpedia) + HTML page",
                       epilog=EXAMPLES["graph"], formatter_class=fmt)
    _common(g)
    g.add_argument("--slug", default="graph", help="graph name in the Neuronpedia JSON")
    g.set_defaults(fn=cmd_graph)
    p = sub.add_parser("probe", help="probe prompting: supernodes, scores, baseline comparison",
                       epilog=EXAMPLES["probe"], formatter_class=fmt)
    _common(p)
    p.add_argument("--concepts", default=None, help="JSON list of {label, category, probes}; default: zoo world")
    p.add_argument("--swap", action="append", default=None, help="entity-swapped prompt (repeatable); default: zoo")
    p.set_defaults(fn=cmd_probe)


def _setup(a):
    from circuitlab.cli import _load_model
    from circuitlab.graphs.attribute import GraphConfig
    from circuitlab.graphs.transcoders import find_transcoders, load_transcoders

    for name in ("node_threshold", "edge_threshold"):
        v = getattr(a, name)
        if not 0 < v <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must lie in (0, 1], got {v}")
    if a.max_feature_nodes < 1 or a.batch_size < 1:
        raise ValueError("--max-feature-nodes and --batch-size must be positive")
    model = _load_model(a.model)
    if a.transcoders:
        tcs = load_transcoders(a.transcoders)
    elif (found := find_transcoders(model.name)) is not None:
        tcs = load_transcoders(found)
    elif a.fit_quick:
        from circuitlab.graphs.fit import FitConfig, fit_transcoders
        from circuitlab.sparse.store import documents

        texts = [" ".join(t.split()[:24]) for t in documents(3, 64)]
        tcs = fit_transcoders(model, [t for t in texts if len(t.split()) >= 24] or texts,
                              FitConfig(n_features=4 * model.d_model, steps=300))
    else:
        raise FileNotFoundError(f"no transcoders found for {model.name}: pass --transcoders DIR (one SAE Lens "
                                "folder per layer) or --fit-quick")
    cfg = GraphConfig(max_feature_nodes=a.max_feature_nodes, batch_size=a.batch_size)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    return model, tcs, cfg, out


def _labels(model, tcs, graph, pruned) -> dict[str, list[str]]:
    """Each kept feature's top activating tokens in held-out corpus text (its dashboard's contexts)."""
    from circuitlab.sparse.dashboard import latent_cards

    feats = pruned.kept_features(graph)
    by_layer: dict[int, set[int]] = {}
    for i in feats:
        layer, _, f, _ = graph.feature_info(i)
        by_layer.setdefault(layer, set()).add(f)
    tok = model.tokenizer
    tops = {(layer, card.latent): [tok.convert_tokens_to_string([c.tokens[c.index]]) for c in card.top_contexts]
            for layer, fs in by_layer.items() for card in latent_cards(model, tcs[layer], sorted(fs), n_docs=200,
                                                                        n_contexts=5)}
    return {graph.node_id(i): tops.get((graph.feature_info(i)[0], graph.feature_info(i)[2]), []) for i in feats}


def _write_json(path: Path, data) -> None:
    from circuitlab.result import atomic_write

    text = json.dumps(data, indent=1, default=float)
    atomic_write(path, lambda p: Path(p).write_text(text))


def cmd_graph(a) -> None:
    from circuitlab.graphs.attribute import attribute
    from circuitlab.graphs.export import write_neuronpedia
    from circuitlab.graphs.page import write_page
    from circuitlab.graphs.prune import prune, pruned_graph, scores

    model, tcs, cfg, out = _setup(a)
    g = attribute(model, tcs, a.prompt, a.target, cfg)
    pr = prune(g, a.node_threshold, a.edge_threshold)
    sc = [scores(g), scores(pruned_graph(g, pr), "pruned")]
    g.save(out / "graph")
    write_neuronpedia(g, out, a.slug, pruned=pr, node_threshold=a.node_threshold)
    tops = _labels(model, tcs, g, pr)
    write_page(g, out / "graph.html", pruned=pr, top_tokens=tops, scores=sc)
    _write_json(out / "scores.json", {"scores": [s.as_dict() for s in sc], "seconds": g.meta["seconds"],
                                      "n_active": g.meta["n_active"], "n_features": g.n_features})
    for s in sc:
        print(f"{s.graph:7s} graph: {s.n_features} features, replacement {s.replacement:.3f}, "
              f"completeness {s.completeness:.3f}")
    print(f"wrote {out}/ ({a.slug}.json, graph.html, graph/, scores.json) in {g.meta['seconds']:.1f}s")


def cmd_probe(a) -> None:
    from circuitlab.graphs.export import write_neuronpedia
    from circuitlab.graphs.page import write_page
    from circuitlab.graphs.probes import user_concepts
    from circuitlab.graphs.probing import ProbeConfig, probe_prompting
    from circuitlab.graphs.prune import prune

    model, tcs, gcfg, out = _setup(a)
    concepts = None
    if a.concepts:
        path = Path(a.concepts)
        if not path.exists():
            raise FileNotFoundError(f"no concepts file {path}")
        concepts = user_concepts(json.loads(path.read_text()))
    cfg = ProbeConfig(graph=gcfg, node_threshold=a.node_threshold, edge_threshold=a.edge_threshold)
    r = probe_prompting(model, tcs, a.prompt, a.target, concepts=concepts, swaps=a.swap, cfg=cfg)
    _write_json(out / "probe.json", r.to_dict())
    pr = prune(r.graph, a.node_threshold, a.edge_threshold)
    groups = r.node_groups()
    write_neuronpedia(r.graph, out, "probe-graph", pruned=pr, node_threshold=a.node_threshold,
                      supernodes=[[lab] + [r.graph.node_id(i) for i in nodes] for lab, nodes in groups])
    write_page(r.graph, out / "probe.html", pruned=pr, supernodes=groups, top_tokens=_labels(model, tcs, r.graph, pr))
    print("| grouping | groups | peak-token consistency | activation similarity |\n|---|---|---|---|")
    for row in r.table()[1:]:
        print(f"| {row[0]} | {row[1]} | {row[2]:.3f} | {row[3]:.3f} |")
    for sn in r.supernodes:
        print(f"supernode {sn.label} ({sn.kind}): {len(sn.features)} features")
    for k, v in r.scores.items():
        print(f"{k}: replacement {v['replacement']:.3f}, completeness {v['completeness']:.3f} ({v['n_features']} features)")
    print(f"entity-swap transfer: {r.transfer['overall']:.2f} by layer {r.transfer['by_layer']}")
    print(f"wrote {out}/ (probe.json, probe-graph.json, probe.html)")
