import json

import pytest
import torch

import circuitlab as cl
from circuitlab.result import Result


def test_padding_and_answer_positions(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    assert task.lengths.tolist() == [15, 15, 14]
    assert task.clean_tokens.shape == (3, 15)
    assert task.roles["END"].tolist() == [14, 14, 13]
    assert task.roles["S2"].tolist() == [11, 11, 11]
    # right padding: real tokens are unaffected by the pad, so each prompt's logits equal its solo run
    from circuitlab.engine.forward import metric_per_prompt

    batch = metric_per_prompt(gpt2, task.clean_tokens, task.metric)
    for i in range(3):
        solo = task.subset([i])
        assert torch.allclose(metric_per_prompt(gpt2, solo.clean_tokens, solo.metric), batch[i:i + 1], atol=1e-5)


def test_jsonl_input(gpt2, ioi_pairs, tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in ioi_pairs))
    a = cl.tasks.from_pairs(gpt2, str(p))
    b = cl.tasks.from_pairs(gpt2, ioi_pairs)
    assert torch.equal(a.clean_tokens, b.clean_tokens)


def test_normalized_metric(gpt2, ioi_pairs):
    from circuitlab.engine.forward import metric_per_prompt

    task = cl.tasks.from_pairs(gpt2, ioi_pairs, metric="normalized_logit_diff")
    m = task.metric
    clean = m.reduce(metric_per_prompt(gpt2, task.clean_tokens, m)[None])
    corrupt = m.reduce(metric_per_prompt(gpt2, task.corrupt_tokens, m)[None])
    assert torch.allclose(clean, torch.ones(1)) and torch.allclose(corrupt, torch.zeros(1), atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    ([], "empty task"),
    ([{"clean": "when Mary went", "corrupt": "when Mary and John went", "answer": " Mary", "wrong": " John"}],
     "equal lengths"),
    ([{"clean": "when Mary went", "corrupt": "when John went", "answer": " Mary John", "wrong": " John"}], "not one"),
    ([{"clean": "when Mary went", "corrupt": "when John went", "answer": " Mary"}], "lacks"),
])
def test_bad_tasks(gpt2, bad, match):
    with pytest.raises(ValueError, match=match):
        cl.tasks.from_pairs(gpt2, bad)


def test_bad_sites_layers_heads(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    with pytest.raises(ValueError, match="unknown sites"):
        cl.patch(gpt2, task, "mlp_inside", progress=False)
    with pytest.raises(ValueError, match="layer 7 out of range"):
        cl.patch(gpt2, task, "resid_pre", layers=[7], progress=False)
    with pytest.raises(ValueError, match="unknown direction"):
        cl.patch(gpt2, task, "resid_pre", direction="sideways", progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        cl.patch(gpt2, task, "resid_pre", method="magic", progress=False)
    from circuitlab.engine.patching import validate_nodes
    from circuitlab.engine.sites import Node

    with pytest.raises(ValueError, match="head 9 out of range"):
        validate_nodes(gpt2, [Node(0, "heads", head=9)], 10)


def test_result_save_load_frame_plot(gpt2, ioi_pairs, tmp_path):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    r = cl.patch(gpt2, task, "heads", progress=False)
    assert r.values.shape == (3, 15, 4) and len(r.labels) == 180 and r.labels[0] == "L0.H0@0"
    assert r.cost.forward_passes > 0 and r.cost.seconds > 0
    path = r.save(tmp_path / "res")
    back = Result.load(path)
    assert torch.equal(back.values, r.values) and back.labels == r.labels and back.baseline == r.baseline
    df = r.to_frame()
    assert list(df.columns[:5]) == ["node", "value", "layer", "pos", "head"] and len(df) == 180
    fig = r.plot()
    assert len(fig.data) == 3  # one panel per layer
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def test_loading_a_non_safetensors_result(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        Result.load(tmp_path / "x")


def test_base_and_source_follow_the_direction(gpt2, ioi_pairs):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    base, src = task.base_and_source("denoising")
    assert base is task.corrupt_tokens and src is task.clean_tokens
    base, src = task.base_and_source("noising")
    assert base is task.clean_tokens and src is task.corrupt_tokens
    with pytest.raises(ValueError, match="unknown direction 'forward'; use 'denoising'"):
        task.base_and_source("forward")
