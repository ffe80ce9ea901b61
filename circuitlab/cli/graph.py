"""``circuitlab graph``: an attribution graph on per-layer transcoders -> Neuronpedia JSON + HTML page.

The model and transcoder setup here is shared with ``circuitlab probe``.
"""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = """examples:
  circuitlab graph --prompt '<bos> The capital of France is' --target ' Paris' --out runs/graph
  circuitlab graph --model gpt2-zoo --transcoders saes/gpt2-zoo/transcoders --prompt '<bos> ...' --out DIR
  circuitlab graph --prompt '<bos> The capital of Spain is' --max-feature-nodes 500 --node-threshold 0.7 --out DIR"""


def add_graph_args(p) -> None:
    """Options shared by ``graph`` and ``probe``: model, prompt, transcoders, graph size, thresholds."""
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
                       epilog=EXAMPLES, formatter_class=fmt)
    add_graph_args(g)
    g.add_argument("--slug", default="graph", help="graph name in the Neuronpedia JSON")
    g.add_argument("--export-circuit-tracer", metavar="DIR", default=None,
                   help="also write the model and transcoders to DIR in the layout circuit-tracer 0.5.0 reads "
                        "offline (DIR/model, DIR/transcoders; see docs/circuit_tracer.md)")
    g.set_defaults(fn=run)


def setup(a):
    """(model, transcoders, graph config, output folder) from the shared options."""
    from circuitlab.graphs.attribute import GraphConfig
    from circuitlab.graphs.transcoders import find_transcoders, load_transcoders
    from circuitlab.resolve import load_model

    for name in ("node_threshold", "edge_threshold"):
        v = getattr(a, name)
        if not 0 < v <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must lie in (0, 1], got {v}")
    if a.max_feature_nodes < 1 or a.batch_size < 1:
        raise ValueError("--max-feature-nodes and --batch-size must be positive")
    model = load_model(a.model)
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


def feature_labels(model, tcs, graph, pruned) -> dict[str, list[str]]:
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


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON, written atomically."""
    from circuitlab.io import atomic_write

    text = json.dumps(data, indent=1, default=float)
    atomic_write(path, lambda p: Path(p).write_text(text))


def run(a) -> None:
    from circuitlab.graphs.attribute import attribute
    from circuitlab.graphs.export import write_neuronpedia
    from circuitlab.graphs.page import write_page
    from circuitlab.graphs.prune import prune, pruned_graph, scores

    model, tcs, cfg, out = setup(a)
    exported = export_circuit_tracer(a, model, tcs)
    g = attribute(model, tcs, a.prompt, a.target, cfg)
    pr = prune(g, a.node_threshold, a.edge_threshold)
    sc = [scores(g), scores(pruned_graph(g, pr), "pruned")]
    g.save(out / "graph")
    write_neuronpedia(g, out, a.slug, pruned=pr, node_threshold=a.node_threshold)
    tops = feature_labels(model, tcs, g, pr)
    write_page(g, out / "graph.html", pruned=pr, top_tokens=tops, scores=sc)
    write_json(out / "scores.json", {"scores": [s.as_dict() for s in sc], "seconds": g.meta["seconds"],
                                     "n_active": g.meta["n_active"], "n_features": g.n_features})
    for s in sc:
        print(f"{s.graph:7s} graph: {s.n_features} features, replacement {s.replacement:.3f}, "
              f"completeness {s.completeness:.3f}")
    print(f"wrote {out}/ ({a.slug}.json, graph.html, graph/, scores.json) in {g.meta['seconds']:.1f}s")
    for line in exported:
        print(line)


def export_circuit_tracer(a, model, tcs) -> list[str]:
    """``--export-circuit-tracer DIR``: the model and transcoders in circuit-tracer's layout (before
    the graph is built, so an unsupported transcoder fails fast); the lines to print."""
    if not getattr(a, "export_circuit_tracer", None):
        return []
    from circuitlab.graphs.export_circuit_tracer import attribute_command, export_for_circuit_tracer

    paths = export_for_circuit_tracer(model, tcs, a.export_circuit_tracer)
    lines = [f"wrote {paths['transcoders']} and {paths['model']} for circuit-tracer"]
    if tcs.layers[0].cfg.arch != "topk":
        return lines + ["  " + attribute_command(a.export_circuit_tracer, a.prompt)]
    return lines + ["  TopK transcoders: circuit-tracer's own loader has no TopK; load them with ct_transcoders() "
                    "from benchmarks/circuit_tracer_compare.py (docs/circuit_tracer.md)"]
