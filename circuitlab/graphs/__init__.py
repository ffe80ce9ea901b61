"""Attribution graphs on per-layer transcoders, pruning and scores, Neuronpedia export, probe prompting.

    from circuitlab.graphs import attribute, find_transcoders, load_transcoders, prune, scores, write_page
    tcs = load_transcoders(find_transcoders("gpt2-zoo"))   # or fit_transcoders(model, prompts)
    g = attribute(model, tcs, "<bos> The capital of France is", " Paris")
    pr = prune(g)                                      # node 0.8 / edge 0.98 influence
    scores(g), scores(pruned_graph(g, pr), "pruned")   # replacement, completeness
    write_neuronpedia(g, "out", "france", pruned=pr); write_page(g, "out/graph.html", pruned=pr)
    r = probe_prompting(model, tcs, "<bos> The capital of France is", " Paris")

Transcoders are circuitlab.sparse coders (files, training and dashboards live there).
Modules: transcoders (one coder per layer, files, search), fit (quick transcoders), frozen
(frozen norms and patterns), replacement (local replacement model: clean cache, gradient and
frozen runs), attribute (edges), graph (Graph, sub-graphs, save/load), prune (influence,
pruning, scores), verify (edges by intervention), export (Neuronpedia JSON), page (interactive
HTML), targets (supernodes as intervention targets), probes / signatures / classify / baselines /
probing (probe prompting), cli, demo.
"""

from circuitlab.graphs.attribute import GraphConfig, attribute
from circuitlab.graphs.export import check_schema, to_neuronpedia, write_neuronpedia
from circuitlab.graphs.fit import FitConfig, fit_transcoders
from circuitlab.graphs.graph import Graph
from circuitlab.graphs.page import graph_page, write_page
from circuitlab.graphs.probes import Concept, real_concepts, real_swaps, swapped_prompts, world_concepts
from circuitlab.graphs.probing import ProbeConfig, ProbeResult, probe_prompting
from circuitlab.graphs.prune import Pruned, Scores, prune, pruned_graph, scores, subgraph_scores
from circuitlab.graphs.transcoders import (TranscoderSet, as_transcoders, find_transcoders, load_transcoders,
                                          save_transcoders)
from circuitlab.graphs.verify import intervention_effects

__all__ = ["GraphConfig", "attribute", "Graph", "prune", "pruned_graph", "scores", "subgraph_scores", "Pruned",
           "Scores", "to_neuronpedia", "write_neuronpedia", "check_schema", "graph_page", "write_page",
           "TranscoderSet", "as_transcoders", "load_transcoders", "save_transcoders", "find_transcoders", "FitConfig",
           "fit_transcoders", "intervention_effects", "Concept", "world_concepts", "swapped_prompts", "ProbeConfig",
           "ProbeResult", "probe_prompting", "real_concepts", "real_swaps"]
