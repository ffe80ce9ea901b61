"""Estimators against ground truth: exact patching, brute force, invariants."""

import pytest
import torch

import circuitlab as cl
from circuitlab.engine.forward import metric_per_prompt, run_to_final
from circuitlab.engine.gradients import GradGates, forward_for_grads
from circuitlab.methods import qk_fix
from circuitlab.methods.relp_rules import relp_hooks
from tiny import save_linear_gpt2, write_tokenizer


def same_task(model, pairs):
    return cl.tasks.from_pairs(model, [dict(p, corrupt=p["clean"]) for p in pairs])


@pytest.mark.parametrize("method", ["atp", "atp*", "relp", "ig"])
@pytest.mark.parametrize("sites", ["resid_pre", "heads", "mlp_out"])
def test_zero_when_clean_equals_corrupt(gpt2, ioi_pairs, method, sites):
    r = cl.patch(gpt2, same_task(gpt2, ioi_pairs), sites, method=method)
    assert r.values.abs().max() < 1e-6


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    """GPT-2 made linear: identity MLP activation, constant attention patterns (no q/k
    weights), and LayerNorm whose epsilon dwarfs the variance (a constant scale; the gain is
    raised by sqrt(eps) to keep activations at their usual size)."""
    d = save_linear_gpt2(tmp_path_factory.mktemp("linear"))
    return cl.load(str(d), device="cpu", dtype=torch.float64)  # float64: differences exact to 1e-12


@pytest.mark.parametrize("sites", ["resid_pre", "attn_out", "mlp_out", "heads", "v"])
def test_linear_model_estimators_equal_exact(linear_model, ioi_pairs, sites):
    task = cl.tasks.from_pairs(linear_model, ioi_pairs)
    exact = cl.patch(linear_model, task, sites, progress=False)
    scale = exact.values.abs().max()
    assert scale > 0
    for method in ("atp", "relp"):
        est = cl.patch(linear_model, task, sites, method=method)
        assert torch.allclose(est.values, exact.values, atol=1e-5 * scale, rtol=1e-5), method


