"""The offline page of an SNMF: the fit, the steering tests, then one card per factor.

Factors are listed most concept-specific first (largest share of their coefficient mass on
their concept tokens), since those are the ones a reader can name at a glance. Every token
string goes through circuitlab.webpage's escaping; plotly.js is written once beside the page.
"""

from __future__ import annotations

from pathlib import Path

from circuitlab.webpage import Html, figure_html, page, plot_text, text, write_html


KL_TARGET = 0.25
"""Disturbance (nats) at which the page compares steering directions."""


def objective_figure(objective: list[float], title: str = "SNMF objective"):
    """Plotly: the (relative, penalised) objective per iteration, log scale."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=list(range(1, len(objective) + 1)), y=objective, mode="lines"))
    fig.update_layout(title=plot_text(title), xaxis_title="iteration", yaxis_title="objective / ||A||^2",
                      yaxis_type="log", height=320)
    return fig


def _card(c) -> Html:
    rows = []
    for x in c.contexts:
        toks = "".join(f'<b style="background:#f9c74f">{text(t)}</b> ' if i == x.index else f"{text(t)} "
                       for i, t in enumerate(x.tokens))
        rows.append(f"<tr><td>{x.activation:.3f}</td><td>{toks}</td></tr>")
    concept = ", ".join(text(t) for t in c.concept_text) or "(none)"
    entries = ", ".join(f"{j} ({w:+.2f})" for j, w in c.entries)
    pro = ", ".join(f"{text(t)} ({v:+.2f})" for t, v in c.promoted)
    sup = ", ".join(f"{text(t)} ({v:+.2f})" for t, v in c.suppressed)
    return Html(f"<h3 id='factor-{c.factor}'>factor {c.factor}</h3>"
                f"<p><b>concept</b>: {concept} ({c.share:.0%} of its mass); used on {c.usage:.1%} of tokens, "
                f"mean coefficient {c.mean:.3g}</p>"
                f"<p><b>largest entries</b>: {entries}<br><b>promotes</b>: {pro}<br><b>suppresses</b>: {sup}</p>"
                f"<table><tr><th>coef</th><th>context</th></tr>{''.join(rows)}</table>")


def _steering_table(tests) -> Html:
    head = "<tr><th>factor</th><th>concept</th><th>strength</th>" + "".join(
        f"<th>{text(n)}: &Delta;log p / KL</th>" for n in tests[0].delta_logp) + "</tr>"
    rows = []
    for t in tests:
        for j, s in enumerate(t.strengths):
            if s == 0:
                continue
            cells = "".join(f"<td>{t.delta_logp[n][j]:+.3f} / {t.kl[n][j]:.3f}</td>" for n in t.delta_logp)
            rows.append(f"<tr><td>{text(t.label)}</td><td>{text(', '.join(t.concept_text))}</td>"
                        f"<td>{s:g}</td>{cells}</tr>")
    names = list(tests[0].delta_logp)
    eq_head = "<tr><th>factor</th>" + "".join(f"<th>{text(n)}</th>" for n in names) + "</tr>"
    eq_rows = []
    for t in tests:
        at = t.at_kl(KL_TARGET)
        cells = "".join("<td>n/a</td>" if at.get(n) is None else f"<td>{at[n]:+.3f}</td>" for n in names)
        eq_rows.append(f"<tr><td>{text(t.label)}</td>{cells}</tr>")
    return Html(f"<table border='1' cellpadding='3'>{head}{''.join(rows)}</table>"
                f"<p>&Delta;log p at equal disturbance, KL = {KL_TARGET} nats (n/a: no tested strength "
                f"disturbs that much):</p><table border='1' cellpadding='3'>{eq_head}{''.join(eq_rows)}</table>")


def write_page(report, path: str | Path) -> Path:
    """Write the page of an :class:`~circuitlab.sparse.snmf.report.SNMFReport`."""
    f = report.fact
    cfg = f.cfg
    title = f"SNMF of {report.hook} ({report.model})"
    parts = [f"<h1>{text(title)}</h1>",
             f"<p>{f.Z.shape[0]} tokens from {report.n_docs} documents of {text(report.data)} x {f.Y.shape[1]} "
             f"dimensions, {cfg.factors} factors, l1 {cfg.l1:g}, keep {cfg.keep:g}, init {text(cfg.init)}: "
             f"relative error {f.error:.4f} after {len(f.objective)} iterations.</p>",
             figure_html(objective_figure(f.objective), "file")]
    if report.steering:
        parts.append("<h2>Steering</h2><p>Each direction is added at unit norm times the strength times the "
                     "site's rms activation norm, at every position of held-out text; &Delta;log p is the "
                     "change of the log-probability of the concept's tokens, KL the disturbance of the "
                     "next-token distribution.</p>")
        parts.append(_steering_table(report.steering))
        for t in report.steering:
            parts.append(figure_html(t.figure(), False))
    parts.append("<h2>Factors</h2>")
    parts += [_card(c) for c in sorted(report.cards, key=lambda c: -c.share)]
    return write_html(path, page(title, "\n".join(parts)), plotly_file=True)
