"""Attribution graphs on per-layer transcoders, pruning and scores, Neuronpedia export, probe prompting."""
