"""Checks on real pretrained models. They run in the default suite wherever `circuitlab models
fetch smollm2-135m` has put the model in the cache (CI included), under the slow marker otherwise
(where they skip for want of the model).

Exact head patching on SmolLM2-135M is compared with a from-scratch implementation: plain
PyTorch forward-pre-hooks on the bare Hugging Face model's attention output projection, which
replace one head's slice of the projection input with its value from the clean run.
"""

from __future__ import annotations

import pytest
import torch

from circuitlab.models import fetch

pytestmark = [] if fetch.is_fetched("smollm2-135m") else [pytest.mark.slow]

PAIRS = [  # same token length clean/corrupt (ABC corruption: a third name replaces the subject)
    ("When Mary and John went to the store, John gave a drink to",
     "When Mary and John went to the store, David gave a drink to", " Mary", " John"),
    ("When Tom and James went to the park, James gave a ball to",
     "When Tom and James went to the park, Mark gave a ball to", " Tom", " James"),
    ("Then, Sarah and Paul had a long argument, and afterwards Paul said to",
     "Then, Sarah and Paul had a long argument, and afterwards Kevin said to", " Sarah", " Paul"),
]


def _need(name: str):
    if not fetch.is_fetched(name):
        pytest.skip(f"{name} is not fetched (circuitlab models fetch {name})")


@pytest.fixture(scope="module")
def smollm2():
    _need("smollm2-135m")
    import circuitlab as cl

    return cl.load("smollm2-135m", device="cpu")


def _hf_head_patching(hf, clean, corrupt, answer, wrong, layers, positions, n_heads, d_head):
    """[layer, pos, head] logit-difference effects of restoring one head's clean output."""
    attn = [hf.model.layers[l].self_attn for l in range(len(hf.model.layers))]
    z_clean = {}

    def record(l):
        def pre(mod, args):
            z_clean[l] = args[0].detach().clone()
        return pre

    def metric(logits):
        last = logits[:, -1]
        return (last.gather(1, answer[:, None]) - last.gather(1, wrong[:, None])).squeeze(1).mean()

    handles = [attn[l].o_proj.register_forward_pre_hook(record(l)) for l in layers]
    with torch.no_grad():
        hf(clean)
    for h in handles:
        h.remove()
    out = torch.zeros(len(layers), len(positions), n_heads, dtype=torch.float64)
    for i, l in enumerate(layers):
        for j, p in enumerate(positions):
            for h in range(n_heads):
                def patch(mod, args, p=p, h=h, l=l):
                    z = args[0].clone()
                    z[:, p, h * d_head:(h + 1) * d_head] = z_clean[l][:, p, h * d_head:(h + 1) * d_head]
                    return (z,)
                handle = attn[l].o_proj.register_forward_pre_hook(patch)
                with torch.no_grad():
                    out[i, j, h] = metric(hf(corrupt).logits)
                handle.remove()
    with torch.no_grad():
        base = metric(hf(corrupt).logits)
    return out - base.double()


def test_exact_head_patching_matches_plain_torch_hooks(smollm2):
    import circuitlab as cl
    from transformers import AutoModelForCausalLM

    pairs = [{"clean": c, "corrupt": k, "answer": a, "wrong": w} for c, k, a, w in PAIRS[:2]]
    task = cl.tasks.from_pairs(smollm2, pairs)
    n_pos = task.clean_tokens.shape[1]
    assert bool((task.lengths == n_pos).all()), "the pairs are chosen to tokenize to one length"
    layers, positions = [0, 9, 20, 29], [n_pos - 6, n_pos - 1]
    ours = cl.patch(smollm2, task, "heads", method="exact", layers=layers, positions=positions, progress=False)
    hf = AutoModelForCausalLM.from_pretrained(str(fetch.model_folder("smollm2-135m")), dtype=torch.float32).eval()
    ref = _hf_head_patching(hf, task.clean_tokens, task.corrupt_tokens, task.answer_ids, task.wrong_ids,
                            layers, positions, smollm2.n_heads, smollm2.d_head)
    got = ours.values.double().reshape(ref.shape)
    assert ref.abs().max() > 0.05, "the chosen heads should matter at the final position"
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)


def test_smollm2_is_a_llama(smollm2):
    a = smollm2.adapter
    assert (a.family, a.positional_embedding, a.norm_kind, a.gated_mlp) == ("llama", "rotary", "RMS", True)
    assert a.attn_scale(0) == 64 ** -0.5 and a.norm("ln1", 0).eps == smollm2.bridge.original_model.config.rms_norm_eps


def test_smollm2_solves_wang_style_ioi(smollm2):
    import circuitlab as cl

    task = cl.tasks.from_pairs(smollm2, [{"clean": c, "corrupt": k, "answer": a, "wrong": w} for c, k, a, w in PAIRS])
    with torch.no_grad():
        clean = task.metric.from_logits(smollm2.bridge(task.clean_tokens))
        corrupt = task.metric.from_logits(smollm2.bridge(task.corrupt_tokens))
    assert float(clean.mean()) > 1.0 > float(corrupt.mean())


def test_gemma3_loads_and_answers():
    _need("gemma3-270m")
    import circuitlab as cl

    model = cl.load("gemma3-270m", device="cpu")
    assert (model.n_layers, model.n_heads, model.n_kv_heads, model.d_model) == (18, 4, 1, 640)
    cfg = model.bridge.original_model.config
    assert model.adapter.family == "gemma3" and model.adapter.attn_scale(0) == cfg.query_pre_attn_scalar ** -0.5
    windows = [model.adapter.sliding_window(l) for l in range(18)]
    assert windows == [cfg.sliding_window if t == "sliding_attention" else None for t in cfg.layer_types]
    task = cl.tasks.from_pairs(model, [{"clean": c, "corrupt": k, "answer": a, "wrong": w} for c, k, a, w in PAIRS[:2]])
    with torch.no_grad():
        assert float(task.metric.from_logits(model.bridge(task.clean_tokens)).mean()) > 0
