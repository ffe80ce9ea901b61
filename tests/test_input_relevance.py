"""Input-token relevance: IG against Captum, completeness, LRP conservation, ALTI on planted models.

Ground truths: Captum's IntegratedGradients / LayerIntegratedGradients on the bare Hugging Face
module of gpt2-zoo (float64); IG's completeness (scores add up to output(input) - output(baseline)
as the steps grow); LRP conservation on bias-free models (exact) and the bias share it loses
otherwise; ALTI on a planted one-layer model whose contributions have a closed form, and its
decomposition rebuilding every family's own attention output.
"""

from __future__ import annotations

import json

import pytest
import torch

import circuitlab as cl
from circuitlab.engine.forward import metric_per_prompt
from circuitlab.methods.input_relevance import alti, contributions, input_relevance, rollout
from circuitlab.zoo import model_dir

captum_attr = pytest.importorskip("captum.attr")


# ------------------------------------------------------------------ integrated gradients vs Captum


@pytest.fixture(scope="module")
def zoo64():
    """gpt2-zoo in float64 twice: through circuitlab, and as the bare Hugging Face module."""
    from transformers import AutoModelForCausalLM

    folder = model_dir("gpt2-zoo")
    m = cl.load("gpt2-zoo", device="cpu", dtype=torch.float64)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float64, attn_implementation="eager").eval()
    return m, hf, cl.tasks.ioi(m, n=3)


def _logit_diff(hf, task, by_ids: bool):
    """inputs (embeddings or ids) -> logit(answer) - logit(wrong) per row; rows cycle over prompts."""
    last, ans, wrong = task.answer_pos, task.answer_ids, task.wrong_ids
    B = len(last)

    def f(x):
        logits = (hf(input_ids=x) if by_ids else hf(inputs_embeds=x)).logits
        r = torch.arange(x.shape[0]) % B
        lg = logits[torch.arange(x.shape[0]), last[r]]
        return lg.gather(1, ans[r][:, None])[:, 0] - lg.gather(1, wrong[r][:, None])[:, 0]

    return f


def _float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    return old


@pytest.mark.parametrize("baseline", ["zero", "mean", "pad", "corrupt"])
def test_ig_matches_captum(zoo64, baseline):
    """zero / mean: IntegratedGradients on inputs_embeds from that baseline (BOS kept);
    pad / corrupt: LayerIntegratedGradients at the token embedding from baseline token ids."""
    m, hf, task = zoo64
    steps = 8  # right Riemann with 8 steps: Captum's float32 step sizes are exact
    ours = input_relevance(m, task, "ig", baseline=baseline, steps=steps, rule="right")
    ids = task.clean_tokens
    wte = hf.get_input_embeddings()
    old = _float64_default()
    try:
        if baseline in ("zero", "mean"):
            x = wte(ids).detach()
            x0 = torch.zeros_like(x) if baseline == "zero" else wte.weight.mean(0).detach().expand_as(x).clone()
            x0[:, 0] = x[:, 0]
            ref = captum_attr.IntegratedGradients(_logit_diff(hf, task, False)).attribute(
                x, baselines=x0, n_steps=steps, method="riemann_right")
        else:
            base_ids = task.corrupt_tokens if baseline == "corrupt" else torch.full_like(ids, m.tokenizer.pad_token_id)
            base_ids[:, 0] = ids[:, 0]
            ref = captum_attr.LayerIntegratedGradients(_logit_diff(hf, task, True), wte).attribute(
                ids, baselines=base_ids, n_steps=steps, method="riemann_right")
    finally:
        torch.set_default_dtype(old)
    ref = ref.sum(-1)
    real = torch.arange(ids.shape[1])[None] < task.lengths[:, None]
    err = float((ours.scores - ref * real).abs().max())
    assert float(ref.abs().max()) > 0.1 and err < 1e-9 * float(ref.abs().max()), err


def test_ig_completeness_gap_shrinks_with_steps(zoo64):
    m, _, task = zoo64
    gaps = [float(input_relevance(m, task, "ig", baseline="zero", steps=s).gap.abs().max()) for s in (4, 16, 64)]
    r = input_relevance(m, task, "ig", baseline="zero", steps=128)  # measured gaps: 23, 0.87, 2.4e-4, 1e-9
    assert gaps[0] > gaps[1] > gaps[2] > float(r.gap.abs().max()), gaps
    assert float(r.gap.abs().max()) < 1e-6 * float(r.total.abs().max())
    clean = metric_per_prompt(m, task.clean_tokens, task.metric)
    assert torch.allclose(torch.tensor(r.meta["output_input"], dtype=torch.float64), clean, atol=1e-10)


