"""Source sets: which activations start out relevant, and the taps that put them there.

Why labels: sources are named in the vocabulary every other circuitlab result uses, node labels
(``L1.H3``, ``L1.H3@4``, ``L2.mlp_out@S2``, ``L0.N17@3``, ``L1.H0.v``, ``L0.resid_pre@5``) and the
edge graph's sender labels (``embed``, ``embed@3``, ``L1.mlp``), so a node or sender found by
another method can be decomposed by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from circuitlab.engine.patching import node_positions
from circuitlab.engine.sites import HEAD_FAMILIES, UNIT_FAMILIES, Node, hook_name
from circuitlab.methods.cdt.rules import Pair
from circuitlab.methods.cdt.walk import Taps

SOURCE_FAMILIES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads", "v", "neurons")
"""Node families a source can be (queries, keys and patterns only shape attention patterns,
which CD-T takes from the full forward pass, so they carry no relevance)."""

_SENDER = re.compile(r"(?:(?P<embed>embed)|L(?P<layer>\d+)\.mlp)(?:@(?P<pos>\w+))?")


def parse_source(label: str | Node) -> Node:
    """A source node from a node label or a sender label (``embed`` is block 0's ``resid_pre``,
    ``L1.mlp`` is ``L1.mlp_out``)."""
    if isinstance(label, Node):
        node = label
    elif isinstance(label, str):
        m = _SENDER.fullmatch(label.strip())
        if m:
            pos = m["pos"]
            pos = int(pos) if pos is not None and pos.isdigit() else pos
            node = Node(0, "resid_pre", pos=pos) if m["embed"] else Node(int(m["layer"]), "mlp_out", pos=pos)
        else:
            node = Node.parse(label)
    else:
        raise ValueError(f"a source is a label such as 'L1.H3@4', 'L2.mlp', 'embed@3' (or a Node), not {label!r}")
    check_source_family(node.family)
    return node


def check_source_family(family: str) -> None:
    if family in ("q", "k", "pattern"):
        raise ValueError(f"CD-T takes attention patterns from the full forward pass, so {family!r} nodes carry no "
                         "relevance; use 'heads' or 'v' nodes here, or score queries and keys with exact "
                         "patching or AtP")
    if family not in SOURCE_FAMILIES:
        raise ValueError(f"CD-T cannot start from {family!r} nodes; source families are {', '.join(SOURCE_FAMILIES)}")


def source_sets(sources) -> list[list[Node]]:
    """One label (or Node), a list of them (one set) or a list of lists (several sets)."""
    if isinstance(sources, (str, Node)):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise ValueError("sources is empty; name at least one source, e.g. ['L1.H3'] or [['L1.H3'], ['L2.mlp']]")
    if all(isinstance(s, (str, Node)) for s in sources):
        sources = [sources]
    out = []
    for s in sources:
        if isinstance(s, (str, Node)):
            s = [s]
        s = list(s)
        if not s:
            raise ValueError("a source set is empty; each set needs at least one source label")
        out.append([parse_source(x) for x in s])
    return out


def check_in_model(model, node: Node, n_pos: int, roles: Optional[dict] = None) -> None:
    """``node`` exists in ``model`` on prompts of ``n_pos`` positions (role names in ``roles``)."""
    if isinstance(node.pos, str) and roles is not None and node.pos not in roles:
        known = f"roles: {', '.join(roles)}" if roles else "pass roles= (e.g. task.roles) to name positions"
        raise ValueError(f"source {node}: unknown role {node.pos!r}; {known}")
    if not 0 <= node.layer < model.n_layers:
        raise ValueError(f"source {node}: layer {node.layer} out of range (the model has {model.n_layers} layers)")
    if node.family in HEAD_FAMILIES and not 0 <= node.head < model.heads_in(node.family):
        raise ValueError(f"source {node}: head {node.head} out of range (0..{model.heads_in(node.family) - 1})")
    if node.family == "neurons" and not 0 <= node.unit < model.d_mlp:
        raise ValueError(f"source {node}: neuron {node.unit} out of range (0..{model.d_mlp - 1})")
    if isinstance(node.pos, int) and not 0 <= node.pos < n_pos:
        raise ValueError(f"source {node}: position {node.pos} out of range (prompts have {n_pos} positions)")
    if node.family == "resid_mid" and model.parallel_attn_mlp:
        raise ValueError(f"source {node}: parallel attention/MLP blocks have no resid_mid")


def _select(node: Node) -> Optional[int]:
    if node.family in HEAD_FAMILIES:
        return node.head
    if node.family in UNIT_FAMILIES:
        return node.unit
    return None


@dataclass
class Inject(Taps):
    """Taps that make source sets relevant and keep records.

    At a source element the pair becomes (activation - reference, the rest of the pair's sum):
    the whole sum where the reference is 0 (``references`` has no entry for the hook), else the
    run's captured activation (``actual``) minus the reference (another run's activation or a
    mean), so that a source equal to its reference is exactly irrelevant."""

    masks: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    """(site, layer) -> bool mask [S, B, T, X or 1, (1)] broadcastable to the pair there."""
    references: dict[str, torch.Tensor] = field(default_factory=dict)
    actual: dict[str, torch.Tensor] = field(default_factory=dict)
    """Hook name -> the run's own activation [B, T, ...] (needed where there is a reference)."""
    record: tuple[str, ...] = ()
    """Sites whose pairs are kept (by hook name) in ``kept``."""
    kept: dict[str, Pair] = field(default_factory=dict)
    first: int = 0
    """First position walked (see :class:`Taps`)."""

    @staticmethod
    def of(model, sets: Sequence[Sequence[Node]], B: int, T: int, roles: dict, device,
           references: Optional[dict[str, torch.Tensor]] = None, record: Sequence[str] = (),
           window: bool = False, actual: Optional[dict[str, torch.Tensor]] = None) -> "Inject":
        """Taps for ``sets`` on a batch of B prompts of T positions; ``window``: walk only from
        the first source position on (records then cover those positions only)."""
        masks: dict[tuple[str, int], torch.Tensor] = {}
        S = len(sets)
        for s, nodes in enumerate(sets):
            for node in nodes:
                check_in_model(model, node, T, roles)
                key = (node.family, node.layer)
                if key not in masks:
                    widths = {"heads": model.n_heads, "v": model.heads_in("v"), "neurons": model.d_mlp}
                    width = widths.get(node.family, 1)
                    masks[key] = torch.zeros(S, B, T, width, dtype=torch.bool, device=device)
                m = masks[key]
                x = _select(node)
                xs = slice(None) if x is None else x
                pos = node_positions(node, roles, B, device)
                if pos is None:
                    m[s, :, :, xs] = True
                else:
                    m[s, torch.arange(B, device=device), pos, xs] = True
        first = min(int(m.any(-1).any(0).any(0).nonzero()[0]) for m in masks.values()) if window else 0
        masks = {k: (m[..., None] if k[0] in ("heads", "v") else m)[:, :, first:] for k, m in masks.items()}
        refs = {h: r[:, first:] for h, r in (references or {}).items()}
        acts = {h: (actual or {})[h][:, first:] for h in refs}
        return Inject(masks, refs, acts, tuple(record), first=first)

    @property
    def start(self) -> int:
        """The first block with a source (the walk can begin there)."""
        return min((l for _, l in self.masks), default=0)

    def point(self, site: str, layer: int, pair: Pair) -> Pair:
        mask = self.masks.get((site, layer))
        name = hook_name(site, layer)
        if mask is not None:
            full = pair[0] + pair[1]
            ref = self.references.get(name)
            if ref is None:
                pair = (torch.where(mask, full, pair[0]), torch.where(mask, torch.zeros_like(full), pair[1]))
            else:
                rel = (self.actual[name] - ref).to(full.dtype).expand_as(full)
                pair = (torch.where(mask, rel, pair[0]), torch.where(mask, full - rel, pair[1]))
        if site in self.record:
            self.kept[name] = pair
        return pair
