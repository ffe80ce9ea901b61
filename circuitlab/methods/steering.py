"""Steering vectors: a direction found from contrasting prompts, added to one site while the
model runs.

Two estimators, both a mean of activation differences at one site (a residual-stream or block
output vector) of one layer:

- difference of means: mean activation over prompt set A minus the mean over set B, each read
  at a chosen position (a Task's clean vs corrupt prompts, or two lists of prompts);
- contrastive activation addition (CAA, Rimsky et al. 2024): prompts that end in a
  behaviour-matching or a non-matching answer, read at the answer token; the mean over pairs of
  (matching - non-matching).

:func:`steer` turns a vector into engine interventions adding ``strength * vector``;
:func:`strength_sweep` scores a task and the perplexity of neutral text across strengths.
Activations are read with the engine's cache and edits made through engine interventions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.forward import final_logits, run_to_final
from circuitlab.engine.interventions import Intervention, intervene, score
from circuitlab.engine.sites import VECTOR_FAMILIES, Node, hook_name
from circuitlab.tasks.tokenize import resolve_positions, right_pad

NEUTRAL_TEXT: tuple[str, ...] = (
    "Mary went to the park . The park was quiet .",
    "In the morning , John bought a book and read it .",
    "The journey was long and it lasted many years .",
    "Anna and Peter were friends . At night , Peter walked home .",
)
"""Plain sentences whose perplexity shows whether steering breaks ordinary text (every word is
also in the zoo models' closed vocabulary)."""

Position = Union[int, str]
Pair = Union[tuple[str, str, str], dict]


@dataclass
class SteeringVector:
    """A direction for one site of one layer, with how it was made."""

    vector: torch.Tensor
    """[d_model] the direction (float32, on the model's device)."""
    site: str
    """The site family it belongs to: resid_pre, resid_mid, resid_post, attn_out or mlp_out."""
    layer: int
    """The block whose site it is read from and added to."""
    meta: dict = field(default_factory=dict)
    """How it was made: method, position, prompt counts, the model's name, the norms of the
    two means (so a strength can be compared with the activations' size)."""

    @property
    def hook(self) -> str:
        """The hook name the vector lives at (e.g. ``blocks.2.hook_resid_pre``)."""
        return hook_name(self.site, self.layer)

    @property
    def node(self) -> Node:
        return Node(self.layer, self.site)

    def norm(self) -> float:
        return float(self.vector.norm())


def steering_vector(model, a, b=None, *, layer: int, site: str = "resid_pre",
                    position: Position = -1, method: str = "mean_diff",
                    batch_size: int = 32) -> SteeringVector:
    """A steering vector at ``site`` of block ``layer``.

    ``method='mean_diff'``: ``a`` is a Task (A = its clean prompts, B = its corrupt prompts;
    ``b`` must be None) or a list of prompts with ``b`` a second list. ``position``: the token
    read in every prompt: an index (BOS is 0; negative counts back from each prompt's own last
    token, -1 = the last) or, for a Task, a role name ('S2', 'END', ...).

    ``method='caa'``: ``a`` is a list of pairs ``(prompt, matching, non_matching)`` (or dicts
    with those keys) and each completed prompt is read at its last token, the answer; end the
    answers at their letter ('(A' rather than '(A)'): under causal attention a later ')'
    cannot change the letter's activation. ``position`` and ``b`` are not used."""
    from circuitlab.api import exclusive

    _check_site(model, site, layer)
    if method == "mean_diff":
        if b is None:
            A, B, pos_a, pos_b, what = _from_task(model, a, position)
        else:
            A, pos_a = _prompts(model, a, position, "a")
            B, pos_b = _prompts(model, b, position, "b")
            what = "prompt lists"
    elif method == "caa":
        if b is not None:
            raise ValueError("method='caa' takes one list of (prompt, matching, non_matching) pairs; leave b out")
        A, B, pos_a, pos_b = _pairs(model, a)
        what = "caa pairs"
    else:
        raise ValueError(f"unknown method {method!r}; choose 'mean_diff' or 'caa'")
    with exclusive(model):
        mean_a = _mean_at(model, A, pos_a, hook_name(site, layer), batch_size)
        mean_b = _mean_at(model, B, pos_b, hook_name(site, layer), batch_size)
    meta = {"method": method, "source": what, "position": position if method == "mean_diff" else "answer",
            "n_a": len(A), "n_b": len(B), "model": getattr(model, "name", None),
            "norm_a": float(mean_a.norm()), "norm_b": float(mean_b.norm())}
    return SteeringVector(mean_a - mean_b, site, layer, meta)


def steer(vector: SteeringVector, strength: float = 1.0,
          positions: Optional[Sequence[int]] = None) -> list[Intervention]:
    """Interventions adding ``strength * vector`` at the vector's site (at ``positions``, absolute
    token indices, or everywhere), for ``intervene``, ``score`` or ``generate``. CAA adds at every
    position after the prompt: pass ``range(len(prompt), len(prompt) + new_tokens)``."""
    if not isinstance(vector, SteeringVector):
        raise TypeError(f"steer needs a SteeringVector (from steering_vector), not {type(vector).__name__}")
    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number, got {strength!r}")
    pos = tuple(int(p) for p in positions) if positions is not None else None
    return [Intervention(vector.node, "add", strength * vector.vector, pos)]


@dataclass
class SteeringSweep:
    """Task metric and neutral-text perplexity at each steering strength."""

    strengths: list[float]
    metric: list[float]
    """The task's reported metric (its ``reduce`` of per-prompt values) at each strength."""
    perplexity: list[float]
    """exp(mean next-token loss) on the neutral text at each strength."""
    metric_name: str
    vector: SteeringVector

    def figure(self):
        """Plotly figure: metric (left axis) and perplexity (right axis) against strength."""
        import plotly.graph_objects as go

        v = self.vector
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=self.strengths, y=self.metric, name=self.metric_name, mode="lines+markers"))
        fig.add_trace(go.Scatter(x=self.strengths, y=self.perplexity, name="perplexity (neutral text)",
                                 mode="lines+markers", yaxis="y2"))
        fig.update_layout(title=f"Steering at {v.hook} ({v.meta.get('method', '')}, |v| = {v.norm():.3g})",
                          xaxis_title="strength", yaxis_title=self.metric_name,
                          yaxis2=dict(title="perplexity", overlaying="y", side="right"),
                          legend=dict(orientation="h", y=-0.2))
        return fig


