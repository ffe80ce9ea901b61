"""How well a model does each bundled task: accuracy on clean prompts and the task metric on
clean and corrupted prompts. Real models get the real-language tasks (circuitlab.tasks.real);
zoo models their synthetic world (variants a zoo model lacks are reported as unavailable).

Per task: ``pair_acc`` = share of clean prompts with logit(answer) > logit(wrong); ``top1_acc``
= share where the answer is the argmax over the vocabulary (for greater-than: where the argmax
is a later year or decade); ``positive`` = share of clean prompts with a metric value on the
right side (> 0, or below the corrupted value for losses); ``clean`` / ``corrupt`` = mean
metric on clean / corrupted prompts.

    python benchmarks/task_accuracy.py                       # SmolLM2-135M, 32 prompts per task
    python benchmarks/task_accuracy.py --model gpt2-zoo --n 32
    python benchmarks/task_accuracy.py --first-token "<|endoftext|>"   # another document start

Prompts start with the tokenizer's BOS (circuitlab.tasks.tokenize.bos_id). SmolLM2-Instruct
names its chat marker <|im_start|> as BOS; ``--first-token`` measures the tasks with another
first token (the pretraining document separator <|endoftext|>) for comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

TASKS = (
    ("ioi_abc", "ioi", {"corrupt": "abc"}),
    ("ioi_s2", "ioi", {"corrupt": "s2"}),
    ("ioi_swap", "ioi", {"corrupt": "swap"}),
    ("greater_than", "greater_than", {}),
    ("factual_capital", "factual", {"relation": "capital"}),
    ("factual_language", "factual", {"relation": "language"}),
    ("factual_landmark", "factual", {"relation": "landmark"}),
    ("counterfact_context", "counterfact", {"target": "context"}),
    ("counterfact_memory", "counterfact", {"target": "memory"}),
    ("induction", "induction", {}),
)
"""(label, bundled task name, arguments)."""


def logits_at(model, tokens: torch.Tensor, positions: torch.Tensor, cache: dict) -> torch.Tensor:
    """[prompts, k, vocab] logits at ``positions``; full-sequence logits cached per prompt batch
    (tasks sharing prompts share forward passes)."""
    key = tokens.cpu().numpy().tobytes() + bytes(str(tuple(tokens.shape)), "ascii")
    if key not in cache:
        with torch.no_grad():
            cache[key] = model.bridge(tokens).float()
    full = cache[key]
    return full.gather(1, positions[..., None].expand(-1, -1, full.shape[-1]))


def evaluate(model, task, cache: dict) -> dict:
    m = task.metric
    rows = torch.arange(len(task), device=task.clean_tokens.device)
    clean = m.per_prompt(logits_at(model, task.clean_tokens, m.positions, cache), rows)
    corrupt = m.per_prompt(logits_at(model, task.corrupt_tokens, m.positions, cache), rows)
    end = logits_at(model, task.clean_tokens, task.answer_pos[:, None], cache)[:, 0]
    a = end.gather(1, task.answer_ids[:, None])[:, 0]
    w = end.gather(1, task.wrong_ids[:, None])[:, 0]
    top = end.argmax(-1)
    if m.name == "prob_diff":  # greater-than: the argmax is some later year (decade)
        weights = m.per_prompt(torch.nn.functional.one_hot(top, end.shape[-1]).float()[:, None] * 1e4, rows)
        top1 = (weights > 0).float().mean()
    else:
        top1 = (top == task.answer_ids).float().mean()
    right = clean > 0 if m.higher_is_better else clean < corrupt
    return {"n": len(task), "metric": m.name, "pair_acc": round(float((a > w).float().mean()), 4),
            "top1_acc": round(float(top1), 4), "positive": round(float(right.float().mean()), 4),
            "clean": round(float(clean.mean()), 4), "corrupt": round(float(corrupt.mean()), 4),
            "example": {k: task.prompts[0][k] for k in ("clean", "corrupt", "answer", "wrong")}}


def main() -> None:
    import circuitlab as cl
    from circuitlab.tasks.bundled import is_zoo
    from circuitlab.tasks.tokenize import bos_id

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="fetched model, zoo name or Hugging Face folder")
    p.add_argument("--n", type=int, default=32, help="prompts per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the machine may be shared)")
    p.add_argument("--first-token", default=None, help="special token to put at position 0 instead of the BOS")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/task_accuracy_<model>.json)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model = cl.load(a.model)
    short = Path(a.model).name
    first = None if a.first_token is None else model.tokenizer.convert_tokens_to_ids(a.first_token)
    if first is not None and model.tokenizer.convert_ids_to_tokens(first) != a.first_token:
        raise SystemExit(f"{a.first_token!r} is not a token of this tokenizer")
    out = {"model": short, "n": a.n, "seed": a.seed, "zoo": is_zoo(model),
           "first_token": a.first_token or model.tokenizer.convert_ids_to_tokens(bos_id(model.tokenizer)),
           "tasks": {}}
    cache: dict = {}
    for label, name, kw in TASKS:
        t = time.perf_counter()
        try:
            task = cl.tasks.bundled(model, name, n=a.n, seed=a.seed, **kw)
        except ValueError as e:
            out["tasks"][label] = {"unavailable": str(e)}
            print(f"{label:22s} unavailable: {e}")
            continue
        if first is not None:
            task.clean_tokens[:, 0] = first
            task.corrupt_tokens[:, 0] = first
        row = evaluate(model, task, cache)
        out["tasks"][label] = row
        print(
            f"{label:22s} pair {row['pair_acc']:.3f}  top1 {row['top1_acc']:.3f}  positive {row['positive']:.3f}  "
            f"{row['metric']} clean {row['clean']:.3f} corrupt {row['corrupt']:.3f}  ({time.perf_counter() - t:.1f}s)"
        )
    out["seconds"] = round(time.perf_counter() - t0, 1)
    suffix = "" if a.first_token is None else "_first-" + "".join(c for c in a.first_token if c.isalnum())
    path = Path(a.out or Path(__file__).parent / "results" / f"task_accuracy_{short}{suffix}.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} in {out['seconds']}s")


if __name__ == "__main__":
    main()
