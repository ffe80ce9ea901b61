import torch

from circuitlab.methods.head_detectors import head_scores, repeated_tokens
from circuitlab.viz.attention import attention_figure, head_scores_figure


def test_detector_scores_are_attention_means(gpt2):
    toks = repeated_tokens(gpt2, n=4, length=6)
    assert toks.shape == (4, 13) and torch.equal(toks[:, 1:7], toks[:, 7:])
    r = head_scores(gpt2, toks)
    assert r.values.shape == (4, 3, 4)
    assert (r.values[:3] >= 0).all() and (r.values[:3] <= 1).all()
    assert (r.values[3].abs() <= 1 + 1e-5).all()
    # brute force the previous-token score of L1.H2
    from circuitlab.engine.cache import capture

    A = capture(gpt2, toks, ["blocks.1.attn.hook_pattern"])["blocks.1.attn.hook_pattern"][:, 2]
    expect = torch.stack([A[:, t, t - 1] for t in range(7, 13)], 1).mean()
    assert torch.allclose(r.values[0, 1, 2], expect, atol=1e-6)
    assert len(head_scores_figure(r).data) == 4


def test_attention_figure(gpt2):
    fig = attention_figure(gpt2, "when Mary and John went to the store", [(0, 1), (2, 3)])
    assert len(fig.data) == 2 and fig.data[0].z.shape == (9, 9)
