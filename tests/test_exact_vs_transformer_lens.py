"""Exact sweeps must equal TransformerLens' own patching module (the reference)."""

import pytest
import torch
from transformer_lens import patching

import circuitlab as cl

TL = {
    "resid_pre": patching.get_act_patch_resid_pre,
    "attn_out": patching.get_act_patch_attn_out,
    "mlp_out": patching.get_act_patch_mlp_out,
    "heads": patching.get_act_patch_attn_head_out_by_pos,
    "heads_all": patching.get_act_patch_attn_head_out_all_pos,
    "q": patching.get_act_patch_attn_head_q_by_pos,
    "k": patching.get_act_patch_attn_head_k_by_pos,
    "v": patching.get_act_patch_attn_head_v_by_pos,
}


def reference(model, task, sites, direction):
    clean, corrupt = task.clean_tokens, task.corrupt_tokens
    base, src = (corrupt, clean) if direction == "denoising" else (clean, corrupt)
    _, cache = model.bridge.run_with_cache(src)
    with torch.no_grad():
        return TL[sites](model.bridge, base, cache, lambda logits: task.metric.from_logits(logits))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("sites", list(TL))
def test_exact_equals_transformer_lens(tiny_model, ioi_pairs, arch, sites):
    m = tiny_model(arch)
    task = cl.tasks.from_pairs(m, ioi_pairs)
    ref = reference(m, task, sites, "denoising")
    for per_pass in (1, 100_000):  # one patch per pass, and all patches in one pass
        r = cl.patch(m, task, sites, max_patches_per_pass=per_pass, memory_bytes=1 << 34, max_waste=float("inf"),
                     progress=False)
        if per_pass > 1:
            assert r.cost.forward_passes == 3  # two capture runs + one pass holding every patch
        assert r.patched.shape == ref.shape
        assert torch.allclose(r.patched, ref, atol=1e-4), (sites, per_pass, (r.patched - ref).abs().max())
    assert r.values.abs().max() > 1e-5  # the sweep measured something


@pytest.mark.parametrize("sites", ["resid_pre", "heads", "k"])
def test_noising_equals_transformer_lens_with_roles_swapped(gpt2, ioi_pairs, sites):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    ref = reference(gpt2, task, sites, "noising")
    r = cl.patch(gpt2, task, sites, direction="noising", max_patches_per_pass=7, progress=False)
    assert r.direction == "noising"
    assert torch.allclose(r.patched, ref, atol=1e-4)


def test_denoising_last_layer_resid_recovers_clean(gpt2, ioi_pairs):
    """Patching the whole clean residual at the last position restores the clean metric."""
    task = cl.tasks.from_pairs(gpt2, ioi_pairs, metric="normalized_logit_diff")
    r = cl.patch(gpt2, task, "resid_post", positions=["END"], progress=False)
    assert abs(float(r.patched[-1, 0]) - 1.0) < 1e-4
    assert abs(r.baseline) < 1e-6  # corrupted run is 0 after normalisation


def test_neurons_at_role_positions(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    r = cl.patch(gpt2, task, "neurons", positions=["S2", "END"], layers=[1], progress=False)
    assert r.values.shape == (1, 2, gpt2.d_mlp) and r.dims == ("layer", "pos", "neuron")
    # brute force: patch neuron 7 at each prompt's S2 position by hand
    from circuitlab.engine.cache import capture
    from circuitlab.engine.forward import metric_per_prompt
    from circuitlab.engine.hooks import scoped_hooks  # noqa: F401 (the engine attaches hooks)

    name = "blocks.1.mlp.hook_post"
    clean = capture(gpt2, task.clean_tokens, [name])[name]
    s2 = task.roles["S2"]

    def hook(x):
        x = x.clone()
        b = torch.arange(x.shape[0])
        x[b, s2, 7] = clean[b, s2, 7]
        return x

    val = task.metric.reduce(metric_per_prompt(gpt2, task.corrupt_tokens, task.metric, [(name, hook)])[None])[0]
    assert torch.allclose(r.patched[0, 0, 7], val, atol=1e-5)


def test_neurons_need_positions(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    with pytest.raises(ValueError, match="positions"):
        cl.patch(gpt2, task, "neurons", progress=False)
