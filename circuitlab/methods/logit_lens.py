"""Logit lens: read the answer-vs-wrong logit difference off every layer's residual stream.

Each layer's residual is passed through the final norm with ITS OWN statistics (not the cached
final scale) and the unembedding, at each prompt's answer position.
"""

from __future__ import annotations

import time

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.forward import final_logits
from circuitlab.result import Cost, Result


def logit_lens(model, task, tokens: str = "clean") -> Result:
    """Values [n_layers + 1]: after the embeddings, then after each block (mean over prompts)."""
    t0 = time.perf_counter()
    toks = task.clean_tokens if tokens == "clean" else task.corrupt_tokens
    L = model.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(L)]
    c = capture(model, toks, names)
    b = torch.arange(toks.shape[0], device=toks.device)
    vals, top = [], []
    with torch.no_grad():
        for n in names:
            logits = final_logits(model, c[n][b, task.answer_pos])
            vals.append((logits[b, task.answer_ids] - logits[b, task.wrong_ids]).mean())
            top.append(model.tokenizer.convert_ids_to_tokens(logits[0].argmax().item()))
    labels = ["embed"] + [f"L{l}.resid_post" for l in range(L)]
    return Result(torch.stack(vals).cpu(), labels, ("layer",), "logit_lens", "resid", tokens, "logit_diff",
                  float(vals[-1]), Cost(1, 0, time.perf_counter() - t0), meta={"top_token_prompt0": top})
