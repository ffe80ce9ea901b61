"""RelP / AttnLRP as an input attribution: LRP rules in the backward pass, read at the embeddings.

relevance(token t) = sum over d_model of x_t * R_t, where R is the gradient of the output under
the LRP rules of circuitlab.methods.relp_rules and x_t the token embedding. Under those rules
(norm scales and activation ratios held constant, the attention pattern held constant) the
model is linear in its input plus a constant made of every bias, so the relevance of everything
entering the residual stream (token embeddings, and learned position embeddings where the model
has them) adds up to output - (bias share). Conservation is therefore exact for bias-free models
with the 'pattern' rule (Llama, Qwen2 without its q/k/v biases, Gemma) and outputs linear in the
logits; biases (GPT-2, Qwen2's q/k/v) and the 'attnlrp' rule's softmax gradient leave a gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlab.engine.gradients import forward_for_grads
from circuitlab.engine.sites import hook_name
from circuitlab.methods.input_relevance.explained import Explained
from circuitlab.methods.relp_rules import ATTENTION_RULES, final_norm_rule, relp_hooks


@dataclass
class RelPInputOptions:
    """Options of LRP input relevance."""

    attention: str = "pattern"
    """Rule through attention: 'pattern' (the pattern is a constant: conservative) or 'attnlrp'
    (AttnLRP's halved gradients through the pattern, values, queries and keys)."""
    max_rows: int = 256
    """Prompts per forward pass."""

    def __post_init__(self):
        from circuitlab.validate import check_choice, check_positive_int

        check_choice("attention rule", self.attention, ATTENTION_RULES)
        check_positive_int("max_rows", self.max_rows)


def lrp_relevance(model, ex: Explained, opts: RelPInputOptions) -> dict:
    """Scores [prompts, pos], totals (the outputs) [prompts] and meta of LRP on ``ex``."""
    embed, resid = hook_name("embed"), hook_name("resid_pre", 0)
    scores = torch.zeros(ex.tokens.shape, dtype=torch.float64)
    position = torch.zeros(ex.tokens.shape, dtype=torch.float64)
    outputs = torch.zeros(len(ex), dtype=torch.float64)
    for idx in torch.arange(len(ex)).split(opts.max_rows):
        with final_norm_rule(model):
            run = forward_for_grads(model, ex.tokens[idx], ex.summed(idx), [embed, resid],
                                    extra_hooks=relp_hooks(model, opts.attention))
            g = run.grads()
        x, r = run.acts[embed].detach(), run.acts[resid].detach()
        scores[idx] = (x * g[embed]).sum(-1).double().cpu()
        # what else enters the residual stream with the token (a learned position embedding)
        position[idx] = ((r - x) * g[resid]).sum(-1).double().cpu()
        outputs[idx] = run.per_prompt.double().cpu()
    meta = {"attention": opts.attention, "output_input": outputs.tolist(),
            "position_relevance": position.sum(-1).tolist()}
    return {"scores": scores, "total": outputs, "label": f"relp ({opts.attention})", "meta": meta}
