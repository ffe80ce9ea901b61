"""Tasks: clean/corrupted prompt pairs with answers and a metric.

Prompts in one task may differ in length. They are right-padded: under causal attention a real
token never attends to a later pad, and its position id is unchanged, so right padding needs no
position-id correction (the bridge has had bugs deriving position ids under left padding). Each
prompt keeps its own answer position, and positions can be named by role (IOI's S1, IO, S2,
END) so results from different templates line up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from circuitlab.data import read_jsonl
from circuitlab.tasks import metrics as M
from circuitlab.tasks.tokenize import encode, pad_id, single_token

DIRECTIONS = ("denoising", "noising")
"""Denoising runs the corrupted prompts and takes values from the clean run; noising the reverse."""


@dataclass
class Task:
    """Clean and corrupted prompts (token ids, right-padded), answers and a metric."""

    clean_tokens: torch.Tensor
    """[prompts, pos] clean prompt ids, right-padded."""
    corrupt_tokens: torch.Tensor
    """[prompts, pos] corrupted prompt ids; each the same length as its clean prompt."""
    lengths: torch.Tensor
    """[prompts] real (unpadded) lengths."""
    answer_ids: torch.Tensor
    """[prompts] the correct next token."""
    wrong_ids: torch.Tensor
    """[prompts] the competing token (e.g. the subject name in IOI)."""
    metric: M.Metric
    """What patching and attribution measure."""
    roles: dict[str, torch.Tensor] = field(default_factory=dict)
    """Named positions, {role: [prompts]}; END is always the answer position."""
    prompts: list[dict] = field(default_factory=list)
    """The source records (clean/corrupt text, answers, extras)."""
    name: str = "task"

    def __len__(self) -> int:
        return self.clean_tokens.shape[0]

    @property
    def answer_pos(self) -> torch.Tensor:
        return self.lengths - 1

    def base_and_source(self, direction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens the patched run starts from, tokens the patched-in values come from).

        Why a method: every patching method, edge method and coder attribution picks its two
        runs by ``direction``; one place keeps the convention (and its error) the same."""
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; use 'denoising' (clean into corrupted) or 'noising'")
        if direction == "denoising":
            return self.corrupt_tokens, self.clean_tokens
        return self.clean_tokens, self.corrupt_tokens

    def to(self, device) -> "Task":
        for k in ("clean_tokens", "corrupt_tokens", "lengths", "answer_ids", "wrong_ids"):
            setattr(self, k, getattr(self, k).to(device))
        self.roles = {k: v.to(device) for k, v in self.roles.items()}
        self.metric.to(device)
        return self

    def subset(self, idx) -> "Task":
        """A task of the prompts ``idx`` (a slice or index list); the metric follows."""
        idx = torch.arange(len(self))[idx] if isinstance(idx, slice) else torch.as_tensor(idx)
        m = self.metric
        sub_metric = M.Metric(m.name, m.positions[idx.to(m.positions.device)],
                              _reindex(m.per_prompt, idx), m.finish, m.higher_is_better)
        # keep the full width so results over different subsets share one position grid
        return Task(self.clean_tokens[idx], self.corrupt_tokens[idx], self.lengths[idx],
                    self.answer_ids[idx], self.wrong_ids[idx], sub_metric,
                    {k: v[idx] for k, v in self.roles.items()},
                    [self.prompts[i] for i in idx.tolist()] if self.prompts else [], self.name)

    def check_positions(self, positions) -> None:
        """Every named or absolute position in ``positions`` must fall on a real token of every
        prompt: a pad or an index past the prompt would give a silent zero or a deep IndexError."""
        import numbers

        if positions is None:
            return
        if isinstance(positions, (str, int)):
            raise ValueError(f"positions must be a list (e.g. [{positions!r}]), not {positions!r}")
        lengths = self.lengths.cpu()
        for p in positions:
            if isinstance(p, str):
                if p not in self.roles:
                    raise ValueError(f"task {self.name!r} has no role {p!r}; roles: {', '.join(self.roles)} "
                                     "(or give integer positions)")
                where = self.roles[p].cpu()
            elif isinstance(p, numbers.Integral) and not isinstance(p, bool):
                where = torch.full_like(lengths, int(p))
            else:
                raise ValueError(f"position {p!r} is neither a token index nor a role name ({', '.join(self.roles)})")
            self._check_inside(where, lengths, f"position {p!r}")

    def check_roles(self) -> None:
        """Every role's position must fall on a real token of its prompt."""
        lengths = self.lengths.cpu()
        for role, where in self.roles.items():
            self._check_inside(where.cpu(), lengths, f"role {role!r}")

    def _check_inside(self, where: torch.Tensor, lengths: torch.Tensor, what: str) -> None:
        bad = ((where < 0) | (where >= lengths)).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            text = self.prompts[i].get("clean") if i < len(self.prompts) and isinstance(self.prompts[i], dict) else None
            shown = f" {text!r}" if text is not None else ""
            raise ValueError(f"{what} is token {int(where[i])} in prompt {i}{shown} of task {self.name!r}, "
                             f"which has {int(lengths[i])} tokens (0..{int(lengths[i]) - 1}); "
                             f"{len(bad)} prompt(s) affected; use a position inside every prompt or a role name")

    def role_positions(self, role: str) -> torch.Tensor:
        if role not in self.roles:
            raise KeyError(f"task {self.name!r} has no role {role!r}; roles: {list(self.roles)}")
        return self.roles[role]


