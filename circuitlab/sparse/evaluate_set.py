"""Evaluating many coders of one model together: a whole layer stack, as attribution graphs use it.

Why a set: a model's per-layer transcoders are 30 or more coders. Evaluated one by one, each
would gather its own activations and run the clean model again; here one activation pass feeds
every coder's reconstruction metrics (accumulated over document batches, so memory does not grow
with the number of documents), the clean log-probabilities are computed once, and each coder
costs one spliced forward and one zero-ablated forward. The set's own figure is the
*replacement*: every transcoder spliced at once without its error term, the model attribution
graphs explain; its CE recovered is measured against zero-ablating all of those MLP outputs.
Definitions are those of :mod:`circuitlab.sparse.evaluate` (FVU around the mean; BOS and
excluded tokens keep their original activations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from circuitlab.data import DEFAULT, Document
from circuitlab.sparse.base import SparseCoder
from circuitlab.sparse.evaluate import _passthrough, heldout_documents, next_token_logprobs
from circuitlab.sparse.splice import splice
from circuitlab.sparse.store import ActivationSource, Exclusion, SourceSpec, keep_mask, shared_spec, tokenize_documents


@dataclass
class _Sums:
    """Running sums from which one coder's reconstruction metrics follow exactly."""

    n: int = 0
    err: float = 0.0
    y_sum: Optional[torch.Tensor] = None
    y_sq: float = 0.0
    l0: float = 0.0
    cos: float = 0.0
    fired: Optional[torch.Tensor] = None

    def add(self, coder: SparseCoder, x: torch.Tensor, y: torch.Tensor) -> None:
        f = coder.encode(x)
        y_hat = coder.decode(f, x)
        yd = y.double()
        self.n += x.shape[0]
        self.err += float((y - y_hat).double().pow(2).sum())
        self.y_sum = yd.sum(0) if self.y_sum is None else self.y_sum + yd.sum(0)
        self.y_sq += float(yd.pow(2).sum())
        self.l0 += float((f > 0).sum())
        self.cos += float(torch.nn.functional.cosine_similarity(y, y_hat, dim=-1).double().sum())
        c = (f > 0).sum(0).cpu()
        self.fired = c if self.fired is None else self.fired + c

    def metrics(self, dense_threshold: float) -> dict:
        spread = self.y_sq - float(self.y_sum.pow(2).sum()) / max(self.n, 1)
        dens = self.fired.double() / max(self.n, 1)
        return {"l0": self.l0 / max(self.n, 1), "fvu": self.err / max(spread, 1e-12),
                "mse": self.err / max(self.n, 1), "cosine": self.cos / max(self.n, 1),
                "dead_fraction": float((dens == 0).double().mean()),
                "dense_fraction": float((dens > dense_threshold).double().mean()), "tokens": self.n}


