"""A self-contained interactive HTML page of a pruned attribution graph (plotly, inline JS).

Nodes sit at (position, layer): token embeddings at the bottom, logits on top. Hover shows a
node's id, activation, influence and top activating corpus tokens; supernodes are drawn as
named groups (one legend entry each). Clicking a node highlights every path through it (its
ancestors and descendants and the kept edges between them); the page records the state on the
plot element (``data-clicked``, ``data-highlighted``) and in ``window.circuitlab``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from circuitlab.graphs.graph import Graph
from circuitlab.graphs.prune import Pruned, prune
from circuitlab.webpage import figure_html, page, plot_text, script_json, text, write_html

COLORS = {"feature": "#1f77b4", "error": "#999999", "token": "#2ca02c", "logit": "#d62728"}
DIV_ID = "graph"
DATA_ID = "graph-data"
"""Id of the script element holding the page's data as JSON (read by the click handler)."""


def page_nodes(graph: Graph, pruned: Pruned) -> tuple[list[int], list[tuple[int, int, float]]]:
    """(kept node indices, kept edges (src, dst, weight) between them), as the JSON export keeps them."""
    kept = set(pruned.node_mask.nonzero()[:, 0].tolist())
    dst, src = pruned.edge_mask.nonzero(as_tuple=True)
    edges = [(s, d, float(graph.adjacency[d, s])) for d, s in zip(dst.tolist(), src.tolist())
             if s in kept and d in kept]
    used = {s for s, _, _ in edges} | {d for _, d, _ in edges}
    nodes = [i for i in sorted(kept) if i in used or graph.kind(i) in ("token", "logit")]
    return nodes, edges


def _hover(graph: Graph, i: int, pruned: Pruned, tops: dict) -> str:
    nid = graph.node_id(i)
    lines = [f"<b>{plot_text(graph.label(i))}</b>", f"id {plot_text(nid)}"]
    k = graph.kind(i)
    if k == "feature":
        l, p, f, a = graph.feature_info(i)
        lines.append(f"layer {l} · feature {f} · pos {p} · activation {a:.3g}")
    if k != "logit":
        lines.append(f"influence {float(pruned.node_influence[i]):.3g} (cumulative {float(pruned.cumulative[i]):.3f})")
    if nid in tops and tops[nid]:
        lines.append("top tokens: " + plot_text(", ".join(tops[nid][:5])))
    return "<br>".join(lines)


def graph_figure(graph: Graph, pruned: Optional[Pruned] = None, supernodes: Sequence[tuple[str, Sequence[int]]] = (),
                 top_tokens: Optional[dict[str, list[str]]] = None, title: str = ""):
    """The plotly figure and the data the click handler needs."""
    import plotly.graph_objects as go

    pruned = pruned or prune(graph)
    tops = top_tokens or {}
    nodes, edges = page_nodes(graph, pruned)
    cells: dict = {}
    for i in nodes:
        l, p = graph.node_layer_pos(i)
        cells.setdefault((l, p), []).append(i)
    xy = {}
    for (l, p), members in cells.items():
        n = len(members)
        for j, i in enumerate(members):
            off = 0.0 if n == 1 else -0.38 + 0.76 * j / (n - 1)
            xy[i] = (p + off, l + 1)
    ex, ey = [], []
    for s, d, _ in edges:
        ex += [xy[s][0], xy[d][0], None]
        ey += [xy[s][1], xy[d][1], None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="rgba(120,120,120,0.35)", width=1),
                             hoverinfo="skip", name="edges", showlegend=False))
    fig.add_trace(go.Scatter(x=[], y=[], mode="lines", line=dict(color="#ff7f0e", width=3), hoverinfo="skip",
                             name="highlighted path", showlegend=False))
    infl = [float(pruned.node_influence[i]) for i in nodes]
    mx = max(infl) if infl and max(infl) > 0 else 1.0
    fig.add_trace(go.Scatter(
        x=[xy[i][0] for i in nodes], y=[xy[i][1] for i in nodes], mode="markers", name="nodes",
        marker=dict(size=[8 + 14 * (v / mx) if graph.kind(i) in ("feature", "error") else 14
                          for i, v in zip(nodes, infl)],
                    color=[COLORS[graph.kind(i)] for i in nodes], symbol=[
                        {"feature": "circle", "error": "diamond", "token": "square", "logit": "star"}[graph.kind(i)]
                        for i in nodes], line=dict(width=1, color="white"), opacity=[1.0] * len(nodes)),
        customdata=[graph.node_id(i) for i in nodes], hovertext=[_hover(graph, i, pruned, tops) for i in nodes],
        hoverinfo="text", showlegend=False))
    pos_of = {i: k for k, i in enumerate(nodes)}
    groups = []
    palette = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff9896", "#aec7e8", "#98df8a"]
    for g, (label, members) in enumerate(supernodes):
        m = [i for i in members if i in pos_of]
        if not m:
            continue
        groups.append({"label": label, "ids": [graph.node_id(i) for i in m]})
        fig.add_trace(go.Scatter(x=[xy[i][0] for i in m], y=[xy[i][1] for i in m], mode="markers",
                                 name=plot_text(label),
                                 legendgroup=f"sn{g}", hoverinfo="name",
                                 marker=dict(size=24, symbol="square-open", line=dict(width=2.5),
                                             color=palette[g % len(palette)])))
    L = graph.n_layers
    fig.update_layout(
        title=plot_text(title or f"Attribution graph: {graph.prompt}"), hovermode="closest", clickmode="event",
        xaxis=dict(tickmode="array", tickvals=list(range(graph.n_pos)),
                   ticktext=[plot_text(t) for t in graph.token_strs], title="position", zeroline=False),
        yaxis=dict(tickmode="array", tickvals=list(range(0, L + 2)),
                   ticktext=["emb"] + [f"L{l}" for l in range(L)] + ["logits"], title="layer", zeroline=False),
        height=650, plot_bgcolor="white", legend=dict(title="supernodes"))
    data = {"ids": [graph.node_id(i) for i in nodes], "x": [xy[i][0] for i in nodes], "y": [xy[i][1] for i in nodes],
            "edges": [[pos_of[s], pos_of[d], w] for s, d, w in edges], "groups": groups,
            "labels": [graph.label(i) for i in nodes]}
    return fig, data


