"""Integrated gradients on the input token embeddings, with a choice of baseline.

score(token t) = sum over d_model of (x_t - x'_t) * integral_0^1 d output / d x_t at x' + a (x - x') da,

x the prompt's token embeddings and x' the baseline's (position embeddings and positions stay).
Completeness: the scores of a prompt add up to output(x) - output(x') up to the quadrature error,
which shrinks as ``steps`` grows. The path integral is circuitlab.methods.ig's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlab.engine.forward import metric_per_prompt
from circuitlab.engine.sites import hook_name
from circuitlab.methods.ig import (BASELINES, baseline_embeddings, check_baseline, embedding_path, quadrature,
                                   replace_embeddings, token_embeddings)
from circuitlab.methods.input_relevance.explained import Explained

INPUT_BASELINES = ("zero", "pad", "mean", "mean:SOURCE", "corrupt")


@dataclass
class IGInputOptions:
    """Options of integrated gradients on the input embeddings."""

    baseline: str = "zero"
    """The path's start: 'zero', 'pad' (the pad token's embedding), 'mean' (mean embedding over
    the vocabulary), 'mean:SOURCE' (over a data source's tokens, e.g. 'mean:zoo') or 'corrupt'
    (a Task's corrupted prompt)."""
    steps: int = 32
    """Points on the path (run as batched copies); the completeness gap shrinks as it grows."""
    rule: str = "gauss-legendre"
    """Quadrature rule: 'right', 'left', 'midpoint', 'trapezoid' or 'gauss-legendre' (Captum's
    default, the most accurate for a given number of steps)."""
    keep_bos: bool = True
    """A leading BOS keeps its own embedding in the baseline (it is the same in every prompt and
    the model's attention leans on it), so its score is 0."""
    max_rows: int = 256
    """Sequences per forward pass (prompts x steps); prompts run in chunks that fit."""

    def __post_init__(self):
        from circuitlab.validate import check_positive_int

        check_baseline(self.baseline, [b for b in BASELINES if b != "prompt"] + ["corrupt"])
        quadrature(self.rule, self.steps)
        check_positive_int("max_rows", self.max_rows)


def ig_relevance(model, ex: Explained, opts: IGInputOptions) -> dict:
    """Scores [prompts, pos], totals [prompts] and meta of IG on ``ex``'s token embeddings."""
    embed = hook_name("embed")
    x = token_embeddings(model, ex.tokens)
    if opts.baseline == "corrupt":
        if ex.corrupt is None:
            raise ValueError("baseline='corrupt' needs a Task (its corrupted prompts); for plain prompts use "
                             "'zero', 'pad', 'mean' or 'mean:SOURCE'")
        x0 = token_embeddings(model, ex.corrupt)
    else:
        x0 = baseline_embeddings(model, ex.tokens, opts.baseline, opts.keep_bos)
    scores = torch.zeros(ex.tokens.shape, dtype=torch.float64)
    chunk = max(1, opts.max_rows // opts.steps)
    for idx in torch.arange(len(ex)).split(chunk):
        grads = embedding_path(model, ex.tokens[idx], ex.summed(idx), [embed], x0[idx], x[idx], opts.rule, opts.steps)
        g, div = grads[embed]
        scores[idx] = ((x[idx] - x0[idx]) * g / div).sum(-1).double().cpu()
    out = metric_per_prompt(model, ex.tokens, ex.metric).double().cpu()
    out0 = metric_per_prompt(model, ex.tokens, ex.metric, [(embed, replace_embeddings(x0))]).double().cpu()
    return {"scores": scores, "total": out - out0, "label": f"ig ({opts.baseline})",
            "meta": {"baseline": opts.baseline, "steps": opts.steps, "rule": opts.rule, "keep_bos": opts.keep_bos,
                     "output_input": out.tolist(), "output_baseline": out0.tolist()}}