def test_corrupt_baseline_total_is_the_metric_change(zoo64):
    m, _, task = zoo64
    r = input_relevance(m, task, "ig", baseline="corrupt", steps=16)
    clean = metric_per_prompt(m, task.clean_tokens, task.metric)
    corrupt = metric_per_prompt(m, task.corrupt_tokens, task.metric)
    assert torch.allclose(r.total, (clean - corrupt).double(), atol=1e-10)
    assert float(r.gap.abs().max()) < 1e-6 * float(r.total.abs().max())
    unchanged = task.clean_tokens == task.corrupt_tokens  # IG puts nothing on tokens the baseline shares
    assert float(r.scores[unchanged].abs().max()) == 0.0


def test_node_ig_with_a_baseline_is_input_relevance_at_the_first_residual(zoo64):
    """cl.patch(method='ig', baseline='zero') at L0.resid_pre: the source minus baseline there is
    the token embedding difference, the gradient the embedding's, so the node values are the
    input-relevance scores (averaged over prompts)."""
    m, _, task = zoo64
    nodes = cl.patch(m, task, "resid_pre", method="ig", baseline="zero", steps=8, layers=[0])
    tokens = input_relevance(m, task, "ig", baseline="zero", steps=8, rule="right")
    assert nodes.meta["baseline"] == "zero"
    assert torch.allclose(nodes.values[0], tokens.scores.mean(0), atol=1e-10)
    default = cl.patch(m, task, "resid_pre", method="ig", steps=8, layers=[0])
    assert not torch.allclose(default.values, nodes.values)  # the corrupted prompt, as before
    # interpolating a full cut's activations from the zero-embedding run: complete (measured 6e-10)
    cut = cl.patch(m, task, "resid_pre", method="ig", baseline="zero", variant="activations", steps=64,
                   rule="gauss-legendre", layers=[2])
    assert abs(float(cut.values.sum()) - float(tokens.total.mean())) < 1e-6 * float(tokens.total.abs().max())


def test_mean_baseline_over_a_data_source(zoo64):
    from circuitlab.data import documents, pad_documents
    from circuitlab.methods.ig import MEAN_CTX, MEAN_DOCS, mean_embedding

    m, _, _ = zoo64
    ids, lengths = pad_documents(m.tokenizer, documents("zoo", 0, MEAN_DOCS, MEAN_CTX), MEAN_CTX)
    W = m.bridge.original_model.get_input_embeddings().weight.detach()
    real = [int(t) for row, n in zip(ids, lengths) for t in row[1:int(n)]]
    expected = W[torch.tensor(real)].mean(0)
    assert torch.allclose(mean_embedding(m, "mean:zoo"), expected, atol=1e-12)
    assert torch.allclose(mean_embedding(m, "mean"), W.mean(0), atol=1e-12)


# ------------------------------------------------------------------ LRP conservation


def _tiny64(tiny_dir, arch: str, biases: str = "as saved"):
    """A tiny float64 model; ``biases='random'`` draws every bias (a fresh GPT-2's are zero)."""
    m = cl.load(str(tiny_dir(arch)), device="cpu", dtype=torch.float64)
    if biases == "random":
        torch.manual_seed(0)
        with torch.no_grad():
            for name, p in m.bridge.original_model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.3)
    return m


def test_relp_conserves_the_output_on_a_bias_free_model(tiny_dir, ioi_pairs):
    m = _tiny64(tiny_dir, "llama")
    task = cl.tasks.from_pairs(m, ioi_pairs)
    r = input_relevance(m, task, "relp")
    assert float(r.total.abs().min()) > 0.1
    # the LN rule divides by the norm scale in float32 (relp_rules), hence 1e-6, not 1e-12
    assert float(r.gap.abs().max()) < 1e-6 * float(r.total.abs().max())
    assert r.meta["position_relevance"] == [0.0] * len(task)  # rotary: nothing but the token enters
    lrp = input_relevance(m, task, "relp", attention="attnlrp")  # AttnLRP's rule does not conserve here
    assert float(lrp.gap.abs().max()) > 1e-3


