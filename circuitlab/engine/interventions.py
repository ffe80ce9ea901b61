"""Interventions: set, scale or add to any node while scoring or generating.

An :class:`Intervention` is a *target* (where), an *op* ('set' | 'scale' | 'add'), a value and
optional positions. Targets turn an edit function into hooks; the engine attaches them for one
``with intervene(...)`` block (or one ``generate``/``score`` call) and always removes them, also
when the block raises. Built-in targets: any engine :class:`Node` (a head's output ``L3.H5``, its
value vectors ``L3.H5.v``, a neuron ``L2.N17``, an MLP or residual vector), a direction in any
hook, and two plug-in shapes for packages built elsewhere: :class:`CoderTarget` (an SAE-style
encoder/decoder at one hook; the reconstruction error is kept so only the edited latents move)
and :class:`TranscoderTarget` (reads one hook, writes another). A :class:`Supernode` applies one
edit to several targets (probe-prompting supernodes). Anything with a
``hooks(model, edit, positions)`` method is a target.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union

import torch

from circuitlab.engine.forward import final_logits, gather_positions, run_to_final
from circuitlab.engine.hooks import HookFn, scoped_hooks
from circuitlab.engine.sites import HEAD_FAMILIES, UNIT_FAMILIES, Node

Edit = Callable[[torch.Tensor], torch.Tensor]
OPS = ("set", "scale", "add")


class Target(Protocol):
    """Where an intervention acts: returns (hook name, fn) pairs applying ``edit`` there."""

    def hooks(self, model, edit: Edit, positions: Optional[Sequence[int]]) -> list[tuple[str, HookFn]]: ...


def _at_positions(x: torch.Tensor, positions, fn: Edit) -> torch.Tensor:
    """Apply ``fn`` to x[:, positions] (all positions if None); positions past the end are skipped."""
    if positions is None:
        return fn(x)
    pos = [p for p in positions if -x.shape[1] <= p < x.shape[1]]
    if not pos:
        return x
    out = x.clone()
    idx = torch.tensor(pos, device=x.device)
    out[:, idx] = fn(x[:, idx])
    return out


@dataclass(frozen=True)
class NodeTarget:
    """An engine node: ``Node.parse('L3.H5')`` (head output, via hook_z), ``'L3.H5.v'`` (its value
    vectors; a key/value head under GQA), ``'L2.N17'`` (a neuron), ``'L1.mlp_out'``, ... A node's own
    position (``@4``) is used when the intervention gives none."""

    node: Node

    def hooks(self, model, edit: Edit, positions):
        n = self.node
        pos = positions if positions is not None else ([n.pos] if isinstance(n.pos, int) else None)
        if isinstance(n.pos, str):
            raise ValueError(f"intervention on {n}: give integer positions (roles are per prompt)")

        def fn(x):
            def inner(y):
                if n.family in HEAD_FAMILIES:
                    y = y.clone()
                    y[:, :, n.head] = edit(y[:, :, n.head])
                    return y
                if n.family in UNIT_FAMILIES:
                    y = y.clone()
                    y[..., n.unit] = edit(y[..., n.unit])
                    return y
                return edit(y)

            return _at_positions(x, pos, inner)

        return [(n.hook, fn)]


@dataclass(frozen=True)
class DirectionTarget:
    """The component of a hook's vectors along ``direction`` (coefficient c = x.u / |u|^2): the op
    acts on c, the orthogonal part is kept."""

    hook: str
    direction: torch.Tensor

    def hooks(self, model, edit: Edit, positions):
        def fn(x):
            def inner(y):
                u = self.direction.to(y.device, y.dtype)
                c = (y @ u) / (u @ u)
                return y + (edit(c) - c)[..., None] * u

            return _at_positions(x, positions, inner)

        return [(self.hook, fn)]


@dataclass(frozen=True)
class CoderTarget:
    """Latents of a sparse coder reading and writing the same hook (an SAE): x -> z = encode(x);
    edit z[..., latents]; write decode(z') + (x - decode(z)), so the error term is kept and an
    identity edit changes nothing."""

    hook: str
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    latents: tuple[int, ...]

    def hooks(self, model, edit: Edit, positions):
        idx = list(self.latents)

        def fn(x):
            def inner(y):
                z = self.encode(y)
                z2 = z.clone()
                z2[..., idx] = edit(z[..., idx])
                return y + self.decode(z2) - self.decode(z)

            return _at_positions(x, positions, inner)

        return [(self.hook, fn)]


@dataclass(frozen=True)
class TranscoderTarget:
    """Features of a transcoder reading ``in_hook`` (e.g. ``blocks.3.mlp.hook_in``) and writing
    ``out_hook`` (e.g. ``blocks.3.hook_mlp_out``): the output gets decode(z') - decode(z)."""

    in_hook: str
    out_hook: str
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    latents: tuple[int, ...]

    def hooks(self, model, edit: Edit, positions):
        idx = list(self.latents)
        seen: dict[str, torch.Tensor] = {}

        def read(x):
            seen["x"] = x
            return None

        def write(y):
            z = self.encode(seen.pop("x"))
            z2 = z.clone()
            z2[..., idx] = edit(z[..., idx])
            change = self.decode(z2) - self.decode(z)
            return y + change * _mask(change, positions)

        return [(self.in_hook, read), (self.out_hook, write)]


def _mask(x: torch.Tensor, positions) -> torch.Tensor:
    if positions is None:
        return torch.ones((), dtype=x.dtype, device=x.device)
    m = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    m[[p for p in positions if -x.shape[1] <= p < x.shape[1]]] = 1
    return m.view(1, -1, *([1] * (x.dim() - 2)))


@dataclass(frozen=True)
class Supernode:
    """Several targets edited together (e.g. the features of a probe-prompting supernode)."""

    members: tuple
    name: str = "supernode"

    def hooks(self, model, edit: Edit, positions):
        return [h for m in self.members for h in as_target(m).hooks(model, edit, positions)]


TargetLike = Union[Target, Node, str]


def as_target(t: TargetLike):
    """A Target from a Target, a Node or a node label ('L3.H5.v', 'L2.N17@4')."""
    if isinstance(t, str):
        return NodeTarget(Node.parse(t))
    if isinstance(t, Node):
        return NodeTarget(t)
    if not hasattr(t, "hooks"):
        raise TypeError(f"{t!r} is not an intervention target (needs a hooks(model, edit, positions) method)")
    return t


@dataclass(frozen=True)
class Intervention:
    """Set, scale or add ``value`` at ``target`` (at ``positions``, or everywhere)."""

    target: TargetLike
    """A Target, an engine Node, or a node label such as 'L3.H5.v'."""
    op: str = "scale"
    """'set' (replace by value), 'scale' (multiply) or 'add'."""
    value: Union[float, torch.Tensor] = 0.0
    """A number or a tensor broadcastable to the edited slice."""
    positions: Optional[tuple[int, ...]] = None
    """Absolute positions (negative counts from the end); None: every position."""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown intervention op {self.op!r}; choose from {OPS}")

    def edit(self, x: torch.Tensor) -> torch.Tensor:
        v = self.value.to(x.device, x.dtype) if torch.is_tensor(self.value) else self.value
        if self.op == "set":
            return torch.zeros_like(x) + v
        if self.op == "scale":
            return x * v
        return x + v

    def hooks(self, model) -> list[tuple[str, HookFn]]:
        pos = list(self.positions) if self.positions is not None else None
        return as_target(self.target).hooks(model, self.edit, pos)


def intervention_hooks(model, interventions: Sequence[Intervention]) -> list[tuple[str, HookFn]]:
    return [h for iv in interventions for h in iv.hooks(model)]


@contextlib.contextmanager
def intervene(model, interventions: Sequence[Intervention]) -> Iterator[None]:
    """Every forward pass inside the block runs with the interventions; hooks removed on exit."""
    with scoped_hooks(model.bridge, intervention_hooks(model, interventions)):
        yield


def generate(model, tokens: torch.Tensor, max_new_tokens: int = 8,
             interventions: Sequence[Intervention] = (), stop_token: Optional[int] = None) -> torch.Tensor:
    """Greedy token-by-token generation through the engine with ``interventions`` active.

    ``tokens``: [pos] or [batch, pos] (equal-length prompts). Each step reruns the whole sequence
    (no key/value cache), so position-based interventions see stable positions. Returns the
    prompts with the new tokens appended."""
    seq = tokens[None] if tokens.dim() == 1 else tokens
    seq = seq.to(model.device)
    with intervene(model, interventions), torch.no_grad():
        for _ in range(max_new_tokens):
            resid = run_to_final(model, seq)
            nxt = final_logits(model, resid[:, -1:]).argmax(-1)
            seq = torch.cat([seq, nxt], 1)
            if stop_token is not None and bool((nxt == stop_token).all()):
                break
    return seq[0] if tokens.dim() == 1 else seq


def score(model, tokens: torch.Tensor, metric, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """Per-prompt metric values [prompts] with ``interventions`` active."""
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    with intervene(model, interventions), torch.no_grad():
        resid = run_to_final(model, tokens)
        return metric.per_prompt(final_logits(model, gather_positions(resid, metric.positions, rows)), rows)