def strength_sweep(model, task, vector: SteeringVector, strengths: Sequence[float],
                   text: Union[str, Sequence[str], None] = None,
                   positions: Optional[Sequence[int]] = None) -> SteeringSweep:
    """Add ``strength * vector`` (at ``positions``, or everywhere) for each strength; record the
    task metric on its clean prompts and the perplexity of ``text`` (a string or a list;
    default :data:`NEUTRAL_TEXT`), which shows when steering starts to break ordinary text."""
    from circuitlab.api import exclusive

    strengths = [float(s) for s in strengths]
    if not strengths:
        raise ValueError("give at least one strength (0 is the unsteered model)")
    texts = [text] if isinstance(text, str) else list(text if text is not None else NEUTRAL_TEXT)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("text must be a non-empty string or a list of non-empty strings")
    toks, lengths = _pad(model, texts)
    if int(lengths.min()) < 2:
        raise ValueError("each neutral text needs at least one word after the BOS token to score")
    metric, ppl = [], []
    with exclusive(model):
        for s in strengths:
            ivs = steer(vector, s, positions)
            pp = score(model, task.clean_tokens, task.metric, ivs)
            metric.append(float(task.metric.reduce(pp[None])[0]))
            ppl.append(_perplexity(model, toks, lengths, ivs))
    return SteeringSweep(strengths, metric, ppl, task.metric.name, vector)


def _perplexity(model, toks: torch.Tensor, lengths: torch.Tensor, interventions) -> float:
    """exp of the mean next-token loss over the real tokens of right-padded ``toks``."""
    with intervene(model, interventions), torch.no_grad():
        logits = final_logits(model, run_to_final(model, toks)[:, :-1]).float()
    nll = -logits.log_softmax(-1).gather(-1, toks[:, 1:, None])[..., 0]
    real = torch.arange(1, toks.shape[1], device=toks.device)[None] < lengths.to(toks.device)[:, None]
    return float(torch.exp(nll[real].mean()))


