"""Input-token relevance: how much each token of a prompt accounts for an output.

Three methods, each a module of this package, all read through the engine:

- ``ig`` (:mod:`.integrated`): integrated gradients on the token embeddings from a baseline
  (zero, pad, mean over the vocabulary or a data source, or a task's corrupted prompt);
  complete: a prompt's scores add up to output(input) - output(baseline).
- ``relp`` (:mod:`.lrp`): the LRP rules of RelP / AttnLRP in the backward pass, relevance read
  at the embeddings as input x relevance; conservative (scores add up to the output) for
  bias-free models under the pattern rule.
- ``alti`` (:mod:`.alti`): ALTI's token-to-token contributions per layer rolled out across
  layers; the read position's row is a distribution over the input tokens.

:func:`input_relevance` runs one of them on a Task or on plain prompts; the result's ``figure``
colours the tokens, and :func:`circuitlab.viz.tokens.token_figure` puts several methods side
by side.
"""

from __future__ import annotations

from typing import Optional

import torch

from circuitlab.methods.input_relevance.alti import ALTI, ALTIOptions, alti, alti_relevance, contributions, rollout
from circuitlab.methods.input_relevance.explained import Explained, explained
from circuitlab.methods.input_relevance.integrated import IGInputOptions, ig_relevance
from circuitlab.methods.input_relevance.lrp import RelPInputOptions, lrp_relevance
from circuitlab.methods.input_relevance.result import InputRelevance

METHODS = {"ig": (IGInputOptions, ig_relevance), "relp": (RelPInputOptions, lrp_relevance),
           "alti": (ALTIOptions, alti_relevance)}
"""Method name -> (options dataclass, implementation)."""

__all__ = ["input_relevance", "InputRelevance", "IGInputOptions", "RelPInputOptions", "ALTIOptions", "ALTI", "alti",
           "contributions", "rollout", "METHODS", "Explained", "explained"]


def input_relevance(model, inputs, method: str = "ig", target: Optional[str | list] = None,
                    **options) -> InputRelevance:
    """Relevance of every input token of ``inputs`` for one output per prompt.

    ``inputs``: a Task (the output is its metric, per prompt, on the clean prompts; its
    corrupted prompts are the 'corrupt' IG baseline) or plain prompts (a string, a list of
    strings, or token ids; the output is the logit of ``target`` at each prompt's last token,
    by default the model's own top prediction). ``method``: 'ig', 'relp' or 'alti'.
    ``options``: the fields of the method's options dataclass (``METHODS[method][0]``), e.g.
    ``baseline='pad', steps=64`` for IG, ``attention='attnlrp'`` for RelP.

    Why: a token heatmap is the first look at what a prompt's answer rests on; the methods
    disagree in instructive ways, and each says what its scores add up to (``result.total``),
    so the map can be checked, not just looked at.
    """
    from circuitlab.api import exclusive
    from circuitlab.validate import check_choice, suggest

    check_choice("input-relevance method", method, METHODS)
    opt_cls, run = METHODS[method]
    fields = list(opt_cls.__dataclass_fields__)
    for name in options:
        if name not in fields:
            raise ValueError(f"unknown option {name!r} for input-relevance method {method!r}{suggest(name, fields)}")
    opts = opt_cls(**options)
    with exclusive(model):
        ex = explained(model, inputs, target)
        out = run(model, ex, opts)
    lengths = ex.lengths.cpu()
    scores = out["scores"] * (torch.arange(ex.tokens.shape[1])[None] < lengths[:, None])
    from circuitlab.methods.logit_lens import decode_each

    toks = [decode_each(model.tokenizer, row[: int(n)].tolist()) for row, n in zip(ex.tokens.cpu(), lengths)]
    meta = dict(out["meta"], targets=ex.targets) if ex.targets is not None else out["meta"]
    return InputRelevance(method, out["label"], scores, toks, lengths, ex.read.cpu(),
                          "residual stream" if method == "alti" else ex.output, out["total"], meta)
