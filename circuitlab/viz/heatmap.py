"""Heatmaps of results: layers down, positions or heads across."""

from __future__ import annotations

from typing import Optional

from circuitlab.webpage import plot_text


def result_heatmap(result, title: Optional[str] = None):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    v = result.values.detach().float().cpu()
    title = title or f"{result.method} · {result.sites} · {result.direction} · {result.metric}"
    lim = float(v.abs().max()) or 1.0
    common = dict(colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim)
    if v.dim() == 2:
        fig = go.Figure(go.Heatmap(z=v.numpy(), **common,
                                   x=[plot_text(f"{result.dims[1]} {i}") for i in range(v.shape[1])],
                                   y=[f"L{i}" for i in range(v.shape[0])]))
    elif v.dim() == 3:  # [layer, pos, head|unit]: one panel per layer
        n = v.shape[0]
        fig = make_subplots(rows=1, cols=n, subplot_titles=[f"L{i}" for i in range(n)], shared_yaxes=True)
        for i in range(n):
            fig.add_trace(go.Heatmap(z=v[i].numpy(), showscale=(i == n - 1), **common), row=1, col=i + 1)
        fig.update_xaxes(title_text=plot_text(result.dims[2]))
        fig.update_yaxes(title_text=plot_text(result.dims[1]), col=1)
    else:
        fig = go.Figure(go.Bar(x=[plot_text(l) for l in result.labels], y=v.flatten().numpy()))
    fig.update_layout(title=plot_text(title), yaxis_autorange="reversed")
    return fig
