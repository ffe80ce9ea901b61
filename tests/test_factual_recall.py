"""The factual-recall value-scaling study: the scale-1 run is the model's own, scale 0 is
zero-ablating the heads' values, and the head ranking is the brute-force per-head DLA."""

import pytest
import torch

import circuitlab as cl
from circuitlab.circuits.factual_recall import (ValueScalingConfig, answer_logits, rank_heads, value_scaling_study)
from circuitlab.engine.cache import capture
from circuitlab.engine.forward import metric_per_prompt
from circuitlab.engine.interventions import Intervention, intervene
from circuitlab.engine.sites import Node, hook_name
from circuitlab.models import weights


@pytest.fixture(scope="module")
def setup():
    model = cl.load("gpt2-zoo", device="cpu")
    task = cl.tasks.counterfact(model, n=6, seed=0, target="context")
    return model, task


def test_scale_one_is_the_model_and_scale_zero_ablates_values(setup):
    model, task = setup
    heads = [(1, 2), (2, 3)]
    rows = torch.arange(task.clean_tokens.shape[0])
    own = task.metric.per_prompt(answer_logits(model, task, [], 1.0)[:, None], rows)
    ref = metric_per_prompt(model, task.clean_tokens, task.metric)
    one = answer_logits(model, task, heads, 1.0)
    assert torch.equal(task.metric.per_prompt(one[:, None], rows), ref) and torch.equal(own, ref)
    zero = answer_logits(model, task, heads, 0.0)
    assert model.heads_in("v") == model.n_heads  # value head = query head on this model
    with intervene(model, [Intervention(Node(l, "v", head=h), "set", 0.0) for l, h in heads]):
        ablated = answer_logits(model, task, [], 1.0)
    assert torch.allclose(zero, ablated, atol=1e-5) and (zero - one).abs().max() > 1e-2


def test_dla_ranking_matches_brute_force(setup):
    model, task = setup
    st = value_scaling_study(model, ValueScalingConfig(n=6, top=3, scales=(1.0,)), task=task)
    L, H = model.n_layers, model.n_heads
    names = [hook_name("ln_final.scale")] + [hook_name("heads", l) for l in range(L)]
    c = capture(model, task.clean_tokens, names)
    b, pos = torch.arange(task.clean_tokens.shape[0]), task.answer_pos
    gain, _ = weights.final_norm(model)
    W_O, W_U = weights.W_O(model).double(), weights.W_U(model).double()
    d_u = W_U[:, task.answer_ids] - W_U[:, task.wrong_ids]  # [d_model, prompts]
    sigma = c[hook_name("ln_final.scale")][b, pos].double()  # [prompts, 1]
    brute = torch.zeros(L, H, dtype=torch.float64)
    for l in range(L):
        z = c[hook_name("heads", l)][b, pos].double()  # [prompts, head, d_head]
        for h in range(H):
            write = z[:, h] @ W_O[l, h]  # [prompts, d_model]
            write = write - write.mean(-1, keepdim=True)  # LayerNorm centres
            brute[l, h] = ((write / sigma * gain.double()) * d_u.T).sum(-1).mean()
    assert torch.allclose(st.dla.double(), brute, atol=1e-4)
    ctx, mem = rank_heads(brute, 3)
    assert [(l, h) for l, h, _ in st.context_heads] == [(l, h) for l, h, _ in ctx]
    assert [(l, h) for l, h, _ in st.memorised_heads] == [(l, h) for l, h, _ in mem]
    assert st.context_heads[0][2] > 0 > st.memorised_heads[0][2]


def test_study_rows_page_and_json(setup, tmp_path):
    model, task = setup
    st = value_scaling_study(model, ValueScalingConfig(n=6, top=2, scales=(0.0, 1.0, 4.0)), task=task)
    assert [r.scale for r in st.rows] == [0.0, 1.0, 4.0] and st.scaled == [(l, h) for l, h, _ in st.context_heads]
    rows = torch.arange(6)
    one = answer_logits(model, task, st.scaled, 1.0)
    diff = task.metric.per_prompt(one[:, None], rows)
    assert abs(st.rows[1].logit_diff - float(diff.mean())) < 1e-5
    assert st.rows[1].context_rate == float((one.argmax(-1) == task.answer_ids).float().mean())
    js, page = st.save(tmp_path)
    assert "scaling the value vectors" in page.read_text() and '"rows"' in js.read_text()
    with pytest.raises(ValueError, match="promotes"):
        ValueScalingConfig(promotes="both")


def test_value_scaling_command(tmp_path, capsys):
    import json

    from circuitlab import cli

    out = tmp_path / "vs"
    assert cli.main(["value-scaling", "--model", "gpt2-zoo", "--n", "3", "--top", "2", "--scales", "0,1",
                     "--out", str(out)]) == 0
    doc = json.loads((out / "value_scaling.json").read_text())
    assert [r["scale"] for r in doc["rows"]] == [0.0, 1.0] and len(doc["scaled"]) == 2
    assert (out / "value_scaling.html").exists()
    assert cli.main(["value-scaling", "--scales", "0,x", "--out", str(tmp_path / "bad")]) == 2
    assert "--scales" in capsys.readouterr().err and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_smollm2_value_scaling_moves_towards_the_context_answer(tmp_path):
    """SmolLM2-135M, split on this task: scale 1 is the model's own answers, and scaling up the
    top in-context heads gives the in-context answer at least as often."""
    model = cl.load("smollm2-135m")
    st = value_scaling_study(model, ValueScalingConfig(n=32, top=4, scales=(0.0, 1.0, 4.0, 8.0)))
    st.save(tmp_path)
    task = cl.tasks.counterfact(model, n=32, seed=0, target="context")
    own = answer_logits(model, task, [], 1.0).argmax(-1)
    rate = {r.scale: r.context_rate for r in st.rows}
    assert rate[1.0] == float((own == task.answer_ids).float().mean())
    assert st.context_heads[0][2] > 0 and max(rate[4.0], rate[8.0]) >= rate[1.0]