def test_relp_on_gpt2_loses_exactly_the_bias_share(tiny_dir, ioi_pairs):
    """Without biases (a fresh GPT-2 has none), token and position relevance add up to the output;
    with them they do not."""
    for biases in ("as saved", "random"):
        m = _tiny64(tiny_dir, "gpt2", biases)
        task = cl.tasks.from_pairs(m, ioi_pairs)
        r = input_relevance(m, task, "relp")
        rest = r.gap - torch.tensor(r.meta["position_relevance"], dtype=torch.float64)
        scale = float(r.total.abs().max())
        assert float(torch.tensor(r.meta["position_relevance"]).abs().max()) > 1e-3 * scale
        if biases == "as saved":
            assert float(rest.abs().max()) < 1e-6 * scale
        else:
            assert float(rest.abs().max()) > 1e-3 * scale


# ------------------------------------------------------------------ ALTI


def test_contributions_of_disjoint_vectors_are_their_l1_shares():
    """Transformed vectors on disjoint coordinates add up to the output: the Manhattan distance
    to the output is |y| - |T_j|, so ALTI gives each its share of the L1 norm."""
    T = torch.zeros(1, 3, 6)
    T[0, 0, :2] = torch.tensor([1.0, -2.0])
    T[0, 1, 2:4] = torch.tensor([0.5, 0.5])
    T[0, 2, 4] = 4.0
    y = T.sum(1)
    c = contributions(T[None], y[None])[0, 0]
    assert torch.allclose(c, torch.tensor([3.0, 1.0, 4.0], dtype=torch.float64) / 8)
    T[0, 2] = -y[0]  # a vector pointing away from the output contributes nothing
    c = contributions(T[None], T.sum(1)[None])[0, 0]
    assert float(c[2]) == 0.0 and abs(float(c.sum()) - 1) < 1e-12


def test_rollout_is_the_product_of_the_layers():
    torch.manual_seed(0)
    C = torch.rand(3, 2, 5, 5).tril()
    C = C / C.sum(-1, keepdim=True)
    R = rollout(C)
    assert torch.allclose(R, C[2] @ C[1] @ C[0])
    assert torch.allclose(R.sum(-1), torch.ones(2, 5))


def _planted(tmp_path, n_layers: int, silent_layers=()):
    """A Llama with one-hot token embeddings (token t -> 2 e_(t mod 8) in 16 dims), Q = K = 0
    (uniform causal attention), V = identity, O = a shift of dims 0..7 to 8..15, no MLP: every
    transformed vector of layer 0 lies on its own coordinates. Layers in ``silent_layers`` have
    O = 0 (they add nothing)."""
    import transformers as tf

    from tiny import VOCAB, write_tokenizer

    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=4, num_hidden_layers=n_layers,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=16, max_position_embeddings=32,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    model = tf.LlamaForCausalLM(cfg)
    shift = torch.zeros(16, 16)
    shift[8:, :8] = torch.eye(8)  # y = W x (nn.Linear): dim k -> k + 8
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight[torch.arange(VOCAB), torch.arange(VOCAB) % 8] = 2.0
        model.lm_head.weight.normal_()
        for n in model.model.norm, *[b.input_layernorm for b in model.model.layers], \
                *[b.post_attention_layernorm for b in model.model.layers]:
            n.weight.fill_(1.0)
        for i, block in enumerate(model.model.layers):
            block.self_attn.v_proj.weight.copy_(torch.eye(16))
            block.self_attn.o_proj.weight.copy_(torch.zeros(16, 16) if i in silent_layers else shift)
    folder = tmp_path / f"planted{n_layers}"
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return cl.load(str(folder), device="cpu", dtype=torch.float64)


def test_alti_on_a_planted_one_layer_model(tmp_path):
    """x_i = 2 e_(k_i); attention writes A_ij * nu * e_(k_j + 8) with A_ij = 1 / (i + 1) and nu
    the RMS-normalised one-hot's value; all on separate coordinates, so
    C_ij = (A_ij nu + 2 [i = j]) / (nu + 2), and the one-layer rollout is C."""
    m = _planted(tmp_path, 1)
    tokens = torch.tensor([[0, 1, 2, 3, 4, 5]])
    a = alti(m, tokens)
    nu = 2.0 / (4.0 / 16 + 1e-6) ** 0.5
    T = tokens.shape[1]
    A = torch.tril(torch.ones(T, T, dtype=torch.float64)) / torch.arange(1, T + 1, dtype=torch.float64)[:, None]
    expected = (A * nu + 2 * torch.eye(T, dtype=torch.float64)) / (nu + 2)
    assert torch.allclose(a.contributions[0, 0], expected, atol=1e-12)
    assert torch.allclose(a.rollout[0], expected, atol=1e-12)
    assert a.reconstruction_error < 1e-12


