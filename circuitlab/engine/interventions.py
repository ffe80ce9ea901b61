"""Interventions: set, scale or add to any node while scoring or generating.

An :class:`Intervention` is a *target* (where), an *op* ('set' | 'scale' | 'add'), a value and
optional positions. Targets turn an edit function into hooks; the engine attaches them for one
``with intervene(...)`` block (or one ``generate``/``score`` call) and always removes them, also
when the block raises. Built-in targets: any engine :class:`Node` (a head's output ``L3.H5``, its
value vectors ``L3.H5.v``, a neuron ``L2.N17``, an MLP or residual vector), a direction in any
hook, and two plug-in shapes for packages built elsewhere: :class:`CoderTarget` (an SAE-style
encoder/decoder at one hook; the reconstruction error is kept so only the edited latents move)
and :class:`TranscoderTarget` (reads one hook, writes another). Anything with a
``hooks(model, edit, positions)`` method is a target; a target that also has a ``members`` tuple
is a group (``circuitlab.graphs.targets.Supernode``): each member gets the edit.

``generate`` decodes greedily or by sampling, with the Hugging Face model's key/value cache:
the engine's hooks sit on that model's modules, so they fire on the cached path too, and
intervention positions are mapped onto the tokens each step runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol, Sequence, Union

import torch

from circuitlab.engine.forward import final_logits, gather_positions, new_kv_cache, run_to_final
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
    vectors; a key/value head under GQA), ``'L3.H5.pattern'`` (its attention weights; positions
    are query positions), ``'L2.N17'`` (a neuron), ``'L1.mlp_out'``, ... A node's own position
    (``@4``) is used when the intervention gives none."""

    node: Node

    def hooks(self, model, edit: Edit, positions):
        n = self.node
        pos = positions if positions is not None else ([n.pos] if isinstance(n.pos, int) else None)
        if isinstance(n.pos, str):
            raise ValueError(f"intervention on {n}: give integer positions (roles are per prompt)")

        if n.family == "pattern":  # [batch, head, query, key]: positions are query positions
            def pattern_fn(x):
                y = x.clone()
                y[:, n.head] = _at_positions(x[:, n.head], pos, edit)
                return y

            return [(n.hook, pattern_fn)]

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
             interventions: Sequence[Intervention] = (), stop_token: Optional[int] = None, *,
             temperature: float = 0.0, top_p: float = 1.0,
             seed: Union[int, torch.Generator, None] = None,
             cache: Optional[bool] = None) -> torch.Tensor:
    """Token-by-token generation through the engine with ``interventions`` active at every step.

    ``tokens``: [pos] or [batch, pos] (equal-length prompts). Returns the prompts with the new
    tokens appended; stops early once every row has produced ``stop_token``.

    ``temperature`` 0 picks the most likely token (greedy); above 0 samples from
    softmax(logits / temperature), restricted to the smallest set of tokens whose probability
    reaches ``top_p`` (nucleus sampling). ``seed``: an int or a ``torch.Generator`` to make
    samples reproducible (None: torch's global generator).

    ``cache``: keep the keys/values of earlier positions (the Hugging Face model's own
    ``past_key_values``), so each step runs only the new token; False reruns the whole
    sequence at every step; None (default) uses the cache where the load-time check found that
    cached positions reproduce a full pass (``model.fast_positions``). Both give the same
    result: intervention positions are absolute (negative ones count back from the end of the
    prompt), so an edit at a prompt position acts during the first pass and stays in the cached
    keys/values, and an edit at a later position acts when that token is generated. Custom
    targets must take their positions from the ``positions`` argument of ``hooks``."""
    if tokens.dim() not in (1, 2) or tokens.shape[-1] == 0:
        raise ValueError(f"tokens must be a non-empty [pos] or [batch, pos] tensor, got shape {tuple(tokens.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {top_p!r}")
    gen = torch.Generator().manual_seed(seed) if isinstance(seed, int) else seed
    if gen is not None and not isinstance(gen, torch.Generator):
        raise TypeError(f"seed must be an int, a torch.Generator or None, not {type(seed).__name__}")
    use_cache = bool(getattr(model, "fast_positions", False)) if cache is None else bool(cache)
    seq = (tokens[None] if tokens.dim() == 1 else tokens).to(model.device)
    ivs = _absolute(interventions, seq.shape[1])
    with torch.no_grad():
        if use_cache:
            seq = _generate_cached(model, seq, max_new_tokens, ivs, stop_token, temperature, top_p, gen)
        else:
            with intervene(model, ivs):
                for _ in range(max_new_tokens):
                    nxt = _pick(final_logits(model, run_to_final(model, seq)[:, -1]), temperature, top_p, gen)
                    seq = torch.cat([seq, nxt], 1)
                    if stop_token is not None and bool((nxt == stop_token).all()):
                        break
    return seq[0] if tokens.dim() == 1 else seq


