"""Bundled task generators over the zoo's synthetic world (see circuitlab.zoo.corpus).

They produce prompts in the zoo models' vocabulary; for other models use ``from_pairs``.
Evaluation defaults to ``split="heldout"``: phrasings never seen in training.
"""

from __future__ import annotations

import torch

from circuitlab.tasks import metrics as M
from circuitlab.tasks.task import Task, from_pairs
from circuitlab.tasks.tokenize import single_token


def ioi(model, n: int = 64, seed: int = 0, split: str = "heldout", corrupt: str = "abc",
        metric: str = "logit_diff") -> Task:
    """Indirect object identification; roles S1, IO, S2, END; ABC corruption by default."""
    from circuitlab.zoo import corpus

    return from_pairs(model, corpus.ioi(n, seed=seed, split=split, corrupt=corrupt), metric, name="ioi")


def capitals(model, n: int = 64, seed: int = 0, split: str = "heldout", hop: int = 1,
             metric: str = "logit_diff") -> Task:
    """Factual recall of capitals (hop=2: via the language); corrupt = another country."""
    from circuitlab.zoo import corpus

    return from_pairs(model, corpus.capitals(n, seed=seed, split=split, hop=hop), metric, name=f"capitals{hop}")


def greater_than(model, n: int = 64, seed: int = 0, split: str = "heldout") -> Task:
    """Greater-than: metric = probability on years above the start year minus below it."""
    from circuitlab.zoo import corpus

    records = corpus.greater_than(n, seed=seed, split=split)
    task = from_pairs(model, records, "logit_diff", name="greater_than")
    years = torch.tensor([single_token(model.tokenizer, f" {y:02d}") for y in range(100)])
    w = torch.zeros(len(records), model.d_vocab)
    for i, r in enumerate(records):
        yy = torch.arange(100)
        w[i, years] = (yy > r["start_yy"]).float() - (yy < r["start_yy"]).float()
    task.metric = M.prob_diff(task.answer_pos, w.to(model.device), name="prob_diff")
    return task


def induction(model, n: int = 64, seed: int = 0, split: str = "heldout", half_len: int = 12,
              metric: str = "loss") -> Task:
    """Repeated random sequences; metric = mean loss on the second repeat (lower is better),
    or "logit_diff" at the last position."""
    from circuitlab.zoo import corpus

    records = corpus.induction(n, seed=seed, split=split, half_len=half_len)
    task = from_pairs(model, records, "logit_diff", name="induction")
    if metric == "loss":
        L = half_len
        pos = torch.arange(1 + L, 2 * L)[None].expand(n, -1)  # second repeat, predicting words 2..L
        tgt = torch.stack([torch.tensor([single_token(model.tokenizer, " " + w) for w in r["words"][1:]]) for r in records])
        task.metric = M.mean_loss(pos.to(model.device), tgt.to(model.device), torch.ones_like(tgt, dtype=torch.bool).to(model.device))
    elif metric != "logit_diff":
        raise ValueError(f"induction metric must be 'loss' or 'logit_diff', not {metric!r}")
    return task


BUNDLED = {"ioi": ioi, "capitals": capitals, "greater_than": greater_than, "induction": induction}


def bundled(model, name: str, **kwargs) -> Task:
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled task {name!r}; choose from {', '.join(BUNDLED)} or give a JSONL path")
    return BUNDLED[name](model, **kwargs)