def test_alti_rollout_composes_through_a_silent_layer(tmp_path):
    """Layer 1 writes nothing (O = 0): its matrix is the identity, and the two-layer rollout is
    layer 0's matrix."""
    m = _planted(tmp_path, 2, silent_layers=(1,))
    a = alti(m, torch.tensor([[0, 1, 2, 3, 4]]))
    assert torch.allclose(a.contributions[1, 0], torch.eye(5, dtype=torch.float64))
    assert torch.allclose(a.rollout[0], a.contributions[0, 0], atol=1e-12)
    m = _planted(tmp_path, 2, silent_layers=(0,))
    a = alti(m, torch.tensor([[0, 1, 2, 3, 4]]))
    assert torch.allclose(a.rollout[0], a.contributions[1, 0], atol=1e-12)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gemma2", "neox"])
def test_alti_rows_are_distributions_and_rebuild_attention(tiny_dir, ioi_pairs, arch):
    """Every family (biases, grouped-query attention, a post-attention norm, parallel blocks):
    the transformed vectors plus the bias rebuild the attention output, and each row of each
    layer's matrix and of the rollout is a causal distribution."""
    m = cl.load(str(tiny_dir(arch)), device="cpu", dtype=torch.float64)
    task = cl.tasks.from_pairs(m, ioi_pairs)
    a = alti(m, task.clean_tokens)
    # Gemma-2's post-attention RMSNorm computes in float32 even in a float64 model
    assert a.reconstruction_error < (1e-6 if arch == "gemma2" else 1e-10)
    for C in (*a.contributions, a.rollout):
        assert float(C.min()) >= 0
        assert torch.allclose(C.sum(-1), torch.ones_like(C.sum(-1)), atol=1e-12)
        assert float(C.triu(1).abs().max()) == 0.0
    r = input_relevance(m, task, "alti")
    rows = a.rollout[torch.arange(len(task)), task.answer_pos]
    assert torch.allclose(r.scores, rows) and torch.allclose(r.sums, torch.ones(len(task), dtype=torch.float64))


# ------------------------------------------------------------------ plain prompts, options, figures


def test_plain_prompts_explain_the_top_token_logit(zoo_model):
    m = zoo_model("gpt2-zoo")
    prompts = ["The capital of France is", "When Mary and John went to the store, John gave a drink to"]
    r = input_relevance(m, prompts, "relp")
    logits = [m.bridge(m.to_tokens(p)[None])[0, -1] for p in prompts]
    assert r.meta["targets"] == [m.tokenizer.decode([int(lg.argmax())]) for lg in logits]
    assert torch.allclose(r.total, torch.stack([lg.max() for lg in logits]).double().detach(), atol=1e-4)
    assert [len(t) for t in r.tokens] == [len(m.to_tokens(p)) for p in prompts]
    assert float(r.scores[0, len(r.tokens[0]):].abs().max()) == 0.0  # padding scores nothing
    fixed = input_relevance(m, prompts, "ig", target=" Paris", steps=8)
    paris = m.tokenizer.decode([m.token_id(" Paris")])
    assert fixed.meta["targets"] == [paris, paris] and fixed.output == f"logit of {paris!r}"


@pytest.mark.parametrize("call, match", [
    (dict(method="shap"), "unknown input-relevance method 'shap'"),
    (dict(method="ig", baseline="ones"), "unknown IG baseline 'ones'"),
    (dict(method="ig", baseline="mean:nosuchkind:x"), "baseline 'mean:nosuchkind:x'"),
    (dict(method="ig", stepz=4), "did you mean 'steps'"),
    (dict(method="ig", baseline="corrupt"), "needs a Task"),
    (dict(method="relp", attention="softmax"), "unknown attention rule"),
    (dict(method="ig", steps=0), "steps >= 1"),
])
def test_bad_input_is_refused(zoo_model, call, match):
    m = zoo_model("gpt2-zoo")
    with pytest.raises(ValueError, match=match):
        input_relevance(m, "The capital of France is", **call)


