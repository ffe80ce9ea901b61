"""Factual recall against an in-context counterfactual: which heads promote which answer, and
what scaling their value vectors does to the answer the model gives.

After Yu, Merullo & Pavlick (2023), "Characterizing Mechanisms for Factual Recall in Language
Models": a prompt states a false fact and then asks for it ("The capital of France is Rome. The
capital of France is"). The model answers either the in-context object (Rome) or the memorised
one (Paris). Heads are ranked by direct logit attribution (DLA) to logit(in-context) -
logit(memorised) at the answer position; scaling the value vectors of the heads that promote the
in-context answer most moves the model between the two answers. The curve of answer rates
against the scale is the paper's main figure.

Scaling a head's value vectors by ``s`` multiplies its output ``z_h = sum_s A[h, s] v_s`` by ``s``
(the pattern does not read the values), so the scale is applied to ``z_h`` of the chosen query
heads: on grouped-query models that touches only the chosen head, not every head sharing its
key/value head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from circuitlab.engine.forward import final_logits, gather_positions, run_to_final
from circuitlab.engine.interventions import Intervention, intervene
from circuitlab.engine.sites import Node

PROMOTES = ("context", "memorised")
"""Which heads get scaled: those promoting the in-context answer most, or the memorised one."""


@dataclass
class ValueScalingConfig:
    """What the study scales and over which prompts."""

    relation: str = "capital"
    """Relation of the counterfactual-prefix prompts (``cl.tasks.counterfact``)."""
    n: int = 32
    """Prompts."""
    seed: int = 0
    """Which prompts are drawn."""
    top: int = 4
    """How many heads are scaled together."""
    scales: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
    """Value-vector scales; 1.0 is the unchanged model."""
    promotes: str = "context"
    """Scale the heads promoting the in-context answer most ('context') or the memorised one
    ('memorised')."""

    def __post_init__(self):
        from circuitlab.validate import check_choice, check_positive_int

        check_choice("promotes", self.promotes, PROMOTES)
        check_positive_int("n", self.n)
        check_positive_int("top", self.top)
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales:
            raise ValueError("give at least one scale, e.g. scales=(0, 1, 2, 4)")


@dataclass
class ScaleRow:
    """The model's answers with the chosen heads' value vectors scaled by ``scale``."""

    scale: float
    context_rate: float
    """Fraction of prompts whose top next token is the in-context answer."""
    memorised_rate: float
    """Fraction whose top next token is the memorised answer."""
    prefers_context: float
    """Fraction where logit(in-context) > logit(memorised)."""
    logit_diff: float
    """Mean logit(in-context) - logit(memorised)."""


@dataclass
class FactualRecallStudy:
    """Head rankings by DLA and the value-scaling curve."""

    model: str
    task: str
    n_prompts: int
    dla: torch.Tensor
    """[layer, head] mean DLA to logit(in-context) - logit(memorised)."""
    context_heads: list[tuple[int, int, float]]
    """(layer, head, DLA) of the heads promoting the in-context answer most, largest first."""
    memorised_heads: list[tuple[int, int, float]]
    """(layer, head, DLA) of the heads promoting the memorised answer most (most negative first)."""
    scaled: list[tuple[int, int]]
    """The heads whose value vectors were scaled."""
    rows: list[ScaleRow]
    config: ValueScalingConfig
    example: str = ""
    """The first prompt, as text."""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        c = self.config
        return {"model": self.model, "task": self.task, "n_prompts": self.n_prompts, "example": self.example,
                "config": {"relation": c.relation, "n": c.n, "seed": c.seed, "top": c.top,
                           "scales": list(c.scales), "promotes": c.promotes},
                "context_heads": [{"layer": l, "head": h, "dla": d} for l, h, d in self.context_heads],
                "memorised_heads": [{"layer": l, "head": h, "dla": d} for l, h, d in self.memorised_heads],
                "scaled": [{"layer": l, "head": h} for l, h in self.scaled],
                "dla": self.dla.tolist(),
                "rows": [vars(r) for r in self.rows], "meta": self.meta}

    def figure(self):
        """Answer rates against the value scale (plotly)."""
        import plotly.graph_objects as go

        x = [r.scale for r in self.rows]
        fig = go.Figure()
        for name, key in (("in-context answer (top-1)", "context_rate"), ("memorised answer (top-1)", "memorised_rate"),
                          ("logit(in-context) > logit(memorised)", "prefers_context")):
            fig.add_trace(go.Scatter(x=x, y=[getattr(r, key) for r in self.rows], mode="lines+markers", name=name))
        heads = ", ".join(f"L{l}.H{h}" for l, h in self.scaled)
        fig.update_layout(title=f"{self.model}: scaling the value vectors of {heads}",
                          xaxis_title="value scale (1 = unchanged)", yaxis_title="fraction of prompts",
                          yaxis_range=[-0.02, 1.02], plot_bgcolor="white")
        return fig

    def save(self, folder: str | Path, stem: str = "value_scaling") -> tuple[Path, Path]:
        """``folder/stem.json`` and an offline page ``folder/stem.html``."""
        import json

        from circuitlab.io import atomic_write
        from circuitlab.viz.report import Report

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        js, page = folder / f"{stem}.json", folder / f"{stem}.html"
        doc = json.dumps(self.to_dict(), indent=1)
        atomic_write(js, lambda t: Path(t).write_text(doc))
        report = Report(f"Factual recall vs in-context answer: {self.model}")
        report.add("Value scaling", f"{self.n_prompts} prompts of {self.task}, e.g. {self.example!r}. The value "
                   "vectors of the heads below are multiplied by each scale; the curve shows how often the model's top "
                   "next token is the in-context (counterfactual) answer and the memorised one.", self.figure(),
                   [["scale", "in-context top-1", "memorised top-1", "prefers in-context", "mean logit diff"]]
                   + [[r.scale, r.context_rate, r.memorised_rate, r.prefers_context, r.logit_diff] for r in self.rows])
        report.add("Heads by DLA", "Direct logit attribution to logit(in-context) - logit(memorised) at the answer "
                   "position, mean over prompts: positive heads promote the in-context answer, negative ones the "
                   "memorised answer.", [["promotes", "head", "DLA"]]
                   + [["in-context", f"L{l}.H{h}", d] for l, h, d in self.context_heads]
                   + [["memorised", f"L{l}.H{h}", d] for l, h, d in self.memorised_heads])
        report.save(page)
        return js, page


def rank_heads(dla: torch.Tensor, k: int) -> tuple[list[tuple[int, int, float]], list[tuple[int, int, float]]]:
    """The ``k`` heads with the largest DLA (in-context promoting) and the ``k`` with the most
    negative (memorised promoting), from a [layer, head] DLA table."""
    flat = dla.flatten()
    H = dla.shape[1]
    k = min(k, flat.numel())
    up = torch.topk(flat, k).indices.tolist()
    down = torch.topk(-flat, k).indices.tolist()
    return [(i // H, i % H, float(flat[i])) for i in up], [(i // H, i % H, float(flat[i])) for i in down]


def answer_logits(model, task, heads: Sequence[tuple[int, int]], scale: float) -> torch.Tensor:
    """[prompts, vocab] logits at each prompt's answer position with the value vectors of
    ``heads`` ((layer, head) pairs) scaled by ``scale``: one forward pass."""
    ivs = [Intervention(Node(l, "heads", head=h), "scale", float(scale)) for l, h in heads]
    tokens = task.clean_tokens
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    with intervene(model, ivs), torch.no_grad():
        resid = run_to_final(model, tokens)
        return final_logits(model, gather_positions(resid, task.answer_pos[:, None], rows))[:, 0]


def answer_rates(model, task, heads: Sequence[tuple[int, int]], scale: float) -> ScaleRow:
    """How often the top next token is the task's answer (in-context) or its wrong token
    (memorised) with ``heads``' value vectors scaled by ``scale``."""
    logits = answer_logits(model, task, heads, scale).float()
    rows = torch.arange(logits.shape[0], device=logits.device)
    top = logits.argmax(-1)
    ans, wrong = task.answer_ids.to(top.device), task.wrong_ids.to(top.device)
    diff = logits[rows, ans] - logits[rows, wrong]
    return ScaleRow(float(scale), float((top == ans).float().mean()), float((top == wrong).float().mean()),
                    float((diff > 0).float().mean()), float(diff.mean()))


