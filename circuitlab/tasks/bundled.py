"""Bundled task generators: the zoo's synthetic world for zoo models, real language otherwise.

On a zoo model (its name, or the zoo's word-level tokenizer) prompts come from
:mod:`circuitlab.zoo.corpus`, and evaluation defaults to ``split="heldout"``: phrasings never
seen in training. On any other model they come from :mod:`circuitlab.tasks.real`, in the form of
the papers that introduced each task (``split`` does not apply there). For prompts of your own
use ``from_pairs``.
"""

from __future__ import annotations

import torch

from circuitlab.tasks import metrics as M
from circuitlab.tasks.task import Task, from_pairs
from circuitlab.tasks.tokenize import is_zoo_tokenizer, single_token


def is_zoo(model) -> bool:
    """Whether ``model`` speaks the zoo's synthetic language (a zoo name or the zoo tokenizer)."""
    from circuitlab.zoo import list_models

    return model.name in list_models() or is_zoo_tokenizer(model.tokenizer)


def ioi(model, n: int = 64, seed: int = 0, split: str = "heldout", corrupt: str = "abc",
        metric: str = "logit_diff") -> Task:
    """Indirect object identification; roles S1, IO, S2, END; ABC corruption by default
    (zoo: S2 -> a third name, or "swap"; real: see :data:`circuitlab.tasks.real.ioi_prompts.CORRUPTIONS`)."""
    if not is_zoo(model):
        from circuitlab.tasks import real

        return real.ioi(model, n=n, seed=seed, corrupt=corrupt, metric=metric)
    from circuitlab.zoo import corpus

    return from_pairs(model, corpus.ioi(n, seed=seed, split=split, corrupt=corrupt), metric, name="ioi")


def capitals(model, n: int = 64, seed: int = 0, split: str = "heldout", hop: int = 1,
             metric: str = "logit_diff") -> Task:
    """Factual recall of capitals (hop=2: via the language, zoo only); corrupt = another country."""
    if not is_zoo(model):
        if hop != 1:
            raise ValueError("two-hop capitals exist only in the zoo's world; use hop=1 on this model")
        from circuitlab.tasks import real

        return real.factual(model, n=n, seed=seed, relation="capital", metric=metric)
    from circuitlab.zoo import corpus

    return from_pairs(model, corpus.capitals(n, seed=seed, split=split, hop=hop), metric, name=f"capitals{hop}")


def greater_than(model, n: int = 64, seed: int = 0, split: str = "heldout", year_format: str = "auto") -> Task:
    """Greater-than: metric = probability on years above the start year minus below it
    (``year_format``, real models only: see :mod:`circuitlab.tasks.real.greater_than_prompts`)."""
    if not is_zoo(model):
        from circuitlab.tasks import real

        return real.greater_than(model, n=n, seed=seed, year_format=year_format)
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
    or "logit_diff" at the last position. Real models: random word tokens of their vocabulary."""
    if not is_zoo(model):
        from circuitlab.tasks import real

        return real.induction(model, n=n, seed=seed, half_len=half_len, metric=metric)
    from circuitlab.zoo import corpus

    records = corpus.induction(n, seed=seed, split=split, half_len=half_len)
    task = from_pairs(model, records, "logit_diff", name="induction")
    if metric == "loss":
        L = half_len
        pos = torch.arange(1 + L, 2 * L)[None].expand(n, -1)  # second repeat, predicting words 2..L
        tgt = torch.stack([torch.tensor([single_token(model.tokenizer, " " + w) for w in r["words"][1:]])
                           for r in records]).to(model.device)
        task.metric = M.mean_loss(pos.to(model.device), tgt, torch.ones_like(tgt, dtype=torch.bool))
    elif metric != "logit_diff":
        raise ValueError(f"induction metric must be 'loss' or 'logit_diff', not {metric!r}")
    return task


def factual(model, n: int = 64, seed: int = 0, split: str = "heldout", relation: str = "capital",
            metric: str = "logit_diff") -> Task:
    """Factual recall; corrupt = another subject of the relation. Relations: zoo "capital",
    "language", "continent", "multihop"; real "capital", "language", "landmark"."""
    if not is_zoo(model):
        from circuitlab.tasks import real

        return real.factual(model, n=n, seed=seed, relation=relation, metric=metric)
    from circuitlab.zoo import corpus

    return from_pairs(model, corpus.facts(relation, n=n, seed=seed, split=split), metric, name=f"factual_{relation}")


def counterfact(model, n: int = 64, seed: int = 0, relation: str = "capital", target: str = "context",
                metric: str = "logit_diff") -> Task:
    """An in-context statement contradicting a fact, then the fact's prompt (real language on
    every model; see :mod:`circuitlab.tasks.real.fact_prompts`)."""
    from circuitlab.tasks import real

    return real.counterfact(model, n=n, seed=seed, relation=relation, target=target, metric=metric)


BUNDLED = {"ioi": ioi, "capitals": capitals, "greater_than": greater_than, "induction": induction,
           "factual": factual, "counterfact": counterfact}


def bundled(model, name: str, **kwargs) -> Task:
    """The bundled task ``name`` (a key of :data:`BUNDLED`) for ``model``."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled task {name!r}; choose from {', '.join(BUNDLED)} or give a JSONL path")
    return BUNDLED[name](model, **kwargs)
