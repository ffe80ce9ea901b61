"""Real-language tasks for pretrained models, in the form of the papers that introduced them.

Each builder draws prompts for any tokenizer: word lists are filtered to words the model's
tokenizer writes as one token with a leading space, so clean and corrupted prompts align
token by token. ``circuitlab.tasks.ioi(model)`` and its siblings call these for every model
but the zoo's (which keeps its synthetic world).
"""

from __future__ import annotations

import torch

from circuitlab.tasks import metrics as M
from circuitlab.tasks.real import fact_prompts as _facts
from circuitlab.tasks.real import greater_than_prompts as _gt
from circuitlab.tasks.real import induction_prompts as _ind
from circuitlab.tasks.real import ioi_prompts as _ioi
from circuitlab.tasks.task import Task, from_pairs


def ioi(model, n: int = 64, seed: int = 0, corrupt: str = "abc", metric: str = "logit_diff") -> Task:
    """Wang et al.'s IOI prompts; roles S1, IO, S2, END; corrupt "abc", "s2" or "swap"
    (see :data:`circuitlab.tasks.real.ioi_prompts.CORRUPTIONS`)."""
    return from_pairs(model, _ioi.records(model.tokenizer, n, seed, corrupt), metric, name="ioi")


def greater_than(model, n: int = 64, seed: int = 0, year_format: str = "auto") -> Task:
    """Hanna et al.'s greater-than; metric = probability on later years (or decades, for
    tokenizers that split digits) minus probability on earlier ones. See
    :mod:`circuitlab.tasks.real.greater_than_prompts`."""
    records = _gt.records(model.tokenizer, n, seed, year_format)
    task = from_pairs(model, records, "logit_diff", name="greater_than")
    task.answer_ids = torch.tensor([r["answer_id"] for r in records], device=task.answer_ids.device)
    task.wrong_ids = torch.tensor([r["wrong_id"] for r in records], device=task.wrong_ids.device)
    w = torch.zeros(len(records), model.d_vocab)
    for i, r in enumerate(records):
        for tok, sign in _gt.signed_tokens(model.tokenizer, r).items():
            w[i, tok] = float(sign)
    task.metric = M.prob_diff(task.answer_pos, w.to(model.device), name="prob_diff")
    return task


def factual(model, n: int = 64, seed: int = 0, relation: str = "capital", metric: str = "logit_diff") -> Task:
    """Factual recall of real entities; ``relation`` "capital", "language" or "landmark"."""
    records = _facts.records(model.tokenizer, n, seed, relation)
    return from_pairs(model, records, metric, name=f"factual_{relation}")


def counterfact(model, n: int = 64, seed: int = 0, relation: str = "capital", target: str = "context",
                metric: str = "logit_diff") -> Task:
    """Yu et al.'s counterfactual prefix; ``target`` "context" (answer = the in-context object)
    or "memory" (answer = the memorised one). See :mod:`circuitlab.tasks.real.fact_prompts`."""
    records = _facts.counterfact_records(model.tokenizer, n, seed, relation, target)
    return from_pairs(model, records, metric, name=f"counterfact_{relation}")


def induction(model, n: int = 64, seed: int = 0, half_len: int = 12, metric: str = "loss") -> Task:
    """Repeated random word tokens; metric = mean loss on the second repeat (lower is better),
    or "logit_diff" at the last position."""
    if metric not in ("loss", "logit_diff"):
        raise ValueError(f"induction metric must be 'loss' or 'logit_diff', not {metric!r}")
    records = _ind.records(model.tokenizer, n, seed, half_len, limit=model.d_vocab)
    task = from_pairs(model, records, "logit_diff", name="induction")
    if metric == "loss":
        L = half_len
        pos = torch.arange(1 + L, 2 * L)[None].expand(n, -1)
        tgt = torch.tensor([r["ids"][1:] for r in records])
        valid = torch.ones_like(tgt, dtype=torch.bool)
        task.metric = M.mean_loss(pos.to(model.device), tgt.to(model.device), valid.to(model.device))
    return task


__all__ = ["ioi", "greater_than", "factual", "counterfact", "induction"]
