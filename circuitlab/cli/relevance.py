"""``circuitlab relevance``: input-token relevance (IG, RelP, ALTI) of a prompt or a bundled task,
as an offline token-heatmap page and a JSON of the scores."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = """examples:
  circuitlab relevance --prompt '<bos> The capital of France is' --target ' Paris' --method ig --out page.html
  circuitlab relevance --prompt '<bos> The capital of France is' --target ' Paris' --wrong ' Madrid' \\
      --method ig,relp,alti --baseline pad --out page.html
  circuitlab relevance --prompt '<bos> The capital of France is' --target ' Paris' --wrong ' Madrid' \\
      --corrupt '<bos> The capital of Spain is' --baseline corrupt --out page.html
  circuitlab relevance --task ioi --n 4 --method ig --baseline corrupt --out runs/ioi-relevance.html
  circuitlab relevance --model smollm2-135m --prompt 'The capital of France is' --target ' Paris' --out page.html
The output is the logit of --target at the prompt's last token (default: the model's own top token), or
the logit difference --target minus --wrong; with --task, the task's metric. Several methods (comma-separated)
share one page, one row per method. The JSON (default: the page's name with .json) holds every token's score
and what the scores add up to (IG: output(input) - output(baseline); RelP: the output; ALTI: 1)."""

BASELINES = ("zero", "pad", "mean", "corrupt")
"""The IG baselines offered by name (``mean:SOURCE`` is accepted too)."""


def add_parser(sub, fmt) -> None:
    p = sub.add_parser("relevance", help="input-token relevance (ig, relp, alti) -> token heatmap page + JSON",
                       epilog=EXAMPLES, formatter_class=fmt)
    p.add_argument("--model", default=None, help="model name or path (default: the bundled GPT-2 zoo model)")
    p.add_argument("--prompt", action="append", default=None,
                   help="a prompt (repeatable: one row each); give it or --task")
    p.add_argument("--target", default=None, help="the token whose logit is explained (default: the top prediction)")
    p.add_argument("--wrong", default=None, help="explain logit(target) - logit(wrong) instead (needs --target)")
    p.add_argument("--corrupt", action="append", default=None,
                   help="a corrupted prompt per --prompt, same token count (the 'corrupt' baseline; needs --wrong)")
    p.add_argument("--task", default=None, help="a bundled task (ioi, capitals, ...) or JSONL of "
                   "{clean, corrupt, answer, wrong}, instead of --prompt")
    p.add_argument("--n", type=int, default=4, help="prompts drawn from --task (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="ig", help="ig, relp or alti; comma-separated for several on one page")
    p.add_argument("--baseline", default=None, help="IG baseline: zero (default), pad, mean, mean:SOURCE or corrupt")
    p.add_argument("--steps", type=int, default=None, help="IG steps (default 32)")
    p.add_argument("--attention", default=None, help="RelP attention rule: pattern (default) or attnlrp")
    p.add_argument("--out", required=True, help="the HTML page to write")
    p.add_argument("--json", default=None, help="the scores' JSON (default: --out with .json)")
    p.set_defaults(fn=run)


def _check(a) -> tuple[list[str], Path, Path]:
    """Every argument checked before the model loads: (methods, page path, JSON path)."""
    from circuitlab.cli.checks import check_task_arg, parse_names
    from circuitlab.methods.input_relevance import METHODS

    methods = parse_names("methods", a.method, METHODS)
    if (a.prompt is None) == (a.task is None):
        raise ValueError("give --prompt (one or more) or --task, not both and not neither")
    if a.prompt is not None and any(not p.strip() for p in a.prompt):
        raise ValueError("--prompt is blank; give some text")
    if a.task is not None:
        check_task_arg(a.task)
        extra = [f for f in ("target", "wrong", "corrupt") if getattr(a, f) is not None]
        if extra:
            raise ValueError(f"--{extra[0]} is for --prompt; a task's output is its metric (drop --{extra[0]})")
    if a.wrong is not None and a.target is None:
        raise ValueError("--wrong needs --target: the output is logit(target) - logit(wrong)")
    if a.corrupt is not None:
        if a.wrong is None:
            raise ValueError("--corrupt needs --target and --wrong (a clean/corrupt pair explains a logit difference)")
        if len(a.corrupt) != len(a.prompt):
            raise ValueError(f"{len(a.corrupt)} --corrupt for {len(a.prompt)} --prompt; give one per prompt")
    if a.baseline is not None:
        if "ig" not in methods:
            raise ValueError("--baseline is an IG option; add ig to --method or drop --baseline")
        if a.baseline not in BASELINES and not a.baseline.startswith("mean:"):
            from circuitlab.validate import suggest

            raise ValueError(f"--baseline {a.baseline!r} is not a baseline{suggest(a.baseline, BASELINES)}")
        if a.baseline == "corrupt" and a.task is None and a.corrupt is None:
            raise ValueError("--baseline corrupt needs corrupted prompts: give --corrupt (with --wrong) or --task")
    if a.steps is not None and "ig" not in methods:
        raise ValueError("--steps is an IG option; add ig to --method or drop --steps")
    if a.attention is not None and "relp" not in methods:
        raise ValueError("--attention is a RelP option; add relp to --method or drop --attention")
    page = Path(a.out)
    if page.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {a.out!r} should be an .html page (e.g. --out relevance.html)")
    if page.is_dir():
        raise ValueError(f"--out {a.out!r} is a folder; give a page name like {a.out.rstrip('/')}/relevance.html")
    js = Path(a.json) if a.json else page.with_suffix(".json")
    if js.is_dir():
        raise ValueError(f"--json {a.json!r} is a folder; give a file name")
    return methods, page, js


def inputs_for(model, a):
    """What to explain: a Task (``--task``, or ``--prompt`` with ``--wrong``) or plain prompts."""
    import circuitlab as cl
    from circuitlab.resolve import load_task

    if a.task is not None:
        return load_task(model, a.task, a.n, a.seed)
    if a.wrong is None:
        return a.prompt
    corrupt = a.corrupt or a.prompt  # without corrupted prompts the pair only defines the metric
    records = [{"clean": p, "corrupt": c, "answer": a.target, "wrong": a.wrong} for p, c in zip(a.prompt, corrupt)]
    return cl.tasks.from_pairs(model, records, name="prompt")


def options_for(method: str, a) -> dict:
    """The method's options given on the command line."""
    given = {"ig": {"baseline": a.baseline, "steps": a.steps}, "relp": {"attention": a.attention}}.get(method, {})
    return {k: v for k, v in given.items() if v is not None}


def to_json(result) -> dict:
    """One method's result as plain JSON: per prompt, tokens with scores, and the totals."""
    prompts = []
    for i in range(len(result.tokens)):
        prompts.append({"tokens": result.tokens[i], "scores": [float(s) for _, s in result.prompt(i)],
                        "read": int(result.read[i]), "sum": float(result.sums[i]),
                        "total": float(result.total[i]), "gap": float(result.gap[i])})
    return {"method": result.method, "label": result.label, "output": result.output,
            "meta": _plain(result.meta), "prompts": prompts}


def _plain(x):
    """Tensors and other values as JSON-ready numbers, lists and strings."""
    import torch

    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if torch.is_tensor(x):
        return x.detach().cpu().tolist()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def run(a) -> None:
    import circuitlab as cl
    from circuitlab.io import atomic_write
    from circuitlab.resolve import load_model
    from circuitlab.viz.tokens import write_token_page

    methods, page, js = _check(a)
    model = load_model(a.model)
    inputs = inputs_for(model, a)
    target = a.target if isinstance(inputs, list) else None
    results = [cl.input_relevance(model, inputs, m, target=target, **options_for(m, a)) for m in methods]
    page.parent.mkdir(parents=True, exist_ok=True)
    js.parent.mkdir(parents=True, exist_ok=True)
    title = f"Input relevance · {model.name} · {results[0].output}"
    write_token_page(results, page, title=title)
    doc = json.dumps({"model": model.name, "results": [to_json(r) for r in results]}, indent=1)
    atomic_write(js, lambda t: Path(t).write_text(doc))
    for r in results:
        for i in range(len(r.tokens)):
            top = sorted(r.prompt(i), key=lambda ts: -abs(ts[1]))[:3]
            shown = ", ".join(f"{t!r} {s:+.3g}" for t, s in top)
            print(f"{r.label} · prompt {i}: sum {float(r.sums[i]):.4g} of total {float(r.total[i]):.4g}; "
                  f"top tokens {shown}")
    print(f"wrote {page} and {js}")