def _check_site(model, site: str, layer: int) -> None:
    if site not in VECTOR_FAMILIES:
        raise ValueError(f"steering site {site!r} is not a vector site; choose one of {', '.join(VECTOR_FAMILIES)}")
    if not isinstance(layer, int) or not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer!r} is outside this model's blocks 0..{model.n_layers - 1}")


def _from_task(model, task, position: Position):
    if not hasattr(task, "clean_tokens"):
        raise TypeError("steering_vector(model, a, b): give a Task, or two lists of prompts as a and b")
    lengths = task.lengths.cpu()
    if isinstance(position, str):
        if position not in task.roles:
            raise ValueError(f"task {task.name!r} has no role {position!r}; roles: {', '.join(task.roles)} "
                             "(or give an integer position)")
        pos = task.roles[position].cpu()
    else:
        pos = resolve_positions(int(position), lengths)
    bad = ((pos < 0) | (pos >= lengths)).nonzero().flatten()
    if len(bad):
        raise ValueError(f"position {position!r} falls outside prompt {int(bad[0])} "
                         f"({int(lengths[bad[0]])} tokens); use an index inside every prompt or a role name")
    return task.clean_tokens, task.corrupt_tokens, pos, pos, f"task {task.name!r} clean - corrupt"


def _prompts(model, prompts, position: Position, which: str):
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts) or not len(prompts):
        raise ValueError(f"{which} must be a non-empty list of prompt strings")
    if isinstance(position, str):
        raise ValueError(f"role names such as {position!r} need a Task; give an integer position for prompt lists")
    toks, lengths = _pad(model, prompts)
    pos = resolve_positions(int(position), lengths)
    bad = ((pos < 0) | (pos >= lengths)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"position {position} is outside prompt {prompts[i]!r} of list {which} "
                         f"({int(lengths[i])} tokens with BOS); use an index inside every prompt")
    return toks, pos


def _pairs(model, pairs):
    if isinstance(pairs, (str, dict)) or not len(pairs):
        raise ValueError("method='caa' needs a non-empty list of (prompt, matching, non_matching) pairs")
    pos_text, neg_text = [], []
    for i, p in enumerate(pairs):
        if isinstance(p, dict):
            missing = [k for k in ("prompt", "matching", "non_matching") if k not in p]
            if missing:
                raise ValueError(f"pair {i} lacks {missing}; each pair needs prompt, matching, non_matching")
            p = (p["prompt"], p["matching"], p["non_matching"])
        if len(p) != 3 or not all(isinstance(x, str) for x in p):
            raise ValueError(f"pair {i} is not (prompt, matching, non_matching) strings: {p!r}")
        if p[1] == p[2]:
            raise ValueError(f"pair {i} has the same matching and non-matching answer {p[1]!r}")
        pos_text.append(p[0] + p[1])
        neg_text.append(p[0] + p[2])
    A, la = _pad(model, pos_text)
    B, lb = _pad(model, neg_text)
    return A, B, la - 1, lb - 1


def _pad(model, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids [n, max_len] on the model's device (BOS first) and real lengths [n]."""
    toks, lengths = right_pad(model.tokenizer, texts)
    return toks.to(model.device), lengths


def _mean_at(model, tokens: torch.Tensor, pos: torch.Tensor, hook: str, batch_size: int) -> torch.Tensor:
    """Mean over prompts of the activation at ``hook`` at each prompt's position ``pos``."""
    total = None
    for i in range(0, tokens.shape[0], batch_size):
        chunk = tokens[i:i + batch_size]
        width = int(pos[i:i + batch_size].max()) + 1  # later positions cannot change these
        act = capture(model, chunk[:, :width], [hook])[hook]
        rows = torch.arange(act.shape[0], device=act.device)
        picked = act[rows, pos[i:i + batch_size].to(act.device)].float().sum(0)
        total = picked if total is None else total + picked
    return total / tokens.shape[0]
