"""generate(): the key/value-cache path gives the same tokens as rerunning the whole sequence,
interventions included, and sampling repeats under a seed."""

import pytest
import torch

import circuitlab as cl
from circuitlab.engine.hooks import count_hooks
from circuitlab.engine.interventions import Intervention, _pick, generate
from circuitlab.graphs.targets import Supernode

PROMPTS = ["The capital of France is", "Mary went to the park and"]


@pytest.fixture(scope="module", params=["gpt2-zoo", "llama-zoo"])
def zoo(request):
    return cl.load(request.param)


def _noise(model, seed=0, scale=6.0):
    return torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed)) * scale


def _interventions(model):
    """Edits at every position; at a prompt position, at generated positions and counted back
    from the prompt's end; by a node's own position and through a supernode; on units and heads."""
    n = _noise(model)
    return {
        "everywhere": [Intervention("L1.resid_pre", "add", n)],
        "positions": [Intervention("L1.resid_pre", "add", n, positions=(4,)),
                      Intervention("L2.resid_pre", "add", n, positions=(7, 9)),
                      Intervention("L0.resid_post", "add", n, positions=(-2,))],
        "nodes": [Intervention(Supernode(("L1.resid_pre@4", "L2.mlp_out")), "scale", 3.0)],
        "units_heads": [Intervention("L1.N3", "set", 50.0), Intervention("L0.H1.v", "scale", 5.0)],
    }


def test_cached_equals_uncached_greedy(zoo):
    t = zoo.to_tokens(PROMPTS[0])
    plain = generate(zoo, t, 8, cache=False)
    assert torch.equal(generate(zoo, t, 8, cache=True), plain)
    assert zoo.tokenizer.decode(plain[len(t):len(t) + 1].tolist()).strip() == "Paris"
    changed = 0
    for name, ivs in _interventions(zoo).items():
        a = generate(zoo, t, 8, ivs, cache=False)
        b = generate(zoo, t, 8, ivs, cache=True)
        assert torch.equal(a, b), name
        changed += not torch.equal(a, plain)
    assert changed >= 2  # the edits act, so equality above is not vacuous


def test_cached_equals_uncached_batch_and_stop(zoo):
    tok = zoo.tokenizer
    rows = [zoo.to_tokens(p) for p in PROMPTS]
    n = min(len(r) for r in rows)
    batch = torch.stack([r[:n] for r in rows])
    ivs = [Intervention("L2.resid_pre", "add", _noise(zoo, 1), positions=(n + 1,))]
    a = generate(zoo, batch, 4, ivs, cache=False)
    assert torch.equal(generate(zoo, batch, 4, ivs, cache=True), a)
    assert a.shape == (2, n + 4)
    dot = tok.convert_tokens_to_ids(".")
    one = zoo.to_tokens(PROMPTS[0])
    out = generate(zoo, one, 8, stop_token=dot, cache=True)
    assert torch.equal(out, generate(zoo, one, 8, stop_token=dot, cache=False))
    assert int(out[-1]) == dot and len(out) < len(one) + 8


def test_cached_hooks_see_absolute_positions(zoo):
    """Prefill gets the prompt positions; a later position acts once, when its token is run."""
    calls = []

    class Spy:
        def hooks(self, model, edit, positions):
            def fn(x):
                calls.append((x.shape[1], positions))
            return [("blocks.2.hook_resid_pre", fn)]

    t = zoo.to_tokens(PROMPTS[0])  # 6 tokens
    before = count_hooks(zoo.bridge)
    generate(zoo, t, 3, [Intervention(Spy(), "add", 0.0, positions=(2, 7))], cache=True)
    assert calls == [(6, [2]), (1, [0])]
    calls.clear()
    generate(zoo, t, 3, [Intervention(Spy(), "add", 0.0, positions=(2, 7))], cache=False)
    assert calls == [(6, [2, 7]), (7, [2, 7]), (8, [2, 7])]
    assert count_hooks(zoo.bridge) == before


def test_sampling_is_reproducible(zoo):
    t = zoo.to_tokens(PROMPTS[1])
    greedy = generate(zoo, t, 5)
    assert torch.equal(generate(zoo, t, 5, temperature=0.0, seed=5), greedy)
    assert torch.equal(generate(zoo, t, 5, temperature=1.0, top_p=1e-6, seed=5), greedy)  # nucleus of one
    s = generate(zoo, t, 5, temperature=1.5, seed=7)
    assert torch.equal(generate(zoo, t, 5, temperature=1.5, seed=7), s)
    assert torch.equal(generate(zoo, t, 5, temperature=1.5, seed=torch.Generator().manual_seed(7)), s)
    assert torch.equal(generate(zoo, t, 5, temperature=1.5, seed=7, cache=False), s)
    ivs = _interventions(zoo)["everywhere"]
    assert torch.equal(generate(zoo, t, 5, ivs, temperature=1.5, top_p=0.9, seed=3),
                       generate(zoo, t, 5, ivs, temperature=1.5, top_p=0.9, seed=3, cache=False))
    draws = {tuple(generate(zoo, t, 5, temperature=4.0, seed=k).tolist()) for k in range(4)}
    assert len(draws) > 1  # it samples


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {int(_pick(logits, 1.0, 0.6, g)) for _ in range(300)}
    assert seen == {0, 1}  # 0.5 < 0.6, so the second token completes the nucleus
    seen = {int(_pick(logits, 1.0, 1.0, g)) for _ in range(300)}
    assert seen == {0, 1, 2, 3}
    assert int(_pick(logits, 0.0, 1.0, None)) == 0


def test_generate_bad_input():
    model = cl.load("gpt2-zoo")
    t = model.to_tokens(PROMPTS[0])
    with pytest.raises(ValueError, match="temperature"):
        generate(model, t, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, t, 2, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="before the start"):
        generate(model, t, 2, [Intervention("L1.resid_pre", "scale", 0.0, positions=(-7,))])
    with pytest.raises(TypeError, match="seed"):
        generate(model, t, 2, temperature=1.0, seed="7")
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, t, -1)


def test_pattern_edits_act_on_one_head_at_query_positions(zoo):
    """Zeroing head 2's attention weights at query 4 zeroes that head's z there and nowhere else;
    generation with pattern edits agrees with and without the cache."""
    from circuitlab.engine.cache import capture

    t = zoo.to_tokens(PROMPTS[0])[None]
    hook = "blocks.1.attn.hook_z"
    base = capture(zoo, t, [hook])[hook]
    iv = Intervention("L1.H2.pattern", "scale", 0.0, positions=(4,))
    z = capture(zoo, t, [hook], hooks=iv.hooks(zoo))[hook]
    assert float(z[0, 4, 2].abs().max()) == 0 and float(base[0, 4, 2].abs().max()) > 0
    keep = torch.ones_like(z, dtype=torch.bool)
    keep[0, 4, 2] = False
    assert torch.equal(z[keep], base[keep])
    ivs = [Intervention("L1.H2.pattern", "scale", 0.0), Intervention("L2.H0.pattern", "scale", 3.0, positions=(7,))]
    assert torch.equal(generate(zoo, t[0], 5, ivs, cache=True), generate(zoo, t[0], 5, ivs, cache=False))
