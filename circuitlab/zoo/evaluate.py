"""Held-out accuracy of a zoo model, computed directly with the HF model.

Why standalone (no engine, no ``circuitlab.tasks``): these numbers certify the bundled
weights themselves, so they must not depend on the code they are meant to support. All
prompts come from the ``split="heldout"`` generators: phrasings or sequences never seen in
training, made of trained tokens.

Metrics (see :data:`ACCEPTANCE` for the bars the GPT-2 zoo model must clear):

- ``ioi_top1``: the indirect object is the argmax next token.
- ``induction_top1``: on ``<bos> w1..wL w1..wL``, the argmax at each position of the second
  repeat (except its last) is the next word; averaged over positions and sequences.
- ``capital_top1`` / ``multihop_top1`` (+ ``_seen`` / ``_unseen``: countries whose multi-hop
  sentences were / were not in training) / ``language_top1`` / ``continent_top1``.
- ``greater_than_prob_diff``: probability mass on two-digit years above the start year minus
  mass on years below it (full softmax), averaged over prompts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from . import corpus

ACCEPTANCE: dict[str, float] = {"ioi_top1": 0.95, "induction_top1": 0.95,
                                "capital_top1": 0.95, "greater_than_prob_diff": 0.8}
"""Minimum held-out scores for the bundled GPT-2 zoo model."""


def _encode(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def last_logits(model: PreTrainedModel, tok: Any, prompts: list[str],
                batch_size: int = 128) -> torch.Tensor:
    """``[len(prompts), vocab]`` next-token logits at each prompt's last token.

    Prompts of equal token length are batched together (no padding is needed)."""
    ids = [_encode(tok, p) for p in prompts]
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, x in enumerate(ids):
        by_len[len(x)].append(i)
    out = torch.empty(len(prompts), model.config.vocab_size)
    for idx in by_len.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            batch = torch.tensor([ids[i] for i in chunk], device=model.device)
            out[chunk] = model(input_ids=batch, attention_mask=torch.ones_like(batch)
                               ).logits[:, -1].float().cpu()
    return out


def _top1(model: PreTrainedModel, tok: Any, examples: list[dict]) -> float:
    logits = last_logits(model, tok, [e["clean"] for e in examples])
    answers = torch.tensor([_encode(tok, e["answer"])[0] for e in examples])
    return (logits.argmax(-1) == answers).float().mean().item()


@torch.no_grad()
def induction_top1(model: PreTrainedModel, tok: Any, n: int = 200, seed: int = 0,
                   half_len: int = 12) -> float:
    """Top-1 accuracy over the second repeat of held-out random sequences."""
    exs = corpus.induction(n, seed=seed, split="heldout", half_len=half_len)
    full = torch.tensor([_encode(tok, e["clean"] + e["answer"]) for e in exs],
                        device=model.device)
    pred = model(input_ids=full, attention_mask=torch.ones_like(full)).logits.argmax(-1).cpu()
    s = exs[0]["second"]
    target = full.cpu()[:, s + 1:]
    return (pred[:, s:-1] == target).float().mean().item()


@torch.no_grad()
def greater_than_prob_diff(model: PreTrainedModel, tok: Any, n: int = 400,
                           seed: int = 0) -> float:
    """Mean P(year > start) - P(year < start) over held-out greater-than prompts."""
    exs = corpus.greater_than(n, seed=seed, split="heldout")
    probs = last_logits(model, tok, [e["clean"] for e in exs]).softmax(-1)
    year_ids = torch.tensor([_encode(tok, f"{y:02d}")[0] for y in range(100)])
    year_p = probs[:, year_ids]
    start = torch.tensor([e["start_yy"] for e in exs]).unsqueeze(1)
    yy = torch.arange(100).unsqueeze(0)
    above = (year_p * (yy > start)).sum(-1)
    below = (year_p * (yy < start)).sum(-1)
    return (above - below).mean().item()


def evaluate_model(model: PreTrainedModel, tok: Any, seed: int = 0,
                   n: int = 400) -> dict[str, float]:
    """All held-out metrics of one model (see module docstring)."""
    model.eval()
    res: dict[str, float] = {}
    res["ioi_top1"] = _top1(model, tok, corpus.ioi(n, seed=seed, split="heldout"))
    res["induction_top1"] = induction_top1(model, tok, n=n // 2, seed=seed)
    res["greater_than_prob_diff"] = greater_than_prob_diff(model, tok, n=n, seed=seed)
    for rel in ("capital", "language", "continent"):
        res[f"{rel}_top1"] = _top1(model, tok, corpus.facts(rel, split="heldout"))
    mh = corpus.facts("multihop", split="heldout")
    res["multihop_top1"] = _top1(model, tok, mh)
    res["multihop_top1_seen"] = _top1(model, tok, [e for e in mh if e["multihop_trained"]])
    res["multihop_top1_unseen"] = _top1(
        model, tok, [e for e in mh if not e["multihop_trained"]])
    return res


def passes(results: dict[str, float]) -> dict[str, bool]:
    """Which :data:`ACCEPTANCE` bars ``results`` clears."""
    return {k: results[k] >= v for k, v in ACCEPTANCE.items()}


def evaluate_dir(folder: str | Path, tokenizer_dir: str | Path | None = None,
                 **kwargs: Any) -> dict[str, float]:
    """Load an HF model folder (tokenizer from ``tokenizer_dir`` or the folder) and evaluate."""
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir or folder))
    return evaluate_model(model, tok, **kwargs)


if __name__ == "__main__":
    import sys
    print(json.dumps(evaluate_dir(sys.argv[1]), indent=1))
