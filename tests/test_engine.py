import pytest
import torch

import circuitlab as cl
from circuitlab.engine.cache import capture
from circuitlab.engine.forward import Restart, kv_tensors, new_kv_cache, run_to_final
from circuitlab.engine.hooks import count_hooks, scoped_hooks
from circuitlab.engine.patching import chunk_size_for, patch_nodes
from circuitlab.engine.sites import Node

TOKS = torch.tensor([[0, 3, 4, 5, 6, 7, 8, 9], [0, 9, 8, 7, 6, 5, 4, 3]])


def test_hooks_removed_when_call_raises(gpt2):
    before = count_hooks(gpt2.bridge)

    def boom(x):
        raise RuntimeError("inside a hook")

    with pytest.raises(RuntimeError, match="inside a hook"):
        with scoped_hooks(gpt2.bridge, [("blocks.1.hook_resid_pre", boom)]):
            gpt2.bridge(TOKS)
    assert count_hooks(gpt2.bridge) == before
    with pytest.raises(ValueError):
        with scoped_hooks(gpt2.bridge, [("blocks.0.hook_resid_pre", lambda x: None)]):
            raise ValueError("outside the model")
    assert count_hooks(gpt2.bridge) == before


def test_unknown_hook_name(gpt2):
    with pytest.raises(KeyError, match="unknown hook name"):
        with scoped_hooks(gpt2.bridge, [("blocks.0.hook_nonsense", lambda x: None)]):
            pass


def test_cache_selective_no_alias_duplicates(gpt2):
    c = capture(gpt2, TOKS, ["blocks.1.hook_resid_pre", "blocks.1.hook_in", "blocks.0.attn.hook_z"],
                positions=[2, 5], dtype=torch.float64)
    assert set(c) == {"blocks.1.hook_resid_pre", "blocks.1.hook_in", "blocks.0.attn.hook_z"}
    assert c["blocks.1.hook_resid_pre"] is c["blocks.1.hook_in"]  # one tensor, two names
    assert c["blocks.1.hook_resid_pre"].shape == (2, 2, 64)
    assert c["blocks.1.hook_resid_pre"].dtype == torch.float64
    full = capture(gpt2, TOKS, ["blocks.1.hook_resid_pre"])["blocks.1.hook_resid_pre"]
    assert torch.allclose(full[:, [2, 5]].double(), c["blocks.1.hook_resid_pre"])
    # equal to the bridge's own cache
    _, ref = gpt2.bridge.run_with_cache(TOKS)
    assert torch.allclose(full, ref["blocks.1.hook_resid_pre"])


def test_cache_stops_after_last_needed_layer(gpt2):
    calls = []
    handles = [b.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, b in enumerate(gpt2.layers)]
    try:
        capture(gpt2, TOKS, ["blocks.0.hook_resid_post"])
    finally:
        for h in handles:
            h.remove()
    assert calls == []  # hook_resid_post fires inside block 0, before it returns; later blocks never run