def _brute_force_row(scores_row, t, mask_len):
    return torch.softmax(scores_row[..., :mask_len], -1)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_qk_fix_equals_brute_force_softmax(tiny_model, ioi_pairs, arch):
    """The closed forms equal recomputing the softmax with one query or one key replaced."""
    m = tiny_model(arch)
    task = cl.tasks.from_pairs(m, ioi_pairs)
    l = 1
    qn, kn = qk_fix.rotated_names(m, l)
    pat = f"blocks.{l}.attn.hook_pattern"
    from circuitlab.engine.cache import capture

    src = capture(m, task.clean_tokens, [qn, kn])
    run = forward_for_grads(m, task.corrupt_tokens, task.metric, [qn, kn, pat])
    G = run.grads()[pat].float()
    A = run.acts[pat].detach().float()
    qb, kb = run.acts[qn].detach(), run.acts[kn].detach()
    s = qk_fix.attn_scale(m, l)
    fast_q = qk_fix.query_effects(qb, src[qn], kb, A, G, s)
    fast_k = qk_fix.key_effects(qb, kb, src[kn], A, G, s)
    group = qb.shape[2] // kb.shape[2]
    T = A.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    def effect(q, k, h):
        sc = s * torch.einsum("btd,bjd->btj", q[:, :, h].float(), k[:, :, h // group].float())
        Anew = sc.masked_fill(~causal, float("-inf")).softmax(-1)
        return ((Anew - A[:, h]) * G[:, h]).sum((-1, -2))  # [B]

    for h in range(qb.shape[2]):
        for t in (3, 7, 11):
            q2 = qb.clone()
            q2[:, t] = src[qn][:, t]
            assert torch.allclose(effect(q2, kb, h), fast_q[:, t, h], atol=1e-5)
    for hk in range(kb.shape[2]):
        for j in (2, 4, 11):
            k2 = kb.clone()
            k2[:, j, hk] = src[kn][:, j, hk]
            brute = sum(effect(qb, k2, h) for h in range(hk * group, (hk + 1) * group))
            assert torch.allclose(brute, fast_k[:, j, hk], atol=1e-5)


def test_graddrop_with_open_gates_equals_atp(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(3)]
    gates = GradGates()
    gate_names = [f"blocks.{l}.hook_{s}" for l in range(3) for s in ("attn_out", "mlp_out")]
    gated = forward_for_grads(gpt2, task.corrupt_tokens, task.metric, names, gates.hooks(gate_names)).grads()
    plain = forward_for_grads(gpt2, task.corrupt_tokens, task.metric, names).grads()
    for n in names:
        assert torch.equal(gated[n], plain[n])
    gates.scale = {"blocks.1.hook_attn_out": 0.0, "blocks.1.hook_mlp_out": 0.0}
    dropped = forward_for_grads(gpt2, task.corrupt_tokens, task.metric, names, gates.hooks(gate_names)).grads()
    assert torch.equal(dropped["blocks.2.hook_resid_pre"], plain["blocks.2.hook_resid_pre"])  # after the gate
    assert not torch.allclose(dropped["blocks.0.hook_resid_pre"], plain["blocks.0.hook_resid_pre"])


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_graddrop_from_residual_gradients_equals_gated_backward_passes(tiny_model, ioi_pairs, arch, monkeypatch):
    """GradDrop's rank score computed from the residual stream's gradients (one backward pass per
    layer, starting at that layer) equals the brute force: one full backward pass per layer with
    that layer's attention and MLP outputs gated to zero."""
    from circuitlab.methods import atp_star

    model = tiny_model(arch)
    task = cl.tasks.from_pairs(model, ioi_pairs)
    families = ["resid_pre", "attn_out", "mlp_out", "heads", "k", "q_all", "neurons"]
    at = {"positions": ["END", "S2"]}
    calls = []
    dropped = atp_star._dropped_grads
    monkeypatch.setattr(atp_star, "_dropped_grads", lambda *a: calls.append(a[3]) or dropped(*a))
    fast = cl.patch(model, task, families, method="atp*", **at)
    assert calls == list(range(model.n_layers))  # the residual-gradient path ran, once per layer
    monkeypatch.setattr(atp_star, "_places", lambda model: {})  # no known places: every layer gated
    gated = cl.patch(model, task, families, method="atp*", **at)
    for fam in families:
        torch.testing.assert_close(fast[fam].values, gated[fam].values, atol=1e-6, rtol=1e-5)
        ref = gated[fam].extras["rank_score"]
        assert ref.abs().max() > 0, fam
        torch.testing.assert_close(fast[fam].extras["rank_score"], ref, atol=1e-6 * float(ref.abs().max()), rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_atp_star_families_sharing_one_pass_equal_separate_calls(tiny_model, ioi_pairs, arch):
    model = tiny_model(arch)
    task = cl.tasks.from_pairs(model, ioi_pairs)
    families = ["resid_pre", "attn_out", "heads", "k", "q_all"]
    shared = cl.patch(model, task, families, method="atp*")
    assert list(shared) == families
    for fam in families:
        alone = cl.patch(model, task, fam, method="atp*")
        assert shared[fam].labels == alone.labels
        assert torch.allclose(shared[fam].values, alone.values, atol=1e-6, rtol=1e-5), fam
        assert torch.allclose(shared[fam].extras["rank_score"], alone.extras["rank_score"], atol=1e-6, rtol=1e-5)
        assert shared[fam].cost.forward_passes == alone.cost.forward_passes == 2
        assert shared[fam].meta["shared_pass"] == families


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
@pytest.mark.parametrize("attention", ["pattern", "attnlrp"])
def test_relp_forward_bit_identical(tiny_model, ioi_pairs, arch, attention):
    m = tiny_model(arch)
    task = cl.tasks.from_pairs(m, ioi_pairs)
    with torch.no_grad():
        plain = run_to_final(m, task.clean_tokens)
    with torch.enable_grad():
        ruled = run_to_final(m, task.clean_tokens, relp_hooks(m, attention))
    assert torch.equal(plain, ruled.detach())


def test_relp_refuses_qk_with_pattern_rule(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    with pytest.raises(ValueError, match="RelP supports"):
        cl.patch(gpt2, task, "q", method="relp")
    r = cl.patch(gpt2, task, "k", method="relp", attention="attnlrp")
    assert r.values.abs().max() > 0


@pytest.mark.parametrize("variant", ["inputs", "activations"])
def test_ig_completeness_over_residual_cut(gpt2, ioi_pairs, variant):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    m = task.metric
    target = float(m.reduce(metric_per_prompt(gpt2, task.clean_tokens, m)[None]) -
                   m.reduce(metric_per_prompt(gpt2, task.corrupt_tokens, m)[None]))
    errs = []
    for steps in (2, 32):
        r = cl.patch(gpt2, task, "resid_pre", method="ig", steps=steps, variant=variant)
        errs.append(abs(float(r.values[0].sum()) - target))  # layer 0: a full cut for both variants
    assert errs[1] < errs[0] and errs[1] < 0.01 * abs(target)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "neox"])
def test_dla_sums_to_logit_difference(tiny_model, ioi_pairs, arch):
    m = tiny_model(arch)
    task = cl.tasks.from_pairs(m, ioi_pairs)
    for by in ("layer", "head", "neuron", "source"):
        r = cl.dla(m, task, by=by)
        assert abs(r.meta["total"] - r.baseline) < 1e-4 * max(1, abs(r.baseline)), by
    head, src = cl.dla(m, task, "head"), cl.dla(m, task, "source")
    assert torch.allclose(src.values.sum(-1), head.values, atol=1e-5)
    # against the real logits, computed independently
    from circuitlab.engine.forward import final_logits

    logits = final_logits(m, run_to_final(m, task.clean_tokens))
    b = torch.arange(len(task))
    ld = (logits[b, task.answer_pos, task.answer_ids] - logits[b, task.answer_pos, task.wrong_ids]).mean()
    assert abs(float(ld.detach()) - head.baseline) < 1e-5


def test_logit_lens_last_layer_is_the_model(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    lens = cl.logit_lens(gpt2, task)
    assert lens.values.shape == (4,)
    assert abs(float(lens.values[-1]) - cl.dla(gpt2, task).baseline) < 1e-5


def test_compare_and_cost_to_recall(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    exact = cl.patch(gpt2, task, "heads", progress=False)
    c = cl.compare(exact, exact, k=5)
    assert c["pearson"] == pytest.approx(1) and c["recall@5"] == 1 and c["verifications_to_recall"] == 5
    est = cl.patch(gpt2, task, "heads", method="atp*")
    c = cl.compare(est, exact, k=5)
    assert c["pearson"] > 0.9 and len(c["recall_curve"]) == exact.values.numel()
    with pytest.raises(ValueError, match="different nodes"):
        cl.compare(cl.patch(gpt2, task, "resid_pre", method="atp"), exact)


def test_unknown_method_lists_supported(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    with pytest.raises(ValueError, match="valid: exact, atp, atp\\*, relp, ig"):
        cl.patch(gpt2, task, "heads", method="eap")


def test_planted_saturated_head_missed_by_atp_caught_by_atp_star(tmp_path):
    """Layer 0 head 0 attends to BOS with a saturated softmax on corrupted prompts; the clean
    key at position 3 would take all the attention. Plain AtP sees a zero gradient there."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from circuitlab.methods.atp_star import verify
    from tiny import VOCAB

    write_tokenizer(tmp_path)
    john = PreTrainedTokenizerFast.from_pretrained(str(tmp_path)).convert_tokens_to_ids("John")
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                    bos_token_id=0, eos_token_id=0))
    with torch.no_grad():
        E = hf.transformer.wte.weight
        E[0] = 0
        E[0, 0] = 1.0  # BOS along e0
        E[john] = 0
        E[john, 1] = 1.0  # John along e1
        W, bias = hf.transformer.h[0].attn.c_attn.weight, hf.transformer.h[0].attn.c_attn.bias
        W[:, 0:16] = 0
        bias[0:16] = 0
        bias[0] = 1.0  # head 0's query is constant
        W[:, 64:80] = 0
        bias[64:80] = 0
        W[0, 64], W[1, 64] = 10.0, 20.0  # its key scores BOS high and John higher
        W[:, 128:144] *= 20  # and its values matter
    hf.save_pretrained(tmp_path)
    model = cl.load(str(tmp_path), device="cpu")
    task = cl.tasks.from_pairs(model, [
        {"clean": "w1 w2 John w3 w4 w5 w6", "corrupt": "w1 w2 Anna w3 w4 w5 w6", "answer": " w7", "wrong": " w8"},
        {"clean": "w9 w2 John w3 w4 w5 w11", "corrupt": "w9 w2 Tom w3 w4 w5 w11", "answer": " w7", "wrong": " w8"}])
    exact = cl.patch(model, task, "k", progress=False)
    atp = cl.patch(model, task, "k", method="atp")
    star = cl.patch(model, task, "k", method="atp*")
    i = star.labels.index("L0.H0.k@3")
    truth = float(exact.flat[i])
    assert exact.top(1)[0][0] == "L0.H0.k@3"
    assert abs(float(atp.flat[i])) < 1e-3 * abs(truth)  # AtP misses it
    assert "L0.H0.k@3" not in [l for l, _ in atp.top(10)]
    assert int(star.extras["rank_score"].flatten().argmax()) == i  # AtP* ranks it first
    assert abs(float(star.flat[i])) > 0.5 * abs(truth)
    check = verify(model, task, star, n_verify=3, samples=32)
    assert check["verified"]["L0.H0.k@3"] == pytest.approx(truth, rel=1e-4)
    assert check["missed_effect_bound"] < abs(truth)


@pytest.mark.parametrize("name", ["gpt2-zoo", "llama-zoo"])
def test_dla_sums_with_trained_final_norm(name):
    """Random models have final-norm gain 1 and bias 0, which hides a bias read through the gain;
    the trained zoo models do not."""
    model = cl.load(name, device="cpu", dtype="float64")
    from circuitlab.models.weights import final_norm

    gain, bias = final_norm(model)
    assert (gain - 1).abs().max() > 0.05 and (bias is None or bias.abs().max() > 0.01)
    task = cl.tasks.ioi(model, n=8, seed=1)
    for by in ("layer", "head", "neuron", "source"):
        r = cl.dla(model, task, by=by)
        assert abs(r.meta["total"] - r.baseline) < 1e-6 * max(1.0, abs(r.baseline)), by
