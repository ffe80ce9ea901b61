"""Kept linearised forwards: zoo graphs bitwise equal to one forward per batch, with fewer forwards.

The reference is the one-forward-per-backward path as it was written before forwards were kept
(``_one_shot_gradients`` below, the same hooks and reads), run through ``attribute`` in place of
``GradientReader``; ``run_to_final`` is counted in both.
"""

from __future__ import annotations

import importlib
import weakref

import pytest
import torch

import circuitlab.graphs.replacement as RP
from circuitlab.engine.hooks import count_hooks
from circuitlab.engine.sites import hook_name
from circuitlab.graphs.attribute import GraphConfig, attribute
from circuitlab.graphs.graph import Graph
from circuitlab.graphs.prune import scores
from circuitlab.graphs.replacement import GradientReader, LinearisedForward, Target, clean_run, read_gradients
from circuitlab.graphs.transcoders import find_transcoders, load_transcoders
from circuitlab.methods.relp_rules import norm_rule_hooks

PROMPT = "<bos> The capital of France is"
attribute_module = importlib.import_module("circuitlab.graphs.attribute")  # the package re-exports the function


def _one_shot_gradients(model, transcoders, clean, targets):
    """One forward + backward per batch, nothing kept: the reference path."""
    R = len(targets)
    tokens = clean.tokens[None].expand(R, -1)
    leaves, reads = {}, {}

    def leaf(name):
        def fn(y):
            z = y.detach().clone().requires_grad_(True)
            leaves[name] = z
            return z
        return fn

    def read(l):
        def fn(x):
            reads[l] = x
        return fn

    def write(l):
        tc = transcoders[l]

        def fn(y):
            z = y.detach().clone().requires_grad_(True)
            leaves[l] = z
            if tc.W_skip is None:
                return z
            s = tc.skip_output(reads[l].to(tc.W_skip.dtype)).to(z.dtype)
            return z + (s - s.detach())
        return fn

    hooks = [(hook_name("embed"), leaf("embed"))] + norm_rule_hooks(model)
    hooks += [(hook_name("pattern", l), lambda y: y.detach()) for l in range(model.n_layers)]
    for l, tc in enumerate(transcoders.layers):
        hooks += [(tc.hook_in, read(l)), (tc.hook_out, write(l))]
    with torch.enable_grad():
        resid = RP.run_to_final(model, tokens, hooks)
        rd = [reads[l] for l in range(model.n_layers)]
        values = RP._read_values(model, transcoders, clean, rd, resid, targets, rows=list(range(R)))
        srcs = [leaves["embed"]] + [leaves[l] for l in range(model.n_layers)]
        grads = torch.autograd.grad(values.sum(), srcs, allow_unused=True)
    grads = [torch.zeros_like(s) if g is None else g for s, g in zip(srcs, grads)]
    return values.detach(), grads[0].float(), [g.float() for g in grads[1:]]