def _count_block_calls(model, fn):
    calls = []
    handles = [b.register_forward_pre_hook(lambda *a, i=i: calls.append(i)) for i, b in enumerate(model.layers)]
    try:
        out = fn()
    finally:
        for h in handles:
            h.remove()
    return calls, out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_restart_skips_earlier_layers_and_positions(tiny_model, arch):
    m = tiny_model(arch)
    with torch.no_grad():
        kv = new_kv_cache(m)
        full = run_to_final(m, TOKS, kv_cache=kv)
        resid = capture(m, TOKS, ["blocks.2.hook_resid_pre"])["blocks.2.hook_resid_pre"]
        calls, out = _count_block_calls(m, lambda: run_to_final(m, TOKS, restart=Restart(2, resid)))
        assert calls == [2]
        assert torch.allclose(out, full, atol=1e-5)
        past = [(k[:, :, :5], v[:, :, :5]) for k, v in kv_tensors(kv)]
        r1 = resid_at(m, 1)[:, 5:]
        calls, out = _count_block_calls(m, lambda: run_to_final(m, TOKS, restart=Restart(1, r1, 5, past)))
        assert calls == [1, 2] and out.shape[1] == 3
        assert torch.allclose(out, full[:, 5:], atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_last_mlp_runs_only_at_read_positions(tiny_model, arch):
    m = tiny_model(arch)
    last = f"blocks.{m.n_layers - 1}.hook_mlp_out"
    pos = torch.randint(0, TOKS.shape[1], (TOKS.shape[0], 2))
    rows = torch.arange(TOKS.shape[0])[:, None]
    shapes, hooked = [], []
    mlp = m.bridge.blocks[m.n_layers - 1].mlp
    handle = mlp.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            full = run_to_final(m, TOKS)
            shapes.clear()
            part = run_to_final(m, TOKS, [(last, lambda x: hooked.append(x.clone()))], read_positions=pos)
            again = run_to_final(m, TOKS)
    finally:
        handle.remove()
    assert shapes[0] == (TOKS.shape[0], 2, m.d_model)  # the MLP saw the read positions only
    assert torch.allclose(part[rows, pos], full[rows, pos], atol=1e-5)
    assert torch.equal(again, full)  # the MLP is restored afterwards
    # a hook inside it sees every position: the MLP's output where it ran, zeros elsewhere
    (seen,) = hooked
    assert seen.shape == (TOKS.shape[0], TOKS.shape[1], m.d_model)
    ran = torch.zeros(TOKS.shape, dtype=torch.bool)
    ran[rows, pos] = True
    mlp_out = capture(m, TOKS, [last])[last]
    assert torch.allclose(seen[ran], mlp_out[ran], atol=1e-5) and not seen[~ran].any()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_transcoder_at_last_mlp_with_read_positions(tiny_model, ioi_pairs, arch):
    """A transcoder spliced at the last block's MLP reads the residual stream before the MLP at
    every position and writes the MLP's output: with the MLP run at the read positions only,
    forward passes and latent patches give the values of the all-positions path."""
    from circuitlab.engine.forward import metric_per_prompt
    from circuitlab.sparse.base import config_class, make_coder
    from circuitlab.sparse.splice import splice

    m = tiny_model(arch)
    L = m.n_layers - 1
    torch.manual_seed(0)
    tc = make_coder(config_class("relu")(d_in=m.d_model, d_sae=32, d_out=m.d_model,
                                         hooks_in=(f"blocks.{L}.hook_resid_mid",),
                                         hooks_out=(f"blocks.{L}.hook_mlp_out",)))
    pos = torch.tensor([[7, 2], [1, 7]])
    rows = torch.arange(2)[:, None]

    def bump(f):
        return f + torch.arange(f.shape[-1], dtype=f.dtype) / f.shape[-1]

    with torch.no_grad():
        plain = run_to_final(m, TOKS)
        with splice(m, [tc]) as sp:
            lat = sp.latent_hooks[0]
            full = run_to_final(m, TOKS, [(lat, bump)])
            part = run_to_final(m, TOKS, [(lat, bump)], read_positions=pos)
    assert torch.allclose(part[rows, pos], full[rows, pos], atol=1e-5)
    assert (full - plain).abs().max() > 1e-2  # the splice and the patch act

    task = cl.tasks.from_pairs(m, ioi_pairs)
    T = task.clean_tokens.shape[1]
    nodes = [Node(L, "latents", unit=u, pos=p) for p in range(T) for u in (0, 17)]
    with splice(m, [tc]) as sp:
        lat = sp.latent_hooks[0]
        source = {lat: capture(m, task.clean_tokens, [lat])[lat] + 3.0}  # far from the base values
        run = patch_nodes(m, task.corrupt_tokens, source, nodes, task.metric, skip_noops=False)
        ref = []
        for n in nodes:
            def put(f, n=n):
                f = f.clone()
                f[:, n.pos, n.unit] = source[lat][:, n.pos, n.unit]
                return f

            ref.append(metric_per_prompt(m, task.corrupt_tokens, task.metric, [(lat, put)]))
    ref = torch.stack(ref).to(run.per_prompt.dtype)
    assert torch.allclose(run.per_prompt, ref, atol=1e-5)
    assert (ref - run.baseline).abs().max() > 1e-4


def resid_at(m, layer):
    return capture(m, TOKS, [f"blocks.{layer}.hook_resid_pre"])[f"blocks.{layer}.hook_resid_pre"]


def test_patch_sweep_restarts_at_patched_layer(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    nodes = [Node(2, "resid_pre", pos=p) for p in range(task.clean_tokens.shape[1])]
    source = capture(gpt2, task.clean_tokens, ["blocks.2.hook_resid_pre"])
    calls, run = _count_block_calls(gpt2, lambda: patch_nodes(gpt2, task.corrupt_tokens, source, nodes, task.metric,
                                                               max_patches_per_pass=4))
    # one base run over all 3 blocks, then every patched pass runs block 2 only
    assert calls[:3] == [0, 1, 2] and set(calls[3:]) == {2}
    assert len(calls[3:]) == run.forward_passes


@pytest.mark.parametrize("family", ["resid_pre", "heads", "neurons"])
def test_noop_patches_skipped_with_the_same_values(gpt2, ioi_pairs, family):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    T = task.clean_tokens.shape[1]
    first_diff = int((task.clean_tokens != task.corrupt_tokens).any(0).nonzero()[0])
    assert first_diff > 0  # the prompts share a prefix: patches there change nothing
    extra = {"heads": dict(head=1), "neurons": dict(unit=3)}.get(family, {})
    nodes = [Node(l, family, pos=p, **extra) for l in range(gpt2.n_layers) for p in range(T)]
    source = capture(gpt2, task.clean_tokens, sorted({n.hook for n in nodes}))
    fast = patch_nodes(gpt2, task.corrupt_tokens, source, nodes, task.metric)
    slow = patch_nodes(gpt2, task.corrupt_tokens, source, nodes, task.metric, skip_noops=False)
    assert slow.skipped == 0 and fast.skipped >= gpt2.n_layers * first_diff
    assert fast.forward_passes <= slow.forward_passes
    assert torch.allclose(fast.per_prompt, slow.per_prompt, atol=1e-5)
    skipped_rows = [i for i, n in enumerate(nodes) if n.pos < first_diff]
    assert torch.equal(fast.per_prompt[skipped_rows], fast.baseline.expand(len(skipped_rows), -1))


def test_memory_cap_changes_chunk_not_values(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    small = chunk_size_for(gpt2, 3, 15, 1, 10_000, memory_bytes=1)
    big = chunk_size_for(gpt2, 3, 15, 1, 10_000, memory_bytes=1 << 30)
    assert small == 1 and big > 16
    a = cl.patch(gpt2, task, "heads", memory_bytes=1, max_patches_per_pass=10_000, progress=False)
    b = cl.patch(
        gpt2, task, "heads", memory_bytes=1 << 30, max_patches_per_pass=10_000, max_waste=float("inf"), progress=False
    )
    assert a.meta["chunk_size"] == 1 and b.meta["chunk_size"] > 16
    assert a.cost.forward_passes > b.cost.forward_passes
    assert torch.allclose(a.values, b.values, atol=1e-5)


def test_no_hooks_left_after_sweeps_and_errors(gpt2, ioi_pairs):
    before = count_hooks(gpt2.bridge)
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    cl.patch(gpt2, task, "attn_out", progress=False)
    with pytest.raises(ValueError):
        cl.patch(gpt2, task, "heads", positions=[99], progress=False)
    assert count_hooks(gpt2.bridge) == before


def test_chunk_plan_limits_wasted_work():
    from circuitlab.engine.patching import plan_chunks

    # resid sweep order: (layer, pos) for 2 layers x 16 positions
    order = list(range(32))
    layer_of = [i // 16 for i in order]
    start_of = [i % 16 for i in order]
    chunks = plan_chunks(order, layer_of, start_of, 2, 16, cap=16, max_waste=0.15)
    assert sorted(sum(chunks, [])) == order
    for c in chunks:
        assert len({layer_of[i] for i in c}) == 1  # never mixes layers here
        l0, p0 = layer_of[c[0]], min(start_of[i] for i in c)
        spent = len(c) * (2 - l0) * (16 - p0)
        useful = sum((2 - layer_of[i]) * (16 - start_of[i]) for i in c)
        assert spent <= 1.15 * useful + 1e-9
    assert plan_chunks(order, layer_of, start_of, 2, 16, cap=64, max_waste=float("inf")) == [order]
