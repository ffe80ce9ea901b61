"""Metrics: functions of the logits at a few positions, one value per prompt.

The engine computes logits only at ``positions`` ([prompts, k]); ``per_prompt`` receives them
as [rows, k, vocab] together with which prompt each row belongs to (patched copies of a batch
share prompts), and the sweep averages over prompts. ``finish`` maps that mean to the reported
value (the identity, or a normalisation against clean and corrupt baselines).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class Metric:
    """A metric over logits at chosen positions; see the module docstring."""

    name: str
    """Short name recorded on results ('logit_diff', 'prob_diff', 'loss', ...)."""
    positions: torch.Tensor
    """[prompts, k] positions whose logits the metric reads."""
    per_prompt: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """(logits [rows, k, vocab], prompt index [rows]) -> [rows]."""
    finish: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda x: x)
    """Applied to the mean over prompts (e.g. normalisation)."""
    higher_is_better: bool = True

    def to(self, device) -> "Metric":
        self.positions = self.positions.to(device)
        return self

    def from_logits(self, logits: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reported value from full logits [prompts, pos, vocab] (what TransformerLens passes)."""
        n = logits.shape[0]
        rows = torch.arange(n, device=logits.device) if rows is None else rows
        pos = self.positions.to(logits.device)[rows]
        picked = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))
        return self.finish(self.per_prompt(picked, rows).mean())

    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        """[patches, prompts] per-prompt values -> [patches] reported values."""
        return self.finish(values.mean(-1))


def logit_diff(answer_pos, answer_ids, wrong_ids) -> Metric:
    """logit(answer) - logit(wrong) at each prompt's answer position."""
    a, w = answer_ids, wrong_ids

    def f(logits, rows):
        lg = logits[:, 0]
        idx = torch.arange(lg.shape[0], device=lg.device)
        return lg[idx, a.to(lg.device)[rows]] - lg[idx, w.to(lg.device)[rows]]

    return Metric("logit_diff", answer_pos[:, None], f)


def normalized(metric: Metric, clean_value: float, corrupt_value: float) -> Metric:
    """(m - m_corrupt) / (m_clean - m_corrupt): 1 on the clean run, 0 on the corrupted run."""
    denom = clean_value - corrupt_value
    if abs(denom) < 1e-8:
        raise ValueError(
            "cannot normalise: the metric is the same on clean and corrupted prompts "
            f"({clean_value:.4g}); the corruption does not change the behaviour"
        )
    return Metric(
        "normalized_" + metric.name, metric.positions, metric.per_prompt,
        finish=lambda x: (metric.finish(x) - corrupt_value) / denom,
        higher_is_better=metric.higher_is_better,
    )


def prob_diff(answer_pos, weights: torch.Tensor, name: str = "prob_diff") -> Metric:
    """sum_v softmax(logits)_v * weights[prompt, v]: e.g. +1 on years above the start year and
    -1 below it (greater-than). ``weights`` is [prompts, vocab]."""

    def f(logits, rows):
        p = logits[:, 0].float().softmax(-1)
        return (p * weights.to(p.device)[rows]).sum(-1)

    return Metric(name, answer_pos[:, None], f)


def mean_loss(positions: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> Metric:
    """Mean next-token cross-entropy of ``targets`` at ``positions`` (masked by ``valid``), e.g.
    the second repeat of an induction sequence. Lower is better."""

    def f(logits, rows):
        lp = logits.float().log_softmax(-1)
        t = targets.to(lp.device)[rows]
        v = valid.to(lp.device)[rows].float()
        nll = -lp.gather(-1, t[..., None])[..., 0]
        return (nll * v).sum(-1) / v.sum(-1).clamp(min=1)

    return Metric("loss", positions, f, higher_is_better=False)
