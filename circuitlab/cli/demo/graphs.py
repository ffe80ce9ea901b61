"""The demo report's attribution-graph section (a pointer to training when no transcoders ship)."""

from __future__ import annotations

from pathlib import Path


def demo_section(model, task, report, out: Path, label: str, summary: dict) -> None:
    """Add an attribution graph (and probe-prompting supernodes for factual-recall prompts) of
    the task's first prompt to ``report``; when no transcoders are found for the model, a short
    section saying how to train them instead."""
    from circuitlab.graphs.transcoders import find_transcoders, load_transcoders

    folder = find_transcoders(model.name)
    if folder is None:
        report.add(f"{label}: attribution graph (skipped)",
                   f"No transcoders ship for {model.name}. Train one per layer with `circuitlab train "
                   "CONFIG.toml` (a transcoder config from saes/configs/ with `model = ` set to this model), "
                   "then draw graphs with `circuitlab graph --transcoders RUN_FOLDER`.")
        return
    from circuitlab.graphs.attribute import GraphConfig, attribute
    from circuitlab.graphs.export import write_neuronpedia
    from circuitlab.graphs.page import graph_figure, write_page
    from circuitlab.graphs.probes import default_concepts
    from circuitlab.graphs.probing import ProbeConfig, probe_prompting
    from circuitlab.graphs.prune import prune, pruned_graph, scores

    tcs = load_transcoders(folder)
    rec = task.prompts[0]
    prompt, target = rec["clean"], rec["answer"]
    g = attribute(model, tcs, prompt, target, GraphConfig(max_feature_nodes=500))
    pr = prune(g)
    sc = [scores(g), scores(pruned_graph(g, pr), "pruned")]
    groups, probe = [], None
    try:
        concepts = default_concepts(model, prompt, target)
        if concepts:
            probe = probe_prompting(model, tcs, prompt, target, concepts=concepts, cfg=ProbeConfig(), graph=g)
            groups = probe.node_groups()
    except ValueError as e:  # no features survive, no concepts: the graph section still stands
        summary[f"{label}_probe_error"] = str(e)
    out = Path(out)
    write_neuronpedia(g, out, f"{label}_graph", pruned=pr,
                      supernodes=[[lab] + [g.node_id(i) for i in nodes] for lab, nodes in groups])
    page = write_page(g, out / f"{label}_graph.html", pruned=pr, supernodes=groups, scores=sc)
    fig, _ = graph_figure(g, pr, groups, title=f"Attribution graph: {prompt} -> {target}")
    rows = [["graph", "features", "replacement", "completeness"]]
    rows += [[s.graph, s.n_features, s.replacement, s.completeness] for s in sc]
    items = [fig, rows]
    if probe is not None:
        items.append(probe.table())
        items.append([["supernode", "kind", "features"]]
                     + [[s.label, s.kind, len(s.features)] for s in probe.supernodes])
    report.add(f"{label}: attribution graph on transcoders",
               f"Local replacement model of '{prompt}' with the transcoders in {folder.name}: features, error nodes "
               f"and tokens, pruned at node 0.8 / edge 0.98 influence. Interactive page with click-to-highlight "
               f"paths: {page.name}; Neuronpedia JSON: {label}_graph.json. Built in {g.meta['seconds']:.1f}s."
               + (" Probe-prompting supernodes are outlined and compared with two clustering baselines."
                  if probe else ""),
               *items)
    summary[f"{label}_graph"] = {"scores": [s.as_dict() for s in sc], "seconds": g.meta["seconds"],
                                 "probe": probe.to_dict() if probe is not None else None}
