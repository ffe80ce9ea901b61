"""RelP (Rezaei Jafari et al. 2025): AtP with LRP rules in the backward pass.

I(n) = (n(x_source) - n(x_base)) . R(n), where R is the gradient under the rules of
relp_rules.py; forward values are unchanged. Cost is AtP's: two forward, one backward pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

from circuitlab.methods.atp import atp_scores
from circuitlab.methods.attribution import make_result, node_values, prepare
from circuitlab.methods.registry import NodeOptions, node_method
from circuitlab.methods.relp_rules import ATTENTION_RULES, final_norm_rule, relp_hooks
from circuitlab.result import Result

REFUSED_WITH_PATTERN_RULE = ("q", "k", "q_all", "k_all", "pattern")


@dataclass
class RelPOptions(NodeOptions):
    """Options of RelP."""

    attention: str = "pattern"
    """Rule through attention: 'pattern' (patterns held constant, the LRP rule; refuses query
    and key nodes, which then get no attribution) or 'attnlrp' (AttnLRP's rule)."""

    def __post_init__(self):
        from circuitlab.validate import check_choice

        check_choice("attention rule", self.attention, ATTENTION_RULES)


@node_method("relp", RelPOptions, order=3)
def relp(model, task, sites: str = "mlp_out", direction: str = "denoising",
         positions: Optional[Sequence[int | str]] = None, layers: Optional[Sequence[int]] = None,
         attention: str = "pattern") -> Result:
    """RelP: AtP with LRP rules in the backward pass (same cost as AtP)."""
    if attention == "pattern" and sites in REFUSED_WITH_PATTERN_RULE:
        raise ValueError(
            f"RelP with the attention-pattern rule treats patterns as constants, so {sites!r} nodes get "
            "no attribution; use attention='attnlrp', or method 'atp*' for query/key nodes. RelP supports: "
            "resid_pre, resid_mid, resid_post, attn_out, mlp_out, heads, heads_all, v, v_all, neurons")
    t0 = time.perf_counter()
    base, src, grid = prepare(model, task, sites, direction, positions, layers)
    with final_norm_rule(model):
        scores, baseline = atp_scores(model, task, base, src, grid, extra_hooks=relp_hooks(model, attention))
    values = node_values(grid.nodes, scores, task.roles, base.shape[0])
    return make_result(grid, values, "relp", sites, direction, task, baseline, t0, 2, 1,
                       meta={"attention_rule": attention})
