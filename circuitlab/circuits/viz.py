"""Plotly views: the faithfulness-vs-size curve and a circuit diagram (layers bottom to top).

Strings shown by plotly are escaped; ``write_figure`` writes a view as a page that loads
plotly.js from its own folder (offline)."""

from __future__ import annotations

from typing import Optional

from circuitlab.circuits.circuit import Circuit, receiver_component
from circuitlab.webpage import plot_text, write_figure

__all__ = ["curve_figure", "circuit_figure", "write_figure"]


def curve_figure(curve, title: Optional[str] = None):
    import plotly.graph_objects as go

    x = curve.sizes
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x + x[::-1], y=curve.hi + curve.lo[::-1], fill="toself", line=dict(width=0),
                             fillcolor="rgba(31,119,180,0.2)", name="95% bootstrap CI", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=curve.faithfulness, mode="lines+markers", name="F(top-n)"))
    fig.add_hline(y=curve.threshold, line_dash="dash", annotation_text=f"F = {curve.threshold}")
    if curve.smallest is not None:
        fig.add_vline(x=curve.smallest, line_dash="dot", annotation_text=f"smallest: {curve.smallest}")
    title = title or f"Faithfulness vs circuit size ({curve.kind}, {curve.ablation} ablation)"
    fig.update_layout(title=plot_text(title),
                      xaxis_title=f"{curve.kind} kept (top-n by |score|)", yaxis_title="faithfulness F",
                      xaxis_type="log" if max(x) > 50 else "linear", template="plotly_white")
    return fig


def _xy(component: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    if component == "embed":
        return (n_heads) / 2, -1
    if component == "logits":
        return (n_heads) / 2, n_layers
    layer, rest = component[1:].split(".", 1)
    if rest == "mlp":
        return n_heads + 0.5, int(layer) + 0.5
    return int(rest[1:]), int(layer)


def circuit_figure(circuit: Circuit, n_layers: int, n_heads: int, scores=None, title: Optional[str] = None):
    """Nodes at (head, layer) (MLPs to the right, half a layer up); edges coloured by the sign of
    their score (blue +, red -) with width by magnitude; hover shows the q/k/v input."""
    import plotly.graph_objects as go

    values = {}
    if scores is not None and hasattr(scores, "edges"):
        values = dict(scores.edges())
    fig = go.Figure()
    if circuit.kind == "edges":
        top = max([abs(values.get(e.split("@")[0], 0.0)) for e in circuit.items] + [1e-12])
        for e in sorted(circuit.items):
            s, r = e.split("@")[0].split("->")
            (x0, y0), (x1, y1) = _xy(s, n_layers, n_heads), _xy(receiver_component(r), n_layers, n_heads)
            v = values.get(e.split("@")[0], 0.0)
            fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="text",
                                     text=plot_text(f"{e}: {v:+.4g}"), showlegend=False,
                                     line=dict(color="#1f77b4" if v >= 0 else "#d62728", width=1 + 5 * abs(v) / top)))
    comps = sorted(circuit.nodes() | ({"logits"} if circuit.kind == "edges" else set()))
    xs, ys = zip(*[_xy(c, n_layers, n_heads) for c in comps]) if comps else ((), ())
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", text=[plot_text(c) for c in comps],
                             textposition="top center", marker=dict(size=14, color="#444"), showlegend=False,
                             hoverinfo="text"))
    fig.update_layout(title=plot_text(title or f"Circuit ({len(circuit)} {circuit.kind})"), template="plotly_white",
                      xaxis=dict(title="head (MLP at right)", zeroline=False),
                      yaxis=dict(title="layer", zeroline=False))
    return fig