def value_scaling_study(model, cfg: Optional[ValueScalingConfig] = None, task=None) -> FactualRecallStudy:
    """Rank heads by DLA on the counterfactual-prefix task (``target='context'``: answer = the
    in-context object, wrong = the memorised one) and scale the value vectors of the top heads.
    ``task``: a task built the same way (default ``cl.tasks.counterfact`` from ``cfg``)."""
    import circuitlab as cl

    cfg = cfg or ValueScalingConfig()
    if task is None:
        task = cl.tasks.counterfact(model, n=cfg.n, seed=cfg.seed, relation=cfg.relation, target="context")
    elif task.prompts and task.prompts[0].get("target", "context") != "context":
        raise ValueError("the study reads answer = in-context object; build the task with target='context'")
    d = cl.dla(model, task, by="head")
    table = d.values.detach().float().cpu()
    ctx, mem = rank_heads(table, cfg.top)
    chosen = [(l, h) for l, h, _ in (ctx if cfg.promotes == "context" else mem)]
    rows = [answer_rates(model, task, chosen, s) for s in cfg.scales]
    example = model.tokenizer.decode(task.clean_tokens[0, : int(task.lengths[0])].tolist())
    return FactualRecallStudy(model.name, task.name, int(task.clean_tokens.shape[0]), table, ctx, mem, chosen, rows,
                              cfg, example)
