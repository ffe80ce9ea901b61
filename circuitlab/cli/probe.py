"""``circuitlab probe``: probe prompting on an attribution graph: supernodes, scores, baseline comparison."""

from __future__ import annotations

import json
from pathlib import Path

from circuitlab.cli.graph import add_graph_args, feature_labels, setup, write_json

EXAMPLES = """examples:
  circuitlab probe --prompt '<bos> The capital of France is' --target ' Paris' --out runs/probe
  circuitlab probe --model smollm2-135m --prompt 'The capital of France is' --target ' Paris' --out runs/probe
  circuitlab probe --model smollm2-135m --prompt 'The Eiffel Tower is located in the city of' --out DIR
  circuitlab probe --prompt '...' --concepts concepts.json --swap '<bos> The capital of Spain is' --out DIR
  (concepts.json: [{"label": "France", "category": "entity", "probes": ["<bos> ...", ...]}, ...])
Without --concepts: zoo models take concepts from the zoo world, other models from the real-language
lexicon (countries, capitals, languages, landmarks) for factual-recall prompts."""


def add_parser(sub, fmt) -> None:
    p = sub.add_parser("probe", help="probe prompting: supernodes, scores, baseline comparison",
                       epilog=EXAMPLES, formatter_class=fmt)
    add_graph_args(p)
    p.add_argument("--concepts", default=None,
                   help="JSON list of {label, category, probes}; default: the zoo world or the real lexicon")
    p.add_argument("--swap", action="append", default=None,
                   help="entity-swapped prompt (repeatable); default: the prompt with other subjects of its relation")
    p.set_defaults(fn=run)


def run(a) -> None:
    from circuitlab.graphs.export import write_neuronpedia
    from circuitlab.graphs.page import write_page
    from circuitlab.graphs.probes import user_concepts
    from circuitlab.graphs.probing import ProbeConfig, probe_prompting
    from circuitlab.graphs.prune import prune

    model, tcs, gcfg, out = setup(a)
    concepts = None
    if a.concepts:
        path = Path(a.concepts)
        if not path.exists():
            raise FileNotFoundError(f"no concepts file {path}")
        concepts = user_concepts(json.loads(path.read_text()))
    cfg = ProbeConfig(graph=gcfg, node_threshold=a.node_threshold, edge_threshold=a.edge_threshold)
    r = probe_prompting(model, tcs, a.prompt, a.target, concepts=concepts, swaps=a.swap, cfg=cfg)
    write_json(out / "probe.json", r.to_dict())
    pr = prune(r.graph, a.node_threshold, a.edge_threshold)
    groups = r.node_groups()
    write_neuronpedia(r.graph, out, "probe-graph", pruned=pr, node_threshold=a.node_threshold,
                      supernodes=[[lab] + [r.graph.node_id(i) for i in nodes] for lab, nodes in groups])
    write_page(r.graph, out / "probe.html", pruned=pr, supernodes=groups,
               top_tokens=feature_labels(model, tcs, r.graph, pr))
    print("| grouping | groups | peak-token consistency | activation similarity |\n|---|---|---|---|")
    for row in r.table()[1:]:
        print(f"| {row[0]} | {row[1]} | {row[2]:.3f} | {row[3]:.3f} |")
    for sn in r.supernodes:
        print(f"supernode {sn.label} ({sn.kind}): {len(sn.features)} features")
    for k, v in r.scores.items():
        print(f"{k}: replacement {v['replacement']:.3f}, completeness {v['completeness']:.3f} "
              f"({v['n_features']} features)")
    print(f"concepts: {', '.join(r.concepts)}; entity-swap transfer over {r.transfer['n_swaps']} swaps: "
          f"{r.transfer['overall']:.2f} by layer {r.transfer['by_layer']}")
    print(f"wrote {out}/ (probe.json, probe-graph.json, probe.html)")
