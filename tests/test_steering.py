"""Steering vectors: difference of means and CAA against brute-force means, the Spain - France
vector moving a capital, and the strength sweep."""

import pytest
import torch

import circuitlab as cl
from circuitlab.engine.interventions import generate, score
from circuitlab.methods.steering import NEUTRAL_TEXT, SteeringVector, steer, steering_vector, strength_sweep

FRANCE, SPAIN = "The capital of France is", "The capital of Spain is"  # <bos> The capital of X is: X at 4


@pytest.fixture(scope="module")
def gpt2z():
    return cl.load("gpt2-zoo")


@pytest.fixture(scope="module")
def flip_task(gpt2z):
    return cl.tasks.from_pairs(gpt2z, [{"clean": FRANCE, "corrupt": SPAIN, "answer": " Madrid", "wrong": " Paris"}])


def _block_outputs(model, text: str, layer: int) -> torch.Tensor:
    """Output of HF block ``layer`` (the residual after it) [pos, d], read with a plain
    PyTorch forward hook on the unwrapped Hugging Face model."""
    got = {}
    h = model.layers[layer].register_forward_hook(
        lambda mod, args, out: got.update(x=out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            model.bridge.original_model(model.to_tokens(text)[None])
    finally:
        h.remove()
    return got["x"][0]


def test_mean_diff_matches_brute_force(gpt2z):
    a = [FRANCE, "Mary went to the park and", "The capital of the country Spain is"]
    b = [SPAIN, "John found a book at the"]
    v = steering_vector(gpt2z, a, b, layer=1, site="resid_post", position=-1, batch_size=2)
    def mean(texts):
        return torch.stack([_block_outputs(gpt2z, t, 1)[-1] for t in texts]).mean(0)

    torch.testing.assert_close(v.vector, mean(a) - mean(b), atol=1e-5, rtol=1e-5)
    expected = ("resid_post", 1, "blocks.1.hook_resid_post", 3, 2)
    assert (v.site, v.layer, v.hook, v.meta["n_a"], v.meta["n_b"]) == expected
    v2 = steering_vector(gpt2z, a, b, layer=1, site="resid_post", position=2)
    def mean2(texts):
        return torch.stack([_block_outputs(gpt2z, t, 1)[2] for t in texts]).mean(0)

    torch.testing.assert_close(v2.vector, mean2(a) - mean2(b), atol=1e-5, rtol=1e-5)


def test_mean_diff_from_task_matches_per_prompt_cache(gpt2z):
    from circuitlab.engine.cache import capture

    task = cl.tasks.capitals(gpt2z, n=6)
    v = steering_vector(gpt2z, task, layer=2, site="attn_out", position="END", batch_size=4)
    hook = "blocks.2.hook_attn_out"
    diffs = []
    for i in range(len(task)):
        n = int(task.lengths[i])
        a = capture(gpt2z, task.clean_tokens[i:i + 1, :n], [hook])[hook][0, n - 1]
        b = capture(gpt2z, task.corrupt_tokens[i:i + 1, :n], [hook])[hook][0, n - 1]
        diffs.append(a - b)
    torch.testing.assert_close(v.vector, torch.stack(diffs).mean(0), atol=1e-5, rtol=1e-5)
    assert v.norm() > 0


def test_caa_matches_brute_force_and_flips_with_the_pairs(gpt2z):
    pairs = [("The capital of France is", " Paris", " Madrid"),
             {"prompt": "The capital of Spain is", "matching": " Madrid", "non_matching": " Paris"}]
    v = steering_vector(gpt2z, pairs, layer=2, site="resid_pre", method="caa")
    def at(text):  # resid_pre of block 2 = output of block 1
        return _block_outputs(gpt2z, text, 1)[-1]

    want = ((at(FRANCE + " Paris") - at(FRANCE + " Madrid")) + (at(SPAIN + " Madrid") - at(SPAIN + " Paris"))) / 2
    torch.testing.assert_close(v.vector, want, atol=1e-5, rtol=1e-5)
    swapped = steering_vector(gpt2z, [(p, n, m) for p, m, n in [pairs[0], tuple(pairs[1].values())]],
                              layer=2, site="resid_pre", method="caa")
    torch.testing.assert_close(swapped.vector, -v.vector)
    assert v.meta["method"] == "caa" and v.meta["position"] == "answer"


def test_spain_minus_france_moves_paris_to_madrid(gpt2z, flip_task):
    """<bos> The capital of France is -> ' Paris'; adding Spain - France (block 2's input at the
    country token) makes it ' Madrid', added at that token or at every position."""
    v = steering_vector(gpt2z, [SPAIN], [FRANCE], layer=2, position=4)
    base = float(score(gpt2z, flip_task.clean_tokens, flip_task.metric)[0])  # logit(Madrid) - logit(Paris)
    at_country = float(score(gpt2z, flip_task.clean_tokens, flip_task.metric, steer(v, 1.0, [4]))[0])
    everywhere = float(score(gpt2z, flip_task.clean_tokens, flip_task.metric, steer(v, 1.0))[0])
    assert base < -5 and at_country > 5 and everywhere > 5  # measured: -13.3, +10.0, +11.5
    t = gpt2z.to_tokens(FRANCE)
    tok = gpt2z.tokenizer
    assert tok.decode(generate(gpt2z, t, 1)[-1:].tolist()).strip() == "Paris"
    assert tok.decode(generate(gpt2z, t, 1, steer(v, 1.0, [4]))[-1:].tolist()).strip() == "Madrid"
    # read at the last token instead, the same difference is too weak at this layer
    late = steering_vector(gpt2z, [SPAIN], [FRANCE], layer=2, position=-1)
    assert float(score(gpt2z, flip_task.clean_tokens, flip_task.metric, steer(late, 1.0, [5]))[0]) < 0


def test_zero_vector_changes_nothing(gpt2z, flip_task):
    zero = SteeringVector(torch.zeros(gpt2z.d_model), "resid_pre", 2)
    task = cl.tasks.capitals(gpt2z, n=6)
    assert torch.equal(score(gpt2z, task.clean_tokens, task.metric, steer(zero, 5.0)),
                       score(gpt2z, task.clean_tokens, task.metric))
    t = gpt2z.to_tokens(FRANCE)
    assert torch.equal(generate(gpt2z, t, 6, steer(zero, 5.0)), generate(gpt2z, t, 6))


def test_strength_sweep(gpt2z, flip_task):
    v = steering_vector(gpt2z, [SPAIN], [FRANCE], layer=2, position=4)
    r = strength_sweep(gpt2z, flip_task, v, [0.0, 0.5, 1.0, 4.0])
    unsteered = float(flip_task.metric.reduce(score(gpt2z, flip_task.clean_tokens, flip_task.metric)[None])[0])
    assert r.metric[0] == unsteered
    assert r.metric[0] < r.metric[1] < r.metric[2]  # measured -13.3, -4.8, 11.5
    # perplexity at 0 from the plain Hugging Face model's logits
    from circuitlab.methods.steering import _pad

    toks, lengths = _pad(gpt2z, list(NEUTRAL_TEXT))
    nll = []
    for i, n in enumerate(lengths.tolist()):
        with torch.no_grad():
            logits = gpt2z.bridge.original_model(toks[i:i + 1, :n]).logits[0]
        nll.append(torch.nn.functional.cross_entropy(logits[:-1], toks[i, 1:n], reduction="none"))
    assert r.perplexity[0] == pytest.approx(float(torch.exp(torch.cat(nll).mean())), rel=1e-5)
    assert r.perplexity[3] > 2 * r.perplexity[0]  # strong steering everywhere breaks plain text
    one = strength_sweep(gpt2z, flip_task, v, [0.0], text="Mary went to the park .")
    assert one.perplexity[0] != r.perplexity[0]
    fig = r.figure()
    assert [t.name for t in fig.data] == ["logit_diff", "perplexity (neutral text)"]
    assert list(fig.data[1].y) == r.perplexity


def test_exported_from_package():
    assert cl.steering_vector is steering_vector and cl.steer is steer and cl.strength_sweep is strength_sweep


def test_steering_bad_input(gpt2z, flip_task):
    with pytest.raises(ValueError, match="not a vector site"):
        steering_vector(gpt2z, [SPAIN], [FRANCE], layer=1, site="heads")
    with pytest.raises(ValueError, match="outside this model's blocks"):
        steering_vector(gpt2z, [SPAIN], [FRANCE], layer=9)
    with pytest.raises(ValueError, match="need a Task"):
        steering_vector(gpt2z, [SPAIN], [FRANCE], layer=1, position="END")
    with pytest.raises(ValueError, match="outside prompt"):
        steering_vector(gpt2z, [SPAIN], [FRANCE], layer=1, position=6)
    with pytest.raises(ValueError, match="unknown method"):
        steering_vector(gpt2z, [SPAIN], [FRANCE], layer=1, method="pca")
    with pytest.raises(ValueError, match="same matching"):
        steering_vector(gpt2z, [(FRANCE, " Paris", " Paris")], layer=1, method="caa")
    with pytest.raises(ValueError, match="has no role"):
        steering_vector(gpt2z, flip_task, layer=1, position="IO")
    with pytest.raises(TypeError, match="SteeringVector"):
        steer(torch.zeros(4))
    v = SteeringVector(torch.zeros(gpt2z.d_model), "resid_pre", 1)
    with pytest.raises(ValueError, match="at least one strength"):
        strength_sweep(gpt2z, flip_task, v, [])