def test_target_is_for_plain_prompts_only(zoo_model):
    m = zoo_model("gpt2-zoo")
    with pytest.raises(ValueError, match="target is for plain prompts"):
        input_relevance(m, cl.tasks.ioi(m, n=2), "ig", target=" Paris")
    with pytest.raises(ValueError, match="2 entries for 1 prompts"):
        input_relevance(m, "The capital of France is", "ig", target=[" Paris", " Rome"])


def test_token_figure_and_page(zoo_model, tmp_path):
    from circuitlab.viz.tokens import completeness_rows, token_figure
    from circuitlab.webpage import plot_text

    m = zoo_model("gpt2-zoo")
    task = cl.tasks.ioi(m, n=2)
    runs = [input_relevance(m, task, "ig", baseline="corrupt", steps=8), input_relevance(m, task, "alti")]
    fig = token_figure(runs)
    heat = fig.data[0]
    assert list(heat.y) == ["0: ig (corrupt)", "0: alti", "1: ig (corrupt)", "1: alti"]
    n = len(runs[1].tokens[0])
    assert list(heat.text[1][:n]) == [plot_text(t) for t in runs[1].tokens[0]]  # '<bos>' shown, not parsed
    row = torch.tensor(heat.z[1][:n], dtype=torch.float64)  # rows scaled to their largest |score|
    assert torch.allclose(row, runs[1].scores[0, :n] / runs[1].scores[0, :n].abs().max())
    raw = token_figure(runs, normalize="none").data[0]
    assert torch.allclose(torch.tensor(raw.z[1][:n], dtype=torch.float64), runs[1].scores[0, :n])
    assert completeness_rows(runs)[1][:2] == ["ig (corrupt)", 0]
    path = runs[0].save_html(tmp_path / "relevance.html")
    html = path.read_text()
    assert "plotly-graph-div" in html and "What the scores add up to" in html
    other = input_relevance(m, cl.tasks.ioi(m, n=2, seed=5), "alti")
    with pytest.raises(ValueError, match="different prompts"):
        token_figure([runs[0], other])


def test_demo_section(zoo_model, tmp_path):
    from circuitlab.methods.input_relevance.demo import demo_section
    from circuitlab.viz.report import Report

    m = zoo_model("gpt2-zoo")
    report, summary = Report("demo"), {}
    demo_section(m, cl.tasks.ioi(m, n=2), report, tmp_path, "ioi", summary)
    heading, _, items = report.sections[0]
    assert heading == "ioi: input-token relevance" and hasattr(items[0], "to_html")
    gaps = summary["input_relevance_max_gap"]
    assert set(gaps) == {"ig (corrupt)", "ig (zero)", "relp (pattern)", "alti"}
    assert gaps["alti"] < 1e-6 and gaps["ig (corrupt)"] < 1e-3
    json.dumps(summary)


@pytest.mark.slow
def test_smollm2_relevance_is_complete_and_conserved():
    """SmolLM2-135M (a bias-free Llama): RelP conserves the logit difference, IG from the
    corrupted prompt is complete, ALTI rows are distributions."""
    from circuitlab.models import fetch

    if not fetch.is_fetched("smollm2-135m"):
        pytest.skip("smollm2-135m is not fetched (circuitlab models fetch smollm2-135m)")
    m = cl.load("smollm2-135m", device="cpu")
    task = cl.tasks.ioi(m, n=4)
    relp = input_relevance(m, task, "relp")
    assert float(relp.gap.abs().max()) < 1e-3 * float(relp.total.abs().max())
    ig = input_relevance(m, task, "ig", baseline="corrupt", steps=32)
    assert float(ig.gap.abs().max()) < 0.05 * float(ig.total.abs().max())
    al = input_relevance(m, task, "alti")
    assert torch.allclose(al.sums, torch.ones(len(task), dtype=torch.float64), atol=1e-6)
    assert al.meta["reconstruction_error"] < 1e-4


def test_chunked_runs_give_the_same_scores(gpt2, ioi_pairs):
    """max_rows splits the prompts into passes; prompts do not interact, so nothing changes."""
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    for method, kw, one in (("ig", dict(steps=4), dict(max_rows=4)), ("relp", {}, dict(max_rows=1)),
                            ("alti", {}, dict(max_rows=1))):
        whole = input_relevance(gpt2, task, method, **kw)
        split = input_relevance(gpt2, task, method, **kw, **one)
        assert torch.allclose(whole.scores, split.scores, atol=1e-5), method
        assert float(whole.scores.abs().max()) > 0
