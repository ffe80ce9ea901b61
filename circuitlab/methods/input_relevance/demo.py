"""The demo report's input-relevance section: token heatmaps of a task's first prompts."""

from __future__ import annotations

N_PROMPTS = 4
"""Prompts shown (the heatmap has one row per prompt and method)."""


def demo_section(model, task, report, out, label: str, summary: dict) -> None:
    """Add IG (corrupted-prompt and zero baselines), RelP and ALTI token maps of the task's first
    prompts to ``report``, with the completeness table; record the largest gaps in ``summary``."""
    from circuitlab.methods.input_relevance import input_relevance
    from circuitlab.viz.tokens import completeness_rows, token_figure

    sub = task.subset(slice(0, min(N_PROMPTS, len(task))))
    runs = [input_relevance(model, sub, "ig", baseline="corrupt"),
            input_relevance(model, sub, "ig", baseline="zero", steps=64),
            input_relevance(model, sub, "relp"),
            input_relevance(model, sub, "alti")]
    report.add(f"{label}: input-token relevance",
               f"Which prompt tokens the {task.metric.name} rests on, by four methods: integrated gradients on the "
               "token embeddings from the corrupted prompt and from zero embeddings (scores add up to the change "
               "in the metric, up to the quadrature error), RelP's LRP rules read at the embeddings (scores add "
               "up to the metric where the model has no biases), and ALTI's rollout of attention contributions "
               "(each row a distribution over the input tokens). Rows are scaled to their largest score.",
               token_figure(runs, f"Input relevance: {task.name}"), completeness_rows(runs))
    summary["input_relevance_max_gap"] = {r.label: float(r.gap.abs().max()) for r in runs}
