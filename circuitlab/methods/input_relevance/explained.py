"""What an input-relevance map explains: prompts, the output read from them, and a baseline prompt.

Why one type: integrated gradients, LRP and ALTI all take either a Task (its clean prompts, its
metric, its corrupted prompts as a possible baseline) or plain prompts (then the output is the
logit of a target token at each prompt's last position); this turns both into the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from circuitlab.tasks.metrics import Metric

Prompts = Union[str, Sequence[str], torch.Tensor]


@dataclass
class Explained:
    """Prompts and the per-prompt output whose input relevance is computed."""

    tokens: torch.Tensor
    """[prompts, pos] token ids, right-padded."""
    lengths: torch.Tensor
    """[prompts] real lengths."""
    metric: Metric
    """Reads the output; ``per_prompt`` gives one value per prompt (``finish`` is not used)."""
    read: torch.Tensor
    """[prompts] the position whose residual stream the output is read from (ALTI's row)."""
    output: str
    """What the output is, in words (``'logit_diff'``, ``"logit of ' Paris'"``)."""
    corrupt: Optional[torch.Tensor] = None
    """[prompts, pos] a task's corrupted prompts (the 'corrupt' baseline), else None."""
    targets: Optional[list[str]] = None
    """The target token of each prompt, for plain prompts."""

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def summed(self, idx: torch.Tensor) -> Metric:
        """The metric over prompts ``idx`` (a chunk, numbered 0.. inside it) whose reported
        value is the *sum* of the per-prompt values: its gradient with respect to one prompt's
        inputs is that prompt's own gradient (prompts do not interact)."""
        m, n = self.metric, len(idx)

        def per_prompt(logits, rows):
            return m.per_prompt(logits, idx.to(rows.device)[rows])

        return Metric(m.name, m.positions[idx.to(m.positions.device)], per_prompt, finish=lambda x: x * n)


def explained(model, inputs, target=None) -> Explained:
    """``inputs``: a Task, one prompt (text or 1-D token ids), a list of prompts, or a [prompts,
    pos] tensor of right-padded ids. ``target`` (plain prompts only): the token whose logit is
    explained at each prompt's last position: None (the model's own top prediction), one string
    for every prompt, or one per prompt."""
    from circuitlab.tasks.task import Task

    if isinstance(inputs, Task):
        if target is not None:
            raise ValueError("target is for plain prompts; a Task's output is its metric "
                             f"({inputs.metric.name}); drop target=")
        t = inputs
        return Explained(t.clean_tokens, t.lengths, t.metric, t.answer_pos, t.metric.name, t.corrupt_tokens)
    tokens, lengths = _tokens(model, inputs)
    read = lengths - 1
    ids = _targets(model, tokens, read, target)
    text = [model.tokenizer.decode([int(i)]) for i in ids]

    def per_prompt(logits, rows):
        lg = logits[:, 0]
        return lg[torch.arange(lg.shape[0], device=lg.device), ids.to(lg.device)[rows]]

    metric = Metric("target_logit", read[:, None].to(model.device), per_prompt)
    shown = repr(text[0]) if len(set(text)) == 1 else "each prompt's target"
    return Explained(tokens, lengths, metric, read, f"logit of {shown}", targets=text)


def _tokens(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    from circuitlab.tasks.tokenize import right_pad

    if isinstance(inputs, str):
        inputs = [inputs]
    if torch.is_tensor(inputs):
        t = inputs[None] if inputs.dim() == 1 else inputs
        if t.dim() != 2 or t.numel() == 0 or t.is_floating_point():
            raise ValueError(f"token ids must be a non-empty [pos] or [prompts, pos] integer tensor, got shape "
                             f"{tuple(inputs.shape)} {inputs.dtype}")
        t = t.to(model.device)
        return t, torch.full((t.shape[0],), t.shape[1], device=model.device)
    if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(p, str) for p in inputs):
        raise ValueError(f"inputs must be a Task, a prompt, a non-empty list of prompts or token ids, not "
                         f"{type(inputs).__name__}; e.g. input_relevance(model, ['The capital of France is'])")
    tokens, lengths = right_pad(model.tokenizer, list(inputs))
    return tokens.to(model.device), lengths.to(model.device)


def _targets(model, tokens, read, target) -> torch.Tensor:
    n = tokens.shape[0]
    if target is None:
        from circuitlab.engine.forward import final_logits, gather_positions, run_to_final

        rows = torch.arange(n, device=tokens.device)
        with torch.no_grad():
            resid = run_to_final(model, tokens)
            return final_logits(model, gather_positions(resid, read[:, None], rows))[:, 0].argmax(-1)
    targets = [target] * n if isinstance(target, (str, int)) else list(target)
    if len(targets) != n:
        raise ValueError(f"target has {len(targets)} entries for {n} prompts; give one per prompt or one for all")
    ids = [model.token_id(t) if isinstance(t, str) else int(t) for t in targets]
    bad = [i for i in ids if not 0 <= i < model.d_vocab]
    if bad:
        raise ValueError(f"target token id {bad[0]} is outside the vocabulary (0..{model.d_vocab - 1})")
    return torch.tensor(ids, device=tokens.device)
