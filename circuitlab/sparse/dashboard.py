"""Feature dashboards: what a latent responds to and what it writes.

For a latent: its top-activating contexts in held-out documents of a data source (the zoo
corpus unless another is named; the activating token marked),
its firing density, and the tokens its decoder direction promotes and suppresses through the
unembedding (the direct logit effect ``W_dec[i] @ W_U``, ignoring the final norm's scale).
Returned as plain data (``LatentCard``) so attribution graphs and the demo can reuse it, and
rendered to plotly / HTML (every token string escaped; plotly.js bundled beside the page).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from circuitlab.data import DEFAULT, Document
from circuitlab.sparse.base import SparseCoder
from circuitlab.sparse.store import ActivationSource, Exclusion, SourceSpec
from circuitlab.webpage import Html, figure_html, page, plot_text, text, write_html


@dataclass
class Context:
    """One activating context."""

    tokens: list[str]
    """Tokens of the window, in order."""
    index: int
    """Index in ``tokens`` of the token where the latent fired."""
    activation: float
    """Latent activation at that token."""


@dataclass
class LatentCard:
    """Everything a dashboard shows for one latent."""

    latent: int
    density: float
    """Fraction of tokens on which the latent fires."""
    max_activation: float
    top_contexts: list[Context] = field(default_factory=list)
    promoted: list[tuple[str, float]] = field(default_factory=list)
    """Tokens with the largest direct logit effect."""
    suppressed: list[tuple[str, float]] = field(default_factory=list)
    """Tokens with the most negative direct logit effect."""


def logit_effects(model, coder: SparseCoder, latent: int, k: int = 10) -> tuple[list, list]:
    """(promoted, suppressed) tokens of a latent's decoder row through the unembedding."""
    from circuitlab.models.weights import W_U

    w = coder.W_dec[latent].detach()[-model.d_model:]  # last target (the site's output)
    eff = w.to(W_U(model).dtype) @ W_U(model)
    tok = model.tokenizer
    top = eff.topk(k)
    bot = (-eff).topk(k)
    return ([(tok.convert_ids_to_tokens(int(i)), float(v)) for v, i in zip(top.values, top.indices)],
            [(tok.convert_ids_to_tokens(int(i)), -float(v)) for v, i in zip(bot.values, bot.indices)])


@torch.no_grad()
def latent_cards(models, coder: SparseCoder, latents: Sequence[int], docs: Optional[Sequence[Document]] = None,
                 n_docs: int = 256, n_contexts: int = 8, window: int = 8, ctx_len: int = 64,
                 data: str = DEFAULT) -> list[LatentCard]:
    """Cards for ``latents`` from ``docs`` (default: ``n_docs`` held-out documents of source
    ``data``, the zoo corpus unless named; see circuitlab.data)."""
    from circuitlab.sparse.evaluate import heldout_documents
    from circuitlab.sparse.store import tokenize_documents

    models = list(models) if isinstance(models, (list, tuple)) else [models]
    docs = list(docs) if docs is not None else heldout_documents(n_docs, data=data, ctx_len=ctx_len)
    src = ActivationSource(models, SourceSpec.of(coder.cfg), Exclusion.of(coder.cfg), ctx_len)
    rows = src.rows(docs)
    f = coder.encode(rows.x.to(coder.W_enc.device)).cpu()
    toks, _ = tokenize_documents(models[0].tokenizer, docs, ctx_len)
    tok = models[0].tokenizer
    cards = []
    for u in latents:
        a = f[:, u]
        card = LatentCard(int(u), float((a > 0).double().mean()), float(a.max()))
        for r in a.topk(min(n_contexts, int((a > 0).sum()))).indices.tolist():
            d, p = int(rows.doc[r]), int(rows.pos[r])
            lo = max(0, p - window)
            ids = toks[d, lo:p + 3].tolist()
            card.top_contexts.append(Context(tok.convert_ids_to_tokens(ids), p - lo, float(a[r])))
        card.promoted, card.suppressed = logit_effects(models[0], coder, u)
        cards.append(card)
    return cards


def card_html(card: LatentCard) -> Html:
    """One latent as an HTML fragment (activating token highlighted)."""
    rows = []
    for c in card.top_contexts:
        toks = "".join(
            f'<b style="background:#f9c74f">{text(t)}</b> ' if i == c.index else f"{text(t)} "
            for i, t in enumerate(c.tokens))
        rows.append(f"<tr><td>{c.activation:.3f}</td><td>{toks}</td></tr>")
    pro = ", ".join(f"{text(t)} ({v:+.2f})" for t, v in card.promoted)
    sup = ", ".join(f"{text(t)} ({v:+.2f})" for t, v in card.suppressed)
    return Html(f"<h3>latent {card.latent}</h3>"
                f"<p>density {card.density:.4%}, max activation {card.max_activation:.3f}</p>"
                f"<p><b>promotes</b>: {pro}<br><b>suppresses</b>: {sup}</p>"
                f"<table><tr><th>act</th><th>context</th></tr>{''.join(rows)}</table>")


def card_figure(card: LatentCard):
    """Plotly bar chart of a latent's promoted and suppressed tokens."""
    import plotly.graph_objects as go

    items = card.promoted + card.suppressed[::-1]
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[plot_text(t) for t, _ in items], orientation="h"))
    fig.update_layout(title=f"latent {card.latent}: direct logit effect (density {card.density:.3%})",
                      yaxis=dict(autorange="reversed"))
    return fig


def save_dashboard(cards: Sequence[LatentCard], path, title: str = "latents") -> None:
    """One HTML page with every card and its logit-effect chart (plotly.min.js written beside it)."""
    parts = [f"<h1>{text(title)}</h1>"]
    for i, c in enumerate(cards):
        parts.append(card_html(c))
        parts.append(figure_html(card_figure(c), "file" if i == 0 else False))
    write_html(path, page(title, "\n".join(parts)), plotly_file=True)
