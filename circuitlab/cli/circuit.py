"""``circuitlab circuit``: edge scores, a selected circuit, its faithfulness curve and diagram."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = """examples:
  circuitlab circuit --task ioi --method eap --out runs/ioi_eap
  circuitlab circuit --model gpt2-zoo --task ioi --method eap-ig --steps 16 --n 32 --out runs/ioi_eapig
  circuitlab circuit --task capitals --method path --select greedy --ablation mean --out runs/cap
  circuitlab circuit --model planted:induction --task planted --method eap --out runs/planted
  circuitlab circuit --model ./my_hf_folder --task pairs.jsonl --method eap --top 50 --out runs/x

Writes DIR/edges.{safetensors,json} (all edge scores), DIR/edges.csv, DIR/circuit.json (the
selected circuit), DIR/faithfulness.json + faithfulness.html (F vs size with bootstrap CIs),
DIR/circuit.html (circuit diagram) and DIR/report.html."""


def add_parser(subparsers, formatter_class) -> None:
    p = subparsers.add_parser("circuit", help="edge attribution + circuit selection + faithfulness -> DIR",
                              epilog=EXAMPLES, formatter_class=formatter_class)
    p.add_argument("--model", default=None, help="zoo name, HF folder, hub id, or planted:induction / planted:copy")
    p.add_argument("--task", required=True, help="bundled task (ioi, capitals, greater_than, induction), a JSONL "
                   "of {clean, corrupt, answer, wrong}, or 'planted' with a planted model")
    from circuitlab.methods.registry import EDGE_METHODS

    p.add_argument("--method", default="eap", choices=list(EDGE_METHODS),
                   help="; ".join(f"{m.name}: {m.summary}" for m in EDGE_METHODS.values()))
    p.add_argument("--direction", default="denoising", choices=["denoising", "noising"])
    p.add_argument("--steps", type=int, default=8, help="EAP-IG interpolation steps")
    p.add_argument("--select", default="smallest", choices=["top", "greedy", "smallest"],
                   help="top: --top n edges; greedy: connected growth from the logits; smallest: the smallest "
                        "top-n circuit with F >= --threshold (default)")
    p.add_argument("--top", type=int, default=None,
                   help="circuit size for --select top/greedy (default 20 when no circuit reaches the threshold)")
    p.add_argument("--threshold", type=float, default=0.8, help="faithfulness target")
    p.add_argument("--ablation", default="resample", choices=["resample", "mean"])
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for confidence intervals")
    p.add_argument("--n", type=int, default=16, help="prompts (bundled tasks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(fn=run)


def _model_and_task(a):

    if a.model and a.model.startswith("planted:"):
        from circuitlab.circuits.planted import build

        planted = build(a.model.split(":", 1)[1])
        model = planted.load()
        return model, planted.task(model, a.n, a.seed)
    if a.task == "planted":
        raise ValueError("--task planted needs --model planted:induction or planted:copy")
    from circuitlab.resolve import load_model, load_task

    model = load_model(a.model)
    return model, load_task(model, a.task, a.n, a.seed)


def run(a) -> None:
    from circuitlab import circuits as cc
    from circuitlab.circuits.evaluate import Evaluator
    from circuitlab.circuits.viz import circuit_figure, write_figure
    from circuitlab.viz.report import Report

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model, task = _model_and_task(a)
    kwargs = {"steps": a.steps} if "steps" in cc.METHODS[a.method].option_names else {}
    scores = cc.edges(model, task, a.method, a.direction, **kwargs)
    scores.save(out / "edges")
    from circuitlab.io import atomic_write

    atomic_write(out / "edges.csv", lambda p: scores.to_frame().to_csv(p, index=False))
    ev = Evaluator(model, task, a.ablation)
    curve = cc.faithfulness_curve(model, task, scores, ablation=a.ablation, threshold=a.threshold,
                                  bootstrap=a.bootstrap, seed=a.seed, evaluator=ev)
    curve.save(out / "faithfulness")
    if a.select == "top" and a.top is not None:
        circuit = cc.top_n(scores, a.top)
    elif a.select == "greedy":
        circuit = cc.greedy(scores, a.top or (curve.smallest or 20))
    else:
        circuit = curve.smallest_circuit or cc.top_n(scores, a.top or 20)
    F = float(ev.faithfulness([circuit])[0])
    circuit.save(out / "circuit")
    fig_curve = curve.plot()
    fig_circuit = circuit_figure(circuit, model.n_layers, model.n_heads, scores,
                                 title=f"{a.method} circuit: {len(circuit)} edges, F = {F:.3f}")
    write_figure(fig_curve, out / "faithfulness.html")
    write_figure(fig_circuit, out / "circuit.html")
    rep = Report(f"circuitlab circuit: {model.name} · {task.name} · {a.method}")
    rep.add("Top edges", f"{scores.metric} change per edge ({a.direction}).",
            [["edge", "score"]] + [[l, v] for l, v in scores.top(20)])
    rep.add("Faithfulness", f"Top-n circuits, {a.ablation} ablation; smallest with F >= {a.threshold}: "
            f"{curve.smallest}.", fig_curve)
    rep.add("Circuit", f"{len(circuit)} edges, faithfulness {F:.3f}.", fig_circuit)
    rep.save(out / "report.html")
    summary = {"model": model.name, "task": task.name, "method": a.method, "direction": a.direction,
               "edges": int(scores.mask.sum()), "seconds": scores.cost.seconds, "circuit_size": len(circuit),
               "circuit_faithfulness": F, "smallest_faithful": curve.smallest, "threshold": a.threshold}
    atomic_write(out / "summary.json", lambda p: Path(p).write_text(json.dumps(summary, indent=1)))
    for l, v in scores.top(10):
        print(f"  {l:30s} {v:+.4g}")
    print(f"circuit: {len(circuit)} edges, F = {F:.3f}; smallest with F >= {a.threshold}: {curve.smallest}")
    print(f"wrote {out}/")
