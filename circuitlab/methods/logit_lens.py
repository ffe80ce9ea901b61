"""Logit lens: read the answer-vs-wrong logit difference off every layer's residual stream.

Each layer's residual is passed through the final norm with ITS OWN statistics (not the cached
final scale) and the unembedding, at each prompt's answer position. ``logit_lens_topk`` does the
same at every position of one prompt and keeps the top-k tokens and the KL divergence to the
model's output (nostalgebraist 2020).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Union

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.forward import final_logits
from circuitlab.engine.sites import hook_name
from circuitlab.result import Cost, DirectEffects


def logit_lens(model, task, tokens: str = "clean") -> DirectEffects:
    """Values [n_layers + 1]: after the embeddings, then after each block (mean over prompts)."""
    t0 = time.perf_counter()
    toks = task.clean_tokens if tokens == "clean" else task.corrupt_tokens
    L = model.n_layers
    names = [hook_name("resid_pre", 0)] + [hook_name("resid_post", l) for l in range(L)]
    c = capture(model, toks, names)
    b = torch.arange(toks.shape[0], device=toks.device)
    vals, top = [], []
    with torch.no_grad():
        for n in names:
            logits = final_logits(model, c[n][b, task.answer_pos])
            vals.append((logits[b, task.answer_ids] - logits[b, task.wrong_ids]).mean())
            top.append(model.tokenizer.convert_ids_to_tokens(logits[0].argmax().item()))
    labels = ["embed"] + [f"L{l}.resid_post" for l in range(L)]
    return DirectEffects(torch.stack(vals).cpu(), labels, ("layer",), "logit_lens", "resid", tokens, "logit_diff",
                         float(vals[-1]), Cost(1, 0, time.perf_counter() - t0), meta={"top_token_prompt0": top})


# ------------------------------------------------------------------ top-k at every position


@dataclass
class LogitLensTopK:
    """What every layer's residual stream decodes to at every position of one prompt."""

    layers: list[str]
    """Row labels: ``L0.resid_pre`` .. ``L{n-1}.resid_pre``, then ``L{n-1}.resid_post`` (the
    residual entering the final norm, which gives the model's own logits)."""
    tokens: list[str]
    """The prompt's tokens (column labels)."""
    top_ids: torch.Tensor
    """[layer, pos, k] token ids, most probable first."""
    top_tokens: list[list[list[str]]]
    """[layer][pos][k] the same ids decoded."""
    top_probs: torch.Tensor
    """[layer, pos, k] their probabilities under that layer's decoding."""
    kl: torch.Tensor
    """[layer, pos] KL(final || layer): nats lost by reading the layer instead of the output."""

    def figure(self, title: Optional[str] = None):
        """Layers down, positions across: each cell's top token, coloured by its probability;
        hovering shows the top-k."""
        return topk_figure(self, title)


def prompt_tokens(model, prompt: Union[str, torch.Tensor]) -> torch.Tensor:
    """One prompt as 1-D token ids on the model's device (text gets BOS, like tasks)."""
    if isinstance(prompt, str):
        return model.to_tokens(prompt)
    if not torch.is_tensor(prompt):
        raise TypeError(f"a prompt is a string or a tensor of token ids, not {type(prompt).__name__}")
    t = prompt[0] if prompt.dim() == 2 and prompt.shape[0] == 1 else prompt
    if t.dim() != 1 or t.numel() == 0 or t.is_floating_point():
        raise ValueError(f"token ids must be a non-empty 1-D integer tensor (or [1, pos]), got shape "
                         f"{tuple(prompt.shape)} {prompt.dtype}; analyse prompts one at a time")
    return t.to(model.device)


def decode_each(tokenizer, ids) -> list[str]:
    """Each id on its own as display text (``' Paris'`` for byte-level BPE, not ``'ĠParis'``)."""
    return [tokenizer.decode([int(i)]) for i in ids]


def logit_lens_topk(model, prompt: Union[str, torch.Tensor], k: int = 10) -> LogitLensTopK:
    """Decode resid_pre of every layer and the final residual at every position of ``prompt``
    through the final norm (with each vector's own statistics) and the unembedding."""
    from circuitlab.api import exclusive
    from circuitlab.validate import check_positive_int

    check_positive_int("k", k)
    toks = prompt_tokens(model, prompt)
    k = min(k, model.d_vocab)
    L = model.n_layers
    names = [hook_name("resid_pre", l) for l in range(L)] + [hook_name("resid_post", L - 1)]
    with exclusive(model), torch.no_grad():
        c = capture(model, toks[None], names)
        final = torch.log_softmax(final_logits(model, c[names[-1]][0]).float(), -1)
        ids, probs, kls = [], [], []
        for n in names:
            logp = final if n == names[-1] else torch.log_softmax(final_logits(model, c[n][0]).float(), -1)
            p, i = logp.exp().topk(k, dim=-1)
            ids.append(i)
            probs.append(p)
            kls.append((final.exp() * (final - logp)).sum(-1).clamp_min(0))
    ids_t = torch.stack(ids).cpu()
    uniq = ids_t.unique().tolist()
    text = dict(zip(uniq, decode_each(model.tokenizer, uniq)))
    top_tokens = [[[text[i] for i in row] for row in layer] for layer in ids_t.tolist()]
    labels = [f"L{l}.resid_pre" for l in range(L)] + [f"L{L - 1}.resid_post"]
    return LogitLensTopK(labels, decode_each(model.tokenizer, toks.tolist()), ids_t, top_tokens,
                         torch.stack(probs).cpu(), torch.stack(kls).cpu())


def topk_figure(lens: LogitLensTopK, title: Optional[str] = None):
    """Plotly heatmap of a :class:`LogitLensTopK` (see its ``figure``)."""
    import plotly.graph_objects as go

    from circuitlab.webpage import plot_text

    p = lens.top_probs[..., 0].numpy()

    def cell_hover(layer: str, j: int, cell: list[str], qs, kl) -> str:
        lines = [f"{layer} · pos {j} ({lens.tokens[j]!r})"]
        lines += [f"{t!r}: {float(q):.3f}" for t, q in zip(cell, qs)] + [f"KL to final: {float(kl):.3f}"]
        return "<br>".join(plot_text(x) for x in lines)

    hover = [[cell_hover(layer, j, cell, qs, kl) for j, (cell, qs, kl) in enumerate(zip(row, prow, krow))]
             for layer, row, prow, krow in zip(lens.layers, lens.top_tokens, lens.top_probs, lens.kl)]
    fig = go.Figure(go.Heatmap(
        z=p, zmin=0, zmax=1, colorscale="Blues", colorbar=dict(title="top-1 prob"),
        x=[plot_text(f"{j} {t}") for j, t in enumerate(lens.tokens)], y=lens.layers,
        text=[[plot_text(cell[0]) for cell in row] for row in lens.top_tokens], texttemplate="%{text}",
        hovertext=hover, hoverinfo="text"))
    fig.update_layout(title=plot_text(title or "logit lens: top token per layer and position"),
                      yaxis_autorange="reversed", xaxis_title="position", yaxis_title="layer")
    return fig
