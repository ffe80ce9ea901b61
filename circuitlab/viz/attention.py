"""Attention-pattern views for any heads and prompts."""

from __future__ import annotations

from typing import Sequence

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.sites import hook_name
from circuitlab.webpage import plot_text


def attention_figure(model, prompt: str | torch.Tensor, heads: Sequence[tuple[int, int]], title: str = ""):
    """One heatmap per (layer, head): query rows, key columns, labelled by token."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    toks = model.to_tokens(prompt) if isinstance(prompt, str) else prompt
    toks = toks[None] if toks.dim() == 1 else toks[:1]
    names = sorted({hook_name("pattern", l) for l, _ in heads})
    c = capture(model, toks, names)
    words = [plot_text(f"{i}:{t}") for i, t in enumerate(model.tokenizer.convert_ids_to_tokens(toks[0].tolist()))]
    fig = make_subplots(rows=1, cols=len(heads), subplot_titles=[f"L{l}.H{h}" for l, h in heads])
    for i, (l, h) in enumerate(heads):
        A = c[hook_name("pattern", l)][0, h].float().cpu().numpy()
        hover = "query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"
        fig.add_trace(go.Heatmap(z=A, x=words, y=words, colorscale="Blues", zmin=0, zmax=1,
                                 showscale=i == len(heads) - 1, hovertemplate=hover), row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=plot_text(title or "attention patterns"), height=420 + 8 * len(words))
    return fig


def head_scores_figure(result):
    """Heatmaps of head-detector scores, one panel per kind."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    kinds = result.meta["kinds"]
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=kinds)
    for i in range(len(kinds)):
        # one shared scale, so the single colour bar is true for every panel (attention scores lie
        # in [0, 1], copying scores in [-1, 1])
        fig.add_trace(go.Heatmap(z=result.values[i].numpy(), colorscale="RdBu", zmid=0, zmin=-1, zmax=1,
                                 showscale=i == len(kinds) - 1,
                                 x=[f"H{h}" for h in range(result.values.shape[2])],
                                 y=[f"L{l}" for l in range(result.values.shape[1])]), row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="Head detectors")
    return fig
