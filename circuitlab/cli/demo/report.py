"""The demo report: the analysis a researcher would run first, as one HTML report.

IOI and capitals on a real pretrained model (SmolLM2-135M once `circuitlab models fetch
smollm2-135m` has run; the bundled GPT-2 otherwise): head detectors, direct logit attribution by
layer and head, the logit lens, exact patching of the residual stream and of every head, and the
fast estimators (AtP*, RelP) beside exact patching with their agreement. Sections for
sparse-coder latents and attribution graphs follow (each says how to get coders when none ship
for the model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from circuitlab.cli.demo import graphs, sparse
from circuitlab.methods.input_relevance.demo import demo_section as input_relevance_section
from circuitlab.viz.attention import attention_figure

SECTIONS = (sparse.demo_section, graphs.demo_section, input_relevance_section)
"""Extra per-task sections: ``section(model, task, report, out, label, summary)``."""


def _agreement_rows(results: dict, exact) -> list:
    import circuitlab as cl

    rows = [["method", "pearson", "spearman (>1% nodes)", "recall@5", "forward", "backward", "seconds"]]
    rows.append(["exact", 1.0, 1.0, 1.0, exact.cost.forward_passes, exact.cost.backward_passes,
                 round(exact.cost.seconds, 3)])
    for name, r in results.items():
        c = cl.compare(r, exact, k=5)
        rows.append([name, c["pearson"], c["spearman_1pct"], c["recall@5"], r.cost.forward_passes,
                     r.cost.backward_passes, round(r.cost.seconds, 3)])
    return rows


def analyse(model, task, report, out: Path, label: str, steps) -> dict:
    import plotly.graph_objects as go

    import circuitlab as cl

    summary: dict = {}
    report.add(f"{label}: model and task", f"{model!r}. Task {task.name}: {len(task)} prompt pairs (held-out "
               f"phrasings), metric {task.metric.name}. First records:",
               [["#", "clean", "corrupt", "answer", "wrong"]] +
               [[i, r["clean"], r["corrupt"], r["answer"], r["wrong"]] for i, r in enumerate(task.prompts[:4])])
    layer = cl.dla(model, task, by="layer")
    head = cl.dla(model, task, by="head")
    lens = cl.logit_lens(model, task)
    fig = go.Figure(go.Scatter(x=lens.labels, y=lens.values.tolist(), mode="lines+markers"))
    fig.update_layout(title="Logit lens: answer - wrong logit after each block", yaxis_title="logit difference")
    report.add(f"{label}: direct logit attribution and logit lens",
               "How much each layer and head writes the answer-minus-wrong direction into the final residual "
               f"stream (mean logit difference {layer.baseline:.3f}; the components sum to it exactly), and where "
               "along the depth the answer becomes readable.", layer.plot("DLA by layer (attention, MLP)"),
               head.plot("DLA by head"), fig)
    steps.update(1)
    resid = cl.patch(model, task, "resid_pre", method="exact", progress=False)
    heads = cl.patch(model, task, "heads_all", method="exact", progress=False)
    for r, stem in ((resid, "resid_pre"), (heads, "heads_all")):
        r.save(out / f"{label}_exact_{stem}")
    report.add(f"{label}: exact activation patching",
               "Denoising: run the corrupted prompts and restore one node's clean value. The residual stream "
               "shows where the deciding information sits at each layer; the head sweep shows which heads carry it.",
               resid.plot("Exact patching: resid_pre [layer, position]"),
               heads.plot("Exact patching: heads [layer, head]"),
               [["head", "effect"]] + [[l, v] for l, v in heads.top(6)])
    top = [_layer_head(lbl) for lbl, _ in heads.top(3)]
    report.add(f"{label}: attention of the top heads",
               "Attention patterns of the three heads with the largest exact patching effect on the first clean "
               "prompt (query rows, key columns): where each head reads from at the answer position.",
               attention_figure(model, task.clean_tokens[:1, : int(task.metric.positions[0].max()) + 1], top,
                                "Attention of the top heads by exact patching"))
    steps.update(1)
    fast = {"atp*": cl.patch(model, task, "heads_all", method="atp*"),
            "relp": cl.patch(model, task, "heads_all", method="relp"),
            "atp": cl.patch(model, task, "heads_all", method="atp")}
    rows = _agreement_rows(fast, heads)
    report.add(f"{label}: fast estimators against exact patching",
               "The same head sweep estimated from gradients: AtP (two forward passes, one backward), AtP* (QK fix, "
               "GradDrop ranking) and RelP (LRP rules). Agreement with exact patching over all heads.",
               fast["atp*"].plot("AtP* estimate: heads [layer, head]"), rows)
    steps.update(1)
    summary.update({"dla_total": layer.meta["total"], "logit_diff": layer.baseline, "top_heads_exact": heads.top(5),
                    "agreement": rows[1:], "resid_exact_seconds": resid.cost.seconds})
    for extra in SECTIONS:
        extra(model, task, report, out, label, summary)
    return summary


def _layer_head(label: str) -> tuple[int, int]:
    """'L3.H1' (a head label) -> (3, 1)."""
    from circuitlab.engine.sites import Node

    node = Node.parse(label)
    return node.layer, node.head


def head_kinds_section(model, report) -> dict:
    """Head-detector scores of every head, with the strongest head of each kind."""
    from circuitlab.methods.head_detectors import head_scores
    from circuitlab.viz.attention import head_scores_figure

    scores = head_scores(model)
    kinds = scores.meta["kinds"]
    best = []
    for i, kind in enumerate(kinds):
        flat = int(scores.values[i].flatten().argmax())
        layer, head = divmod(flat, model.n_heads)
        best.append([kind, f"L{layer}.H{head}", round(float(scores.values[i, layer, head]), 3)])
    report.add("Head detectors",
               "Every head scored as previous-token, duplicate-token and induction head (mean attention to the "
               "expected key on repeated random token sequences) and as a copying head (eigenvalue score of its "
               "OV circuit through the unembedding; 1 means it copies what it attends to).",
               head_scores_figure(scores), [["kind", "strongest head", "score"]] + best)
    return {row[0]: row[1:] for row in best}


def default_model() -> Optional[str]:
    """The real SmolLM2-135M when it has been fetched, else None (the bundled GPT-2)."""
    from circuitlab.models.fetch import is_fetched

    return "smollm2-135m" if is_fetched("smollm2-135m") else None


def run_demo(model: Optional[str] = None, task: Optional[str] = None, out: str | Path = "circuitlab_demo",
             n: int = 32) -> Path:
    """Write ``out/report.html`` and ``out/summary.json`` for ``model`` on ``task`` (default: IOI
    and capitals); returns the report's path."""
    from circuitlab.resolve import load_model, load_task
    from circuitlab.viz.report import Report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tasks = [task] if task else ["ioi", "capitals"]
    steps = tqdm(total=1 + 3 * len(tasks), desc="demo")
    m = load_model(model if model is not None else default_model())
    steps.update(1)
    report = Report(f"circuitlab demo: {m.name}")
    head_kinds = head_kinds_section(m, report)
    summary = {}
    for tname in tasks:
        t = load_task(m, tname, n, 0)
        summary[t.name] = analyse(m, t, report, out, t.name, steps)
    path = report.save(out / "report.html")
    from circuitlab.io import atomic_write

    text = json.dumps({"model": m.name, "seconds": time.perf_counter() - t0, "head_kinds": head_kinds,
                       "tasks": summary}, indent=1, default=str)
    atomic_write(out / "summary.json", lambda p: Path(p).write_text(text))
    steps.close()
    return path