def _reindex(fn: Callable, idx: torch.Tensor) -> Callable:
    def g(logits, rows):
        return fn(logits, idx.to(rows.device)[rows])

    return g


def from_pairs(
    model,
    pairs: list[dict] | str | Path,
    metric: str | Callable = "logit_diff",
    name: str = "pairs",
) -> Task:
    """Build a task from records {"clean", "corrupt", "answer", "wrong"} (a list or a JSONL
    path). Optional per-record "roles": {name: token position, BOS at 0}.

    ``metric``: "logit_diff", "normalized_logit_diff", or a function
    (task) -> :class:`~circuitlab.tasks.metrics.Metric`.
    """
    records = _read_records(pairs)
    if not records:
        raise ValueError("empty task: give at least one {clean, corrupt, answer, wrong} record")
    from circuitlab.validate import model_context

    tok = model.tokenizer
    n_ctx = model_context(model)
    clean, corrupt, ans, wrong = [], [], [], []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"record {i} is a {type(r).__name__}, not an object; each record needs "
                             "clean, corrupt, answer, wrong")
        missing = [k for k in ("clean", "corrupt", "answer", "wrong") if k not in r]
        if missing:
            raise ValueError(f"record {i} lacks {missing}; each record needs clean, corrupt, answer, wrong")
        wrong_type = [k for k in ("clean", "corrupt", "answer", "wrong") if not isinstance(r[k], str)]
        if wrong_type:
            raise ValueError(f"record {i}: {wrong_type} must be strings")
        c, k = encode(tok, r["clean"]), encode(tok, r["corrupt"])
        if len(c) != len(k):
            raise ValueError(
                f"record {i}: clean prompt is {len(c)} tokens but corrupt is {len(k)}; "
                "position-wise patching needs equal lengths (choose corruptions that keep "
                f"the token count): {r['clean']!r} vs {r['corrupt']!r}"
            )
        clean.append(c), corrupt.append(k)
        if n_ctx is not None and len(c) > n_ctx:
            raise ValueError(f"record {i} is {len(c)} tokens but the model takes at most {n_ctx}; "
                             f"shorten it: {r['clean'][:80]!r}...")
        ans.append(single_token(tok, r["answer"]))
        wrong.append(single_token(tok, r["wrong"]))
    same = [i for i, (a, w) in enumerate(zip(ans, wrong)) if a == w]
    if same:
        import warnings

        warnings.warn(f"records {same[:10]} have answer == wrong (the same token), so their logit "
                      "difference is always 0; give a competing wrong answer", stacklevel=2)
    lengths = torch.tensor([len(c) for c in clean])
    T, pid = int(lengths.max()), pad_id(tok)
    ct = torch.full((len(records), T), pid, dtype=torch.long)
    kt = ct.clone()
    for i, (c, k) in enumerate(zip(clean, corrupt)):
        ct[i, : len(c)] = torch.tensor(c)
        kt[i, : len(k)] = torch.tensor(k)
    roles: dict[str, torch.Tensor] = {}
    role_names = set().union(*(r.get("roles", {}).keys() for r in records))
    for role in sorted(role_names):
        if not all(role in r.get("roles", {}) for r in records):
            raise ValueError(f"role {role!r} is given for some records but not all")
        try:
            roles[role] = torch.tensor([int(r["roles"][role]) for r in records])
        except (TypeError, ValueError) as e:
            raise ValueError(f"role {role!r} must be a token position (an integer) in every record: {e}") from e
    roles["END"] = lengths - 1
    ans_t, wrong_t = torch.tensor(ans), torch.tensor(wrong)
    base = M.logit_diff(lengths - 1, ans_t, wrong_t)
    task = Task(ct, kt, lengths, ans_t, wrong_t, base, roles, records, name)
    task.check_roles()
    task.to(model.device)
    if callable(metric):
        task.metric = metric(task)
    elif metric == "normalized_logit_diff":
        task.metric = normalize(model, task)
    elif metric != "logit_diff":
        raise ValueError(f"unknown metric {metric!r}; use 'logit_diff', 'normalized_logit_diff' or a function")
    return task


def normalize(model, task: Task) -> M.Metric:
    """The task's metric normalised to 1 on clean and 0 on corrupted prompts."""
    from circuitlab.engine.forward import metric_per_prompt

    m = task.metric
    clean = float(m.finish(metric_per_prompt(model, task.clean_tokens, m).mean()))
    corrupt = float(m.finish(metric_per_prompt(model, task.corrupt_tokens, m).mean()))
    return M.normalized(m, clean, corrupt)


def _read_records(pairs) -> list[dict]:
    if isinstance(pairs, (str, Path)):
        if Path(pairs).expanduser().is_dir():
            raise ValueError(f"{pairs} is a folder; give a JSONL file of {{clean, corrupt, answer, wrong}} records")
        return read_jsonl(pairs)
    return list(pairs)
