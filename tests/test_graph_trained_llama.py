"""The real-model path end to end on a tiny random Llama: a transcoder for every layer trained
from one shared activation stream by the training-file runner (as saes/configs/smollm2-135m.toml
does for SmolLM2-135M), found where the graph commands look, and an attribution graph built on
them whose edges are exact (they sum to each target's pre-activation and equal frozen-model
interventions). SmolLM2-135M itself runs under the slow marker in test_probe_real.py."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from tiny import WORDS, save_tiny

PROMPT = "when Mary then John went to the store , John gave a drink to"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import circuitlab as cl
    from circuitlab.sparse import config
    from circuitlab.sparse.run import train_file

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained-llama")
    folder = save_tiny(root / "model", "llama")
    rng = random.Random(0)
    text = root / "text.txt"
    text.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(200)) + "\n")
    model = cl.load(str(folder), device="cpu")
    out = root / "coders"
    tf = config.parse({
        "run": {"out": str(out), "model": str(folder), "data": f"text:{text}", "ctx_len": 24, "shard_tokens": 256,
                "docs_per_batch": 16, "buffer_shards": 2, "evaluate": False, "density_html": False,
                "exclude_norm_factor": 0.0, "threads": 1, "shared_stream": True},
        "train": {"total_tokens": 2048, "batch_size": 128, "progress": False, "init_tokens": 256,
                  "checkpoint_every": 0},
        "coder": [{"name": f"tiny_transcoder_L{layer}", "kind": "transcoder", "arch": "topk", "layer": layer,
                   "k": 8, "expansion": 2, "seed": layer + 1} for layer in range(model.n_layers)]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = train_file(tf, models={str(folder): model})
    return model, out, metrics


def test_a_transcoder_per_layer_trains_from_one_stream(trained):
    from circuitlab.graphs.transcoders import load_transcoders

    model, out, metrics = trained
    tcs = load_transcoders(out)
    assert len(tcs) == model.n_layers == 3
    tcs.check(model)  # one per layer, in layer order, of the model's width
    # differently seeded coders start from different directions
    w = [c.W_dec.detach() for c in tcs.layers]
    assert not torch.allclose(w[0], w[1])
    assert set(metrics) == {f"tiny_transcoder_L{layer}" for layer in range(3)}


def test_graph_on_the_trained_transcoders_is_exact(trained):
    from circuitlab.graphs import GraphConfig, attribute, intervention_effects, load_transcoders, scores
    from circuitlab.graphs.verify import target_nodes

    model, out, _ = trained
    tcs = load_transcoders(out)
    g = attribute(model, tcs, PROMPT, " Mary", GraphConfig(max_feature_nodes=80, batch_size=32))
    assert g.n_features > 0 and [s.strip() for s in g.logit_strs] == ["Mary"]
    rows = target_nodes(g)
    A = g.adjacency[rows]
    err = (A.sum(1) + g.bias[rows] - g.preact[rows]).abs()
    assert (err <= 1e-3 + 1e-4 * (A.abs().sum(1) + g.bias[rows].abs())).all(), err.max()
    sources = list(range(0, g.n_features, 5)) + list(range(g.error_start, g.logit_start, 4))
    measured, predicted = intervention_effects(model, tcs, g, sources)
    assert predicted.abs().max() > 1e-3
    torch.testing.assert_close(measured, predicted, atol=1e-3, rtol=1e-4)
    s = scores(g)
    assert 0 <= s.replacement <= 1 and 0 <= s.completeness <= 1
