"""Token heatmaps: a prompt's tokens coloured by a score, one row per prompt and method.

Why a heatmap of text: input relevance is read token by token, and methods are compared by
putting their rows for the same prompt next to each other; colour shows sign and size, the
cell shows the token, hovering shows the raw value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from circuitlab.webpage import plot_text

NORMALIZE = ("row", "none")


def token_figure(results: Sequence, title: Optional[str] = None, normalize: str = "row",
                 prompts: Optional[Sequence[int]] = None):
    """Plotly heatmap of InputRelevance ``results`` over the same prompts: rows grouped by prompt
    (one per method), columns the positions. ``normalize='row'`` divides each row by its largest
    |score| (methods on different scales side by side); ``'none'`` keeps the raw scores.
    ``prompts``: which prompts to show (default all)."""
    import plotly.graph_objects as go

    from circuitlab.validate import check_choice

    results = _check(results)
    check_choice("normalize", normalize, NORMALIZE)
    first = results[0]
    shown = list(range(len(first.tokens))) if prompts is None else list(prompts)
    bad = [i for i in shown if not 0 <= i < len(first.tokens)]
    if bad:
        raise ValueError(f"prompt {bad[0]} is not among the {len(first.tokens)} prompts (0..{len(first.tokens) - 1})")
    width = max(int(first.lengths[i]) for i in shown)
    z, text, hover, labels = [], [], [], []
    for i in shown:
        n = int(first.lengths[i])
        toks = first.tokens[i]
        for r in results:
            raw = r.scores[i, :n].double().numpy()
            peak = float(np.abs(raw).max()) if n else 0.0
            shown_row = raw / peak if normalize == "row" and peak > 0 else raw
            pad = [None] * (width - n)
            z.append(list(shown_row) + pad)
            text.append([plot_text(t) for t in toks] + [""] * (width - n))
            foot = f"{r.label} · sum {float(r.sums[i]):.4g} · total {float(r.total[i]):.4g}"
            hover.append(["<br>".join(plot_text(s) for s in (f"prompt {i} · pos {j} {toks[j]!r}", f"score {raw[j]:.4g}",
                                                              foot)) for j in range(n)] + [""] * (width - n))
            labels.append(plot_text(f"{i}: {r.label}"))
    zmax = 1.0 if normalize == "row" else max(1e-12, float(np.nanmax(np.abs(np.array(z, dtype=float)))))
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(width)), y=labels, text=text, texttemplate="%{text}", hovertext=hover, hoverinfo="text",
        colorscale="RdBu", reversescale=True, zmid=0, zmin=-zmax, zmax=zmax, xgap=1, ygap=1,
        colorbar=dict(title="score / row max" if normalize == "row" else "score")))
    outputs = sorted({r.output for r in results})
    fig.update_layout(title=plot_text(title or f"input relevance for {', '.join(outputs)}"),
                      yaxis_autorange="reversed", xaxis_title="position", height=120 + 26 * len(labels),
                      margin=dict(l=160), plot_bgcolor="white")
    return fig


def write_token_page(results: Sequence, path: str | Path, title: Optional[str] = None) -> Path:
    """An offline HTML page (plotly inlined) with the token heatmap of ``results`` and a table of
    what each method's scores add up to per prompt."""
    from circuitlab.viz.report import Report

    results = _check(results)
    title = title or "Input relevance"
    report = Report(title)
    report.add("Token heatmap", "Each row is one prompt under one method; red tokens push the output up, blue ones "
               "down (ALTI shares are all >= 0). Hover for raw scores.", token_figure(results, title))
    report.add("What the scores add up to", "sum: the scores over the prompt; total: what the method says they add up "
               "to (IG: output(input) - output(baseline); RelP: the output; ALTI: 1); gap = total - sum.",
               completeness_rows(results))
    return report.save(path)


def completeness_rows(results: Sequence) -> list[list]:
    """Table rows (header first): method, prompt, output, sum, total, gap."""
    rows: list[list] = [["method", "prompt", "output", "sum", "total", "gap"]]
    for r in _check(results):
        for i in range(len(r.tokens)):
            rows.append([r.label, i, r.output, float(r.sums[i]), float(r.total[i]), float(r.gap[i])])
    return rows


def _check(results) -> list:
    from circuitlab.methods.input_relevance.result import InputRelevance

    results = [results] if isinstance(results, InputRelevance) else list(results)
    if not results or not all(isinstance(r, InputRelevance) for r in results):
        raise ValueError("give one or more InputRelevance results (from cl.input_relevance)")
    first = results[0]
    for r in results[1:]:
        if r.tokens != first.tokens:
            raise ValueError(f"results {first.label!r} and {r.label!r} are on different prompts; compare methods "
                             "on the same inputs")
    return results