def _zero(a: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(a)


def _exclusion(coders: dict[str, SparseCoder]) -> Exclusion:
    """The one exclusion every coder of the set was trained with (a set needs the same one)."""
    exs = {n: Exclusion.of(c.cfg) for n, c in coders.items()}
    first = next(iter(exs.values()))
    odd = [n for n, e in exs.items() if (e.bos, tuple(e.token_ids)) != (first.bos, tuple(first.token_ids))]
    if odd:
        raise ValueError(f"coders {', '.join(odd)} exclude other tokens than {next(iter(exs))}; evaluate them "
                         "separately (circuitlab eval on each coder folder)")
    if any(e.norm_above is not None for e in exs.values()):
        raise ValueError("a coder of the set was trained with a norm cut-off; evaluate such coders one at a time "
                         "(circuitlab eval on each coder folder): a shared pass cannot apply one cut-off per site")
    return Exclusion(first.bos, tuple(first.token_ids), None)


@torch.no_grad()
def reconstruction_set(model, coders: dict[str, SparseCoder], docs: Sequence[Document], ctx_len: int = 128,
                       batch_docs: int = 16, dense_threshold: float = 0.1, progress: bool = False) -> dict[str, dict]:
    """Each coder's L0, FVU, MSE, cosine, dead and dense fractions on ``docs``, from one
    activation pass per document batch for the whole set."""
    from tqdm.auto import tqdm

    spec, cols = shared_spec([SourceSpec.of(c.cfg) for c in coders.values()], model.d_model)
    src = ActivationSource([model], spec, _exclusion(coders), ctx_len)
    sums = {n: _Sums() for n in coders}
    for i in tqdm(range(0, len(docs), batch_docs), desc="reconstruction", disable=not progress, leave=False):
        rows = src.rows(docs[i:i + batch_docs])
        for (n, c), col in zip(coders.items(), cols):
            r = col.select(rows)
            dev = c.W_enc.device
            x = r.x.to(dev)
            sums[n].add(c, x, x if r.y is None else r.y.to(dev))
    return {n: s.metrics(dense_threshold) for n, s in sums.items()}


@dataclass
class _CE:
    """Summed next-token losses of one variant of the model."""

    ce: float = 0.0
    kl: float = 0.0
    parts: dict = field(default_factory=dict)


@torch.no_grad()
def splice_set(model, coders: dict[str, SparseCoder], docs: Sequence[Document], ctx_len: int = 128,
               batch_docs: int = 16, replacement: Optional[Sequence[str]] = None, progress: bool = False) -> dict:
    """CE loss and KL to the clean model with each coder spliced alone (and its site
    zero-ablated), and with the ``replacement`` coders (default: every transcoder of the set,
    one per layer) spliced all at once, against zero-ablating all their output sites.

    Returns ``{"coders": {name: {ce_clean, ce_coder, ce_zero_ablation, ce_recovered, kl_coder}},
    "replacement": {...} or None, "ce_tokens": n}``."""
    from tqdm.auto import tqdm

    ex = _exclusion(coders)
    if replacement is None:
        replacement = [n for n, c in coders.items() if c.cfg.hooks_out and c.cfg.hooks_out != c.cfg.hooks_in]
    replacement = list(replacement)
    outs = {n: (c.cfg.hooks_out or c.cfg.hooks_in)[0] for n, c in coders.items()}
    keys = [f"coder:{n}" for n in coders] + [f"zero:{n}" for n in coders]
    if replacement:
        keys += ["replacement", "zero:replacement"]
    sums = {k: [0.0, 0.0] for k in ["clean", *keys]}
    n_tok = 0
    for i in tqdm(range(0, len(docs), batch_docs), desc="spliced CE", disable=not progress, leave=False):
        tokens, lengths = tokenize_documents(model.tokenizer, docs[i:i + batch_docs], ctx_len)
        tokens = tokens.to(model.device)
        box = {"tokens": tokens, "lengths": lengths.to(model.device)}
        keep = keep_mask(tokens, box["lengths"], None, ex)
        keep &= torch.arange(tokens.shape[1], device=tokens.device)[None] < (box["lengths"][:, None] - 1)
        keep = keep[:, :-1]
        target = tokens[:, 1:]

        def logp(hooks=(), ctx=None):
            return next_token_logprobs(model, tokens, hooks, ctx)

        clean = logp()

        def add(key, lp):
            nll = -lp.gather(-1, target[..., None])[..., 0]
            sums[key][0] += float(nll[keep].sum())
            sums[key][1] += float((clean.exp() * (clean - lp)).sum(-1)[keep].sum())

        add("clean", clean)
        for n, c in coders.items():
            add(f"coder:{n}", logp(ctx=splice(model, [c], error=False, passthrough=_passthrough(ex, box))))
            add(f"zero:{n}", logp(hooks=[(outs[n], _zero)]))
        if replacement:
            add("replacement", logp(ctx=splice(model, [coders[n] for n in replacement], error=False,
                                               passthrough=_passthrough(ex, box))))
            add("zero:replacement", logp(hooks=[(outs[n], _zero) for n in replacement]))
        n_tok += int(keep.sum())
    avg = {k: (v[0] / max(n_tok, 1), v[1] / max(n_tok, 1)) for k, v in sums.items()}
    ce_clean = avg["clean"][0]

    def block(key_coder: str, key_zero: str) -> dict:
        ce, kl = avg[key_coder]
        ce0 = avg[key_zero][0]
        den = ce0 - ce_clean
        return {"ce_clean": ce_clean, "ce_coder": ce, "ce_zero_ablation": ce0, "kl_coder": kl,
                "ce_recovered": (ce0 - ce) / den if abs(den) > 1e-12 else float("nan")}

    return {"coders": {n: block(f"coder:{n}", f"zero:{n}") for n in coders},
            "replacement": ({**block("replacement", "zero:replacement"), "coders": replacement}
                            if replacement else None),
            "ce_tokens": n_tok}


def evaluate_set(model, coders: dict[str, SparseCoder], n_docs: int = 256, ce_docs: int = 32, ctx_len: int = 128,
                 data: str = DEFAULT, dense_threshold: float = 0.1, progress: bool = True) -> dict:
    """Reconstruction metrics of every coder on ``n_docs`` held-out documents and spliced CE on
    the first ``ce_docs`` of them; see :func:`reconstruction_set` and :func:`splice_set`."""
    if not coders:
        raise ValueError("no coders to evaluate")
    docs = heldout_documents(max(n_docs, ce_docs), data=data, ctx_len=ctx_len)
    rec = reconstruction_set(model, coders, docs[:n_docs], ctx_len, dense_threshold=dense_threshold,
                             progress=progress)
    ce = splice_set(model, coders, docs[:ce_docs], ctx_len, progress=progress)
    per = {n: {**rec[n], **ce["coders"][n], "ce_tokens": ce["ce_tokens"]} for n in coders}
    return {"coders": per, "replacement": ce["replacement"], "ce_tokens": ce["ce_tokens"],
            "docs": len(docs[:n_docs]), "ce_docs": len(docs[:ce_docs]), "data": data, "ctx_len": ctx_len}


def set_figure(metrics: dict, title: str = "coders"):
    """FVU and spliced CE recovered of each coder against its layer (transcoders and other coders
    as separate lines), with the replacement's CE recovered in the title."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("FVU (held-out)", "CE recovered (spliced alone)"))
    groups: dict[str, list] = {}
    for n, row in metrics["coders"].items():
        kind = "transcoder" if "_transcoder_" in n else "other"
        groups.setdefault(kind, []).append((n, row))
    for kind, rows in groups.items():
        rows.sort(key=lambda r: _layer_of(r[0]))
        xs = [_layer_of(n) for n, _ in rows]
        for col, key in ((1, "fvu"), (2, "ce_recovered")):
            fig.add_scatter(x=xs, y=[r[key] for _, r in rows], mode="lines+markers", name=kind, legendgroup=kind,
                            showlegend=col == 1, text=[n for n, _ in rows], row=1, col=col)
    rep = metrics.get("replacement")
    sub = (f"; all {len(rep['coders'])} transcoders spliced at once: CE recovered {rep['ce_recovered']:.3f}"
           if rep else "")
    fig.update_xaxes(title_text="layer")
    fig.update_layout(title=f"{title}{sub}", height=420, width=1100)
    return fig


def _layer_of(name: str) -> int:
    import re

    m = re.search(r"_L(\d+)$", name)
    return int(m.group(1)) if m else -1