class _EveryBatchForward:
    """GradientReader's interface on the reference path (a forward for every batch)."""

    def __init__(self, model, transcoders, clean):
        self.model, self.transcoders, self.clean = model, transcoders, clean
        self.forward_passes = self.backward_passes = 0

    def __call__(self, targets):
        self.forward_passes += 1
        self.backward_passes += 1
        return _one_shot_gradients(self.model, self.transcoders, self.clean, targets)

    def release(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def forwards(monkeypatch):
    """Counts every forward pass the graph code runs (clean, linearised, bias)."""
    box = {"n": 0}
    real = RP.run_to_final

    def counted(*a, **kw):
        box["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(RP, "run_to_final", counted)
    return box


def _zoo(zoo_model, name):
    model = zoo_model(name)
    folder = find_transcoders(model.name)
    assert folder is not None, f"{name} ships transcoders"
    return model, load_transcoders(folder)


def _same(a: Graph, b: Graph) -> None:
    for k in ("adjacency", "bias", "preact", "selected", "active_features", "activations", "logit_tokens",
              "logit_probs", "tokens"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    sa, sb = scores(a), scores(b)
    assert (sa.replacement, sa.completeness) == (sb.replacement, sb.completeness)


# name, target, config, linearised forwards kept vs one per batch
CASES = [("gpt2-zoo", " Paris", GraphConfig(max_feature_nodes=60, batch_size=16), 3, 5),  # 1 | 16 16 16 | 12
         ("llama-zoo", None, GraphConfig(max_feature_nodes=None, batch_size=64), 3, 10),  # logits | 64 x 8 | 51
         ("llama-zoo", list(range(10, 16)), GraphConfig(max_feature_nodes=23, batch_size=4), 4, 8)]  # 4 2 | 4 x 5 | 3


@pytest.mark.parametrize("name,target,cfg,kept,every", CASES)
def test_kept_forward_graph_is_bitwise_the_one_shot_graph(zoo_model, monkeypatch, forwards, name, target, cfg,
                                                          kept, every):
    model, tcs = _zoo(zoo_model, name)
    before = count_hooks(model.bridge)
    forwards["n"] = 0
    new = attribute(model, tcs, PROMPT, target, cfg)
    n_new = forwards["n"]
    assert count_hooks(model.bridge) == before
    with monkeypatch.context() as m:
        m.setattr(attribute_module, "GradientReader", _EveryBatchForward)
        forwards["n"] = 0
        old = attribute(model, tcs, PROMPT, target, cfg)
        n_old = forwards["n"]
    _same(new, old)
    assert new.n_features > 0 and new.n_logits >= 1
    # counted forwards: clean run + bias run + linearised ones; the reference runs one per backward
    assert n_new == new.meta["forward_passes"] == kept + 2
    assert n_old == old.meta["forward_passes"] == old.meta["backward_passes"] + 2
    assert new.meta["backward_passes"] == old.meta["backward_passes"]
    assert old.meta["backward_passes"] == every
    assert n_new < n_old


def test_reader_keeps_one_forward_and_frees_it(zoo_model, forwards):
    model, tcs = _zoo(zoo_model, "llama-zoo")
    clean = clean_run(model, tcs, model.to_tokens(PROMPT))
    feats = [Target("feature", l, p, int(f)) for l, a in enumerate(clean.acts) for p, f in a.nonzero().tolist()]
    assert len(feats) >= 7
    forwards["n"] = 0
    with GradientReader(model, tcs, clean) as reader:
        first = reader(feats[:3])
        second = reader(feats[3:6])  # same size: the kept forward, no new one
        assert forwards["n"] == 1 and reader.forward_passes == 1 and reader.backward_passes == 2
        kept = weakref.ref(reader._run._resid)
        reader(feats[6:7])  # a new size releases the kept forward before building its own
        assert kept() is None
        assert forwards["n"] == 2 and reader.forward_passes == 2
        last = reader._run
    assert reader._run is None and last._resid is None  # freed on leaving
    with pytest.raises(RuntimeError, match="released"):
        last.gradients(feats[6:7])
    # a kept forward's second backward equals a fresh forward's: nothing accumulates across passes
    for got, batch in ((first, feats[:3]), (second, feats[3:6])):
        ref = read_gradients(model, tcs, clean, batch)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
        assert all(torch.equal(a, b) for a, b in zip(got[2], ref[2]))
    with pytest.raises(ValueError, match="rows"):
        LinearisedForward(model, tcs, clean, 2).gradients(feats[:3])
    with pytest.raises(ValueError, match="batch_size"):
        attribute(model, tcs, PROMPT, cfg=GraphConfig(batch_size=0))


def _subgraph_reference(g: Graph, keep) -> torch.Tensor:
    """The merged adjacency written out term by term (dropped feature -> its error column)."""
    keep = sorted(set(int(k) for k in keep))
    drop = [i for i in range(g.n_features) if i not in keep]
    order = keep + list(range(g.n_features, g.n_nodes))
    B = g.adjacency[order][:, order].clone()
    for i in drop:
        l, p, _, _ = g.feature_info(i)
        B[:, len(keep) + l * g.n_pos + p] += g.adjacency[order, i]
    return B


def test_subgraph_merges_dropped_features_into_errors(zoo_model):
    model, tcs = _zoo(zoo_model, "gpt2-zoo")
    g = attribute(model, tcs, PROMPT, " Paris", GraphConfig(max_feature_nodes=40, batch_size=40))
    keep = torch.randperm(g.n_features, generator=torch.Generator().manual_seed(0))[:15]
    sub = g.subgraph(keep)
    assert torch.equal(sub.adjacency, _subgraph_reference(g, keep.tolist()))
    assert torch.equal(sub.selected, g.selected[keep.sort().values])
    # rows keep their sums: the dropped features' edges moved, none lost
    rows = [sub.logit_start + j for j in range(sub.n_logits)]
    full_rows = [g.logit_start + j for j in range(g.n_logits)]
    assert torch.allclose(sub.adjacency[rows].sum(1), g.adjacency[full_rows].sum(1), atol=1e-5)
    assert torch.equal(g.subgraph(range(g.n_features)).adjacency, g.adjacency)