_JS = """
(function(){
  var gd = document.getElementById('%(div)s');
  var D = JSON.parse(document.getElementById('%(data_id)s').textContent);
  var n = D.ids.length, up = [], down = [];
  for (var i = 0; i < n; i++) { up.push([]); down.push([]); }
  D.edges.forEach(function(e){ down[e[0]].push(e[1]); up[e[1]].push(e[0]); });
  function reach(start, nbr) {
    var seen = {}, stack = [start];
    seen[start] = true;
    while (stack.length) {
      var v = stack.pop();
      nbr[v].forEach(function(u){ if (!seen[u]) { seen[u] = true; stack.push(u); } });
    }
    return seen;
  }
  function highlight(k) {
    var anc = reach(k, up), desc = reach(k, down), on = {};
    Object.keys(anc).forEach(function(v){ on[v] = true; });
    Object.keys(desc).forEach(function(v){ on[v] = true; });
    var hx = [], hy = [];
    D.edges.forEach(function(e){
      if ((anc[e[0]] && anc[e[1]]) || (desc[e[0]] && desc[e[1]])) {
        hx.push(D.x[e[0]], D.x[e[1]], null); hy.push(D.y[e[0]], D.y[e[1]], null);
      }
    });
    var op = D.ids.map(function(_, v){ return on[v] ? 1.0 : 0.15; });
    Plotly.restyle(gd, {x: [hx], y: [hy]}, [1]);
    Plotly.restyle(gd, {'marker.opacity': [op]}, [2]);
    var ids = D.ids.filter(function(_, v){ return on[v]; }).sort();
    gd.setAttribute('data-clicked', D.ids[k]);
    gd.setAttribute('data-highlighted', JSON.stringify(ids));
    window.circuitlab = {clicked: D.ids[k], highlighted: ids, edges: hx.length / 3};
    var info = document.getElementById('selection');
    if (info) info.textContent = 'selected ' + D.labels[k] + ' (' + D.ids[k] + '): ' + ids.length + ' nodes and '
      + (hx.length / 3) + ' edges on paths through it';
  }
  gd.on('plotly_click', function(ev){
    var pt = ev.points && ev.points[0];
    if (!pt || pt.curveNumber !== 2) return;
    highlight(pt.pointNumber);
  });
  window.circuitlabHighlight = function(id){ var k = D.ids.indexOf(id); if (k >= 0) highlight(k); };
  gd.setAttribute('data-ready', '1');
})();
"""


def graph_page(graph: Graph, pruned: Optional[Pruned] = None, supernodes: Sequence[tuple[str, Sequence[int]]] = (),
               top_tokens: Optional[dict[str, list[str]]] = None, title: str = "", scores: Sequence = ()) -> str:
    """The page as one HTML string (plotly.js inlined; no network access needed). Every label,
    prompt and token string is escaped: the data the click handler reads is script-safe JSON."""
    fig, data = graph_figure(graph, pruned, supernodes, top_tokens, title)
    js = _JS % {"div": DIV_ID, "data_id": DATA_ID}
    body = (f"<script type='application/json' id='{DATA_ID}'>{script_json(data)}</script>"
            + figure_html(fig, "inline", div_id=DIV_ID, post_script=js))
    rows = "".join(f"<tr><td>{text(s.graph)}</td><td>{s.n_features}</td><td>{s.replacement:.3f}</td>"
                   f"<td>{s.completeness:.3f}</td></tr>" for s in scores)
    table = (f"<table><tr><th>graph</th><th>features</th><th>replacement</th><th>completeness</th></tr>{rows}</table>"
             if rows else "")
    groups = "".join(f"<li><b>{text(g['label'])}</b>: {text(', '.join(g['ids']))}</li>" for g in data["groups"])
    style = ("<style>body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222}td,th{border:1px solid #ccc;"
             "padding:2px 8px}table{border-collapse:collapse}#selection{color:#a50;min-height:1.2em}</style>")
    return page("circuitlab graph",
                f"<h2>{text(graph.prompt)}</h2><p>{len(data['ids'])} nodes, {len(data['edges'])} edges after pruning "
                f"(model {text(graph.model_name)}, transcoders {text(graph.scan)}). Click a node to highlight "
                f"the paths through it.</p><div id='selection'></div>{body}{table}"
                f"{'<h3>Supernodes</h3><ul>' + groups + '</ul>' if groups else ''}", head=style)


def write_page(graph: Graph, path: str | Path, **kw) -> Path:
    """Write ``graph_page`` to ``path`` atomically."""
    return write_html(path, graph_page(graph, **kw))
