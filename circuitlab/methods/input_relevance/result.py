"""The result of an input-relevance method: one score per prompt and token."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch


@dataclass
class InputRelevance:
    """Per-prompt, per-token relevance for one output, with what the scores should add up to."""

    method: str
    """'ig', 'relp' or 'alti'."""
    label: str
    """The method with its main option, as rows of a figure are named (``ig (zero)``)."""
    scores: torch.Tensor
    """[prompts, pos] relevance of each input token (0 on padding)."""
    tokens: list[list[str]]
    """Each prompt's tokens as text (real tokens only)."""
    lengths: torch.Tensor
    """[prompts] real lengths."""
    read: torch.Tensor
    """[prompts] position the explained output is read at."""
    output: str
    """What is explained (``logit_diff``, ``logit of ' Paris'``, or for ALTI the residual stream)."""
    total: torch.Tensor
    """[prompts] what the method says the scores add up to: IG: output(input) - output(baseline);
    RelP: output(input); ALTI: 1 (a distribution over the input tokens)."""
    meta: dict = field(default_factory=dict)
    """Method details (baseline, steps, rule, attention rule, output values, ...)."""

    @property
    def sums(self) -> torch.Tensor:
        """[prompts] the scores summed over each prompt's tokens."""
        return self.scores.sum(-1)

    @property
    def gap(self) -> torch.Tensor:
        """[prompts] ``total - sums``: IG's quadrature error, RelP's relevance absorbed by biases,
        position embeddings and non-conservative rules; zero for ALTI."""
        return self.total - self.sums

    def prompt(self, i: int) -> list[tuple[str, float]]:
        """Prompt ``i``'s (token, score) pairs."""
        n = int(self.lengths[i])
        return list(zip(self.tokens[i], self.scores[i, :n].tolist()))

    def figure(self, title: Optional[str] = None, normalize: str = "row"):
        """Tokens coloured by relevance, one row per prompt (see circuitlab.viz.tokens)."""
        from circuitlab.viz.tokens import token_figure

        return token_figure([self], title=title, normalize=normalize)

    def save_html(self, path: str | Path, title: Optional[str] = None) -> Path:
        """An offline page with the figure and a table of each prompt's completeness."""
        from circuitlab.viz.tokens import write_token_page

        return write_token_page([self], path, title=title)
