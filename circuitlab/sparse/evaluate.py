"""Evaluating a coder: reconstruction quality, sparsity, and what splicing it does to the model.

Why these definitions: FVU is taken around the mean (``||x - x_hat||^2 / ||x - mean(x)||^2``),
not around zero, which flatters coders of activations with a large mean. CE-loss recovered
``(CE_ablate - CE_coder) / (CE_ablate - CE_clean)`` uses zero ablation of the site, and is
computed on exactly the tokens training used (the same ``keep_mask``): BOS and excluded
tokens keep their original activation in the spliced model. Documents are the held-out part of
a :mod:`circuitlab.data` source (default: the zoo corpus), never ones training read.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from circuitlab.data import DEFAULT, HELDOUT_SEED, Document, heldout
from circuitlab.engine.forward import final_logits, run_to_final
from circuitlab.sparse.splice import splice
from circuitlab.io import atomic_write
from circuitlab.sparse.base import SparseCoder, spread
from circuitlab.sparse.store import ActivationSource, Exclusion, SourceSpec, keep_mask, tokenize_documents


def heldout_documents(n: int = 64, seed: int = HELDOUT_SEED, data: str = DEFAULT, ctx_len: int = 64) -> list[Document]:
    """Up to ``n`` evaluation documents of source ``data``, disjoint from its training documents."""
    return heldout(data, n, seed, ctx_len)


@torch.no_grad()
def reconstruction_metrics(coder: SparseCoder, x: torch.Tensor, y: Optional[torch.Tensor] = None,
                           dense_threshold: float = 0.1) -> dict:
    """L0, MSE, FVU, cosine, dead / dense fractions and per-latent density on rows x (raw units)."""
    y = x if y is None else y
    f = coder.encode(x)
    y_hat = coder.decode(f, x)
    err = (y - y_hat).pow(2).sum(-1)
    dens = (f > 0).double().mean(0)
    return {
        "l0": float((f > 0).sum(-1).double().mean()),
        "mse": float(err.mean()),
        "mse_per_dim": float(err.mean() / y.shape[-1]),
        "fvu": float(err.sum() / spread(y)),
        "cosine": float(torch.nn.functional.cosine_similarity(y, y_hat, dim=-1).mean()),
        "dead_fraction": float((dens == 0).double().mean()),
        "dense_fraction": float((dens > dense_threshold).double().mean()),
        "tokens": int(x.shape[0]),
        "_density": dens,
    }


def next_token_logprobs(model, tokens: torch.Tensor, hooks=(), ctx=None) -> torch.Tensor:
    """[batch, pos - 1, vocab] float64 log-probabilities of each next token, with ``hooks``
    applied and inside the context manager ``ctx`` (a splice) when given."""
    if ctx is None:
        resid = run_to_final(model, tokens, hooks)
    else:
        with ctx:
            resid = run_to_final(model, tokens, hooks)
    return torch.log_softmax(final_logits(model, resid).double(), -1)[:, :-1]


def _passthrough(ex: Exclusion, tokens_box: dict):
    def fn(x: torch.Tensor) -> torch.Tensor:
        toks, lengths = tokens_box["tokens"], tokens_box["lengths"]
        start = toks.shape[1] - x.shape[1]
        norms = x.norm(dim=-1) if ex.norm_above is not None else None
        keep = keep_mask(toks[:, start:], lengths - start, norms, Exclusion(False, ex.token_ids, ex.norm_above))
        if ex.bos and start == 0:
            keep[:, 0] = False
        return ~keep

    return fn


@torch.no_grad()
def splice_metrics(model, coder: SparseCoder, docs: Sequence[Document], ctx_len: int = 64,
                   batch_docs: int = 32) -> dict:
    """CE loss clean / spliced (with and without the error term) / zero-ablated, CE recovered, KL."""
    _, hout = coder.cfg.hooks_in[0], (coder.cfg.hooks_out or coder.cfg.hooks_in)[0]
    ex = Exclusion.of(coder.cfg)
    sums = {"ce_clean": 0.0, "ce_coder": 0.0, "ce_coder_with_error": 0.0, "ce_zero_ablation": 0.0,
            "kl_coder": 0.0, "kl_coder_with_error": 0.0}
    n = 0
    for i in range(0, len(docs), batch_docs):
        tokens, lengths = tokenize_documents(model.tokenizer, docs[i:i + batch_docs], ctx_len)
        tokens = tokens.to(model.device)
        box = {"tokens": tokens, "lengths": lengths.to(model.device)}
        # positions scored: next-token predictions from kept tokens, inside the document
        clean_in = None
        if ex.norm_above is not None:
            from circuitlab.engine.cache import capture

            clean_in = capture(model, tokens, [coder.cfg.hooks_in[0]])[coder.cfg.hooks_in[0]].norm(dim=-1)
        keep = keep_mask(tokens, box["lengths"], clean_in, ex)
        keep[:, -1] = False
        keep &= torch.arange(tokens.shape[1], device=tokens.device)[None] < (box["lengths"][:, None] - 1)
        target = tokens[:, 1:]

        def logp(hooks=(), ctx=None):
            return next_token_logprobs(model, tokens, hooks, ctx)

        def ce(lp):
            nll = -lp.gather(-1, target[..., None])[..., 0]
            return float(nll[keep[:, :-1]].sum())

        def kl(lp_clean, lp):
            return float((lp_clean.exp() * (lp_clean - lp)).sum(-1)[keep[:, :-1]].sum())

        lp_clean = logp()
        lp_coder = logp(ctx=splice(model, [coder], error=False, passthrough=_passthrough(ex, box)))
        lp_err = logp(ctx=splice(model, [coder], error=True, passthrough=_passthrough(ex, box)))
        lp_zero = logp(hooks=[(hout, lambda a: torch.zeros_like(a))])
        sums["ce_clean"] += ce(lp_clean)
        sums["ce_coder"] += ce(lp_coder)
        sums["ce_coder_with_error"] += ce(lp_err)
        sums["ce_zero_ablation"] += ce(lp_zero)
        sums["kl_coder"] += kl(lp_clean, lp_coder)
        sums["kl_coder_with_error"] += kl(lp_clean, lp_err)
        n += int(keep[:, :-1].sum())
    out = {k: v / max(n, 1) for k, v in sums.items()}
    denom = out["ce_zero_ablation"] - out["ce_clean"]
    out["ce_recovered"] = (out["ce_zero_ablation"] - out["ce_coder"]) / denom if abs(denom) > 1e-12 else float("nan")
    out["ce_tokens"] = n
    return out


def evaluate(models, coder: SparseCoder, docs: Optional[Sequence[Document]] = None, n_docs: int = 64,
             ctx_len: int = 64, dense_threshold: float = 0.1, splice_model: bool = True, data: str = DEFAULT) -> dict:
    """All metrics of ``coder`` on ``docs``, by default ``n_docs`` held-out documents of source
    ``data`` (a :mod:`circuitlab.data` name). ``models``: one model, or one per crosscoder source
    model. Single-source coders are also spliced into the model."""
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    docs = list(docs) if docs is not None else heldout_documents(n_docs, data=data, ctx_len=ctx_len)
    src = ActivationSource(models, SourceSpec.of(coder.cfg), Exclusion.of(coder.cfg), ctx_len)
    rows = src.rows(docs)
    dev = coder.W_enc.device
    m = reconstruction_metrics(coder, rows.x.to(dev), None if rows.y is None else rows.y.to(dev), dense_threshold)
    if splice_model and coder.cfg.n_sources == 1 and coder.cfg.n_targets_ == 1 and len(models) == 1:
        m.update(splice_metrics(models[0], coder, docs, ctx_len))
    return m


def density_histogram(density: torch.Tensor, title: str = "latent density"):
    """Plotly histogram of log10 firing frequency (dead latents counted in the title)."""
    import plotly.graph_objects as go

    d = density.double()
    dead = int((d == 0).sum())
    vals = torch.log10(d[d > 0]).tolist()
    fig = go.Figure(go.Histogram(x=vals, nbinsx=50))
    fig.update_layout(title=f"{title} ({dead} dead of {len(d)})", xaxis_title="log10 firing frequency",
                      yaxis_title="latents", bargap=0.05)
    return fig


def save_metrics(metrics: dict, path: str | Path) -> Path:
    """Write metrics (JSON; the density vector as a list) atomically."""
    m = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
    m = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}
    atomic_write(path, lambda t: Path(t).write_text(json.dumps(m, indent=1)))
    return Path(path)


def resolve_model(name: str) -> str:
    """A model name from a coder's cfg.json, made loadable from any working directory.

    Coders trained from a source checkout name bundled models by repository paths
    (``circuitlab/zoo/models/gpt2-zoo/checkpoints/step_00500``); such names, and zoo-relative
    ones (``gpt2-zoo/checkpoints/step_00500``), resolve to the installed zoo folder. Zoo
    names, existing paths and hub ids are returned as they are."""
    from circuitlab.zoo import MODELS_DIR, list_models

    zoo = list_models()
    if name in zoo or Path(os.path.expanduser(name)).exists():
        return name
    parts = Path(name).parts
    if parts[:3] == ("circuitlab", "zoo", "models") and len(parts) > 3:
        parts = parts[3:]
    elif not parts or parts[0] not in zoo:
        return name
    folder = MODELS_DIR.joinpath(*parts)
    if not (folder / "config.json").exists():
        raise ValueError(f"model {name!r} is not in the installed zoo ({folder} is missing); pass --model NAME_OR_PATH")
    return str(folder)


def eval_output(coder_folder: str | Path, out: Optional[str | Path] = None) -> tuple[Path, Path]:
    """(metrics.json, density.html) paths for evaluating ``coder_folder``: under ``out``
    (default ``./eval/<folder name>``), never inside the coder folder unless ``out`` says so.
    A ``out`` ending in ``.json`` is the metrics file itself (the page goes beside it)."""
    src = Path(coder_folder).resolve()
    if out is None:
        folder = Path("eval") / src.name
        if src == folder.resolve() or src in folder.resolve().parents:
            raise ValueError(f"the default output ./{folder} lies inside the coder folder {src}; "
                             "pass --out FOLDER elsewhere")
        return folder / "metrics.json", folder / "density.html"
    out = Path(out)
    if out.suffix == ".json":
        return out, out.with_suffix(".density.html")
    return out / "metrics.json", out / "density.html"
