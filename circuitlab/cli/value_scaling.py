"""Worked example: scaling one head's value vectors shifts a factual-recall answer.

After "Characterizing Mechanisms for Factual Recall in Language Models" (Yu, Merullo & Pavlick
2023), which scales the value vectors of selected heads to move a model between answers. Here the
head is the one whose direct logit attribution to (answer - wrong) is largest on the clean
prompts (or the one given); its value vectors are multiplied by each scale, and we report the
mean logit difference, how often the answer beats the wrong token, and one greedy continuation.
Runs on any model and task; with the zoo GPT-2 use ``cl.tasks.capitals(model)``. Run it as
``python -m circuitlab.cli.value_scaling [--model gpt2-zoo] [--task capitals]``.

The command ``circuitlab value-scaling`` runs the full study of
:mod:`circuitlab.circuits.factual_recall` (counterfactual-prefix prompts, heads ranked by DLA,
the answer-rate curve) and writes its JSON and page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from circuitlab.engine.interventions import Intervention, generate, score
from circuitlab.engine.sites import Node


def strongest_head(model, task) -> tuple[int, int]:
    """(layer, head) with the largest direct logit attribution on the clean prompts."""
    import circuitlab as cl

    r = cl.dla(model, task, by="head")
    flat = int(r.values.flatten().argmax())
    return divmod(flat, model.n_heads)


def value_scaling(model, task, layer: Optional[int] = None, head: Optional[int] = None,
                  scales: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0), new_tokens: int = 3) -> dict:
    """Metric, answer-over-wrong accuracy and a greedy continuation for each value scale."""
    if layer is None or head is None:
        layer, head = strongest_head(model, task)
    kv = head // (model.n_heads // model.heads_in("v"))  # the key/value head this query head reads
    node = Node(layer, "v", head=kv)
    rows = []
    first = task.clean_tokens[0, : int(task.lengths[0])]
    for s in scales:
        iv = [Intervention(node, "scale", float(s))]
        pp = score(model, task.clean_tokens, task.metric, iv)
        out = generate(model, first, new_tokens, iv)
        rows.append({"scale": float(s), "metric": float(task.metric.reduce(pp[None])[0]),
                     "answer_wins": _wins(model, task, iv),
                     "continuation": model.tokenizer.decode(out[len(first):].tolist())})
    return {"layer": layer, "head": head, "value_head": str(node), "prompt": model.tokenizer.decode(first.tolist()),
            "rows": rows}


def _wins(model, task, interventions) -> float:
    """Fraction of prompts whose answer logit beats the wrong token's under the interventions."""
    from circuitlab.tasks.metrics import logit_diff

    ld = logit_diff(task.answer_pos, task.answer_ids, task.wrong_ids)
    return float((score(model, task.clean_tokens, ld, interventions) > 0).float().mean())


EXAMPLES = """examples:
  circuitlab value-scaling --model smollm2-135m --out runs/value-scaling
  circuitlab value-scaling --model smollm2-135m --top 4 --scales 0,0.5,1,2,4,8 --n 64 --out DIR
  circuitlab value-scaling --model gpt2-zoo --promotes memorised --out DIR
Prompts state a false fact, then ask for it ("The capital of France is Rome. The capital of France is");
heads are ranked by DLA to logit(in-context) - logit(memorised); the value vectors of the --top heads
promoting the in-context answer (or, with --promotes memorised, the memorised one) are scaled.
Writes DIR/value_scaling.json and DIR/value_scaling.html (the answer-rate curve and the head table)."""


def add_parser(sub, fmt) -> None:
    p = sub.add_parser("value-scaling", help="factual recall vs in-context answer: heads by DLA, value-scaling curve",
                       epilog=EXAMPLES, formatter_class=fmt)
    p.add_argument("--model", default=None, help="model name or path (default: the bundled GPT-2 zoo model)")
    p.add_argument("--relation", default="capital", help="relation of the prompts (default capital)")
    p.add_argument("--n", type=int, default=32, help="prompts (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=4, help="heads scaled together (default 4)")
    p.add_argument("--scales", default="0,0.5,1,2,4,8", help="comma-separated value scales (default 0,0.5,1,2,4,8)")
    p.add_argument("--promotes", default="context", choices=("context", "memorised"),
                   help="scale the heads promoting the in-context answer (default) or the memorised one")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(fn=run)


def parse_scales(text: str) -> tuple[float, ...]:
    """``--scales 0,1,2.5`` -> (0.0, 1.0, 2.5), each a finite number."""
    import math

    out = []
    for t in text.split(","):
        try:
            v = float(t)
        except ValueError:
            raise ValueError(f"--scales {text!r}: {t.strip()!r} is not a number; give e.g. 0,0.5,1,2,4") from None
        if not math.isfinite(v):
            raise ValueError(f"--scales {text!r}: {t.strip()!r} is not finite")
        out.append(v)
    return tuple(out)


def run(a) -> None:
    from circuitlab.circuits.factual_recall import ValueScalingConfig, value_scaling_study
    from circuitlab.cli.checks import check_out_arg
    from circuitlab.resolve import load_model

    cfg = ValueScalingConfig(relation=a.relation, n=a.n, seed=a.seed, top=a.top, scales=parse_scales(a.scales),
                             promotes=a.promotes)
    check_out_arg(a.out)
    model = load_model(a.model)
    st = value_scaling_study(model, cfg)
    js, page = st.save(Path(a.out))
    print(f"{st.n_prompts} prompts, e.g. {st.example!r}")
    print("in-context heads (DLA): " + ", ".join(f"L{l}.H{h} {d:+.3f}" for l, h, d in st.context_heads))
    print("memorised heads (DLA):  " + ", ".join(f"L{l}.H{h} {d:+.3f}" for l, h, d in st.memorised_heads))
    print(f"{'scale':>6} {'in-context':>11} {'memorised':>10} {'prefers ctx':>12} {'logit diff':>11}")
    for r in st.rows:
        print(f"{r.scale:>6.2f} {r.context_rate:>11.2f} {r.memorised_rate:>10.2f} {r.prefers_context:>12.2f} "
              f"{r.logit_diff:>11.3f}")
    print(f"wrote {js} and {page}")


def main(argv=None) -> None:
    """``python -m circuitlab.cli.value_scaling [--model gpt2-zoo] [--task capitals]``."""
    import argparse

    import circuitlab as cl

    ap = argparse.ArgumentParser(description="Scale one head's value vectors and watch the factual answer move.")
    ap.add_argument("--model", default="gpt2-zoo")
    ap.add_argument("--task", default="capitals", help="bundled task or JSONL of {clean, corrupt, answer, wrong}")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--head", type=int, default=None)
    ap.add_argument("--n", type=int, default=32)
    a = ap.parse_args(argv)
    from circuitlab.resolve import load_task

    model = cl.load(a.model)
    task = load_task(model, a.task, a.n, 0)
    out = value_scaling(model, task, a.layer, a.head)
    print(f"head L{out['layer']}.H{out['head']} (value vectors {out['value_head']}); prompt: {out['prompt']!r}")
    print(f"{'scale':>6} {'metric':>9} {'answer wins':>12}  continuation")
    for r in out["rows"]:
        print(f"{r['scale']:>6.2f} {r['metric']:>9.3f} {r['answer_wins']:>12.2f}  {r['continuation']!r}")


if __name__ == "__main__":
    main()
