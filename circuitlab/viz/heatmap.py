"""Heatmaps of results: layers down, positions or heads across."""

from __future__ import annotations

from typing import Optional

from circuitlab.webpage import plot_text


def _axis_names(result, shape: tuple[int, ...]) -> tuple[list[str], list[str]]:
    """Row (layer) and column names read from the result's own node labels, so a result over
    a subset of layers or positions is labelled by the layers and positions it covers."""
    from circuitlab.engine.sites import Node

    rows, cols = [f"L{i}" for i in range(shape[0])], [f"{result.dims[1]} {j}" for j in range(shape[1])]
    if len(result.labels) != shape[0] * shape[1] * (shape[2] if len(shape) > 2 else 1):
        return rows, cols
    per_row = len(result.labels) // shape[0]
    per_col = per_row // shape[1]
    try:
        nodes = [Node.parse(label) for label in result.labels]
    except ValueError:
        return rows, cols
    rows = [f"L{nodes[i * per_row].layer}" for i in range(shape[0])]
    if result.dims[1] == "pos":
        cols = [f"pos {nodes[j * per_col].pos}" for j in range(shape[1])]
    return rows, cols


def result_heatmap(result, title: Optional[str] = None):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    v = result.values.detach().float().cpu()
    title = title or f"{result.method} · {result.sites} · {result.direction} · {result.metric}"
    lim = float(v.abs().max()) or 1.0
    common = dict(colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim)
    if v.dim() == 2:
        rows, cols = _axis_names(result, tuple(v.shape))
        fig = go.Figure(go.Heatmap(z=v.numpy(), **common, x=[plot_text(c) for c in cols], y=rows))
    elif v.dim() == 3:  # [layer, pos, head|unit]: one panel per layer
        n = v.shape[0]
        rows, _ = _axis_names(result, tuple(v.shape))
        fig = make_subplots(rows=1, cols=n, subplot_titles=rows, shared_yaxes=True)
        for i in range(n):
            fig.add_trace(go.Heatmap(z=v[i].numpy(), showscale=(i == n - 1), **common), row=1, col=i + 1)
        fig.update_xaxes(title_text=plot_text(result.dims[2]))
        fig.update_yaxes(title_text=plot_text(result.dims[1]), col=1)
    else:
        fig = go.Figure(go.Bar(x=[plot_text(l) for l in result.labels], y=v.flatten().numpy()))
    fig.update_layout(title=plot_text(title), yaxis_autorange="reversed")
    return fig