def _generate_cached(model, seq, max_new_tokens, ivs, stop_token, temperature, top_p, gen) -> torch.Tensor:
    """Prefill the prompt once, then run one new token per step against the key/value cache;
    each pass gets the interventions whose positions fall in its window."""
    kv = new_kv_cache(model)
    done = 0  # positions already in the cache
    for _ in range(max_new_tokens):
        new = seq[:, done:]
        hooks = intervention_hooks(model, _window(ivs, done, new.shape[1]))
        resid = run_to_final(model, new, hooks, kv_cache=kv)
        done = seq.shape[1]
        nxt = _pick(final_logits(model, resid[:, -1]), temperature, top_p, gen)
        seq = torch.cat([seq, nxt], 1)
        if stop_token is not None and bool((nxt == stop_token).all()):
            break
    return seq


def _pick(logits: torch.Tensor, temperature: float, top_p: float, gen: Optional[torch.Generator]) -> torch.Tensor:
    """Next token [batch, 1] from last-position logits [batch, vocab]: argmax at temperature 0,
    else a nucleus sample (drawn on the generator's device, so a CPU seed repeats anywhere)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1:
        p, idx = probs.sort(-1, descending=True)
        keep = (p.cumsum(-1) - p) < top_p  # tokens before this one hold less than top_p
        probs = torch.zeros_like(probs).scatter(-1, idx, p * keep)
    dev = gen.device if gen is not None else probs.device
    return torch.multinomial(probs.to(dev), 1, generator=gen).to(logits.device)


def _flat(iv: Intervention) -> list[Intervention]:
    """Groups (targets with ``members``) split into one intervention per member, and a node's own
    position (``@4``) made explicit, so positions can be shifted without looking inside targets."""
    t = as_target(iv.target)
    members = getattr(t, "members", None)
    if members is not None:
        return [x for m in members for x in _flat(dataclasses.replace(iv, target=m))]
    if iv.positions is None and isinstance(t, NodeTarget) and isinstance(t.node.pos, int):
        return [dataclasses.replace(iv, target=t, positions=(t.node.pos,))]
    return [dataclasses.replace(iv, target=t)]


def _absolute(interventions: Sequence[Intervention], prompt_len: int) -> list[Intervention]:
    """Interventions with non-negative positions (negative ones count back from the prompt's end)."""
    out = []
    for iv in (x for group in interventions for x in _flat(group)):
        if iv.positions is not None:
            pos = tuple(int(p) + prompt_len if p < 0 else int(p) for p in iv.positions)
            bad = [p for p, q in zip(iv.positions, pos) if q < 0]
            if bad:
                raise ValueError(f"intervention positions {bad} lie before the start of the {prompt_len}-token "
                                 f"prompt; negative positions count back from its end (-1 .. -{prompt_len})")
            iv = dataclasses.replace(iv, positions=pos)
        out.append(iv)
    return out


def _window(ivs: Sequence[Intervention], start: int, length: int) -> list[Intervention]:
    """The interventions acting on absolute positions start..start+length-1, with positions
    made relative to that window; those with no position there are left out."""
    out = []
    for iv in ivs:
        if iv.positions is None:
            out.append(iv)
            continue
        local = tuple(p - start for p in iv.positions if start <= p < start + length)
        if local:
            out.append(dataclasses.replace(iv, positions=local))
    return out


def score(model, tokens: torch.Tensor, metric, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """Per-prompt metric values [prompts] with ``interventions`` active."""
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    with intervene(model, interventions), torch.no_grad():
        resid = run_to_final(model, tokens)
        return metric.per_prompt(final_logits(model, gather_positions(resid, metric.positions, rows)), rows)

